"""Field learning: every bin learns its site.

The pipeline hands each verdict and event to `FieldLearning`; it keeps doubtful items (and a sample of
accepted ones) in a bounded capture store for people to label on the Review page, over HTTP, MQTT or
the CLI; fits a site adaptation on the labelled items' embeddings; and watches for drift. The
classifier knows nothing of it.
"""

from recyclex_edge.fieldlearning.adaptation import Adaptation, FitResult
from recyclex_edge.fieldlearning.drift import DriftState
from recyclex_edge.fieldlearning.site import FieldLearning, Judgement, LabelledItem
from recyclex_edge.fieldlearning.store import NOT_WASTE, CapturedItem, CaptureError, CaptureStore

__all__ = [
    "NOT_WASTE",
    "Adaptation",
    "CaptureError",
    "CaptureStore",
    "CapturedItem",
    "DriftState",
    "FieldLearning",
    "FitResult",
    "Judgement",
    "LabelledItem",
]
