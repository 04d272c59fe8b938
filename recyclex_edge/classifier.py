"""The waste classifier: a pool of TFLite interpreters behind one thread-safe `classify()`.

Interpreters are created once at start-up (never per frame) and lent out through a bounded queue, so
`pool_size` classifications run at once and any more wait their turn instead of piling up.
"""

from __future__ import annotations

import hashlib
import queue
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recyclex_edge.errors import ModelError
from recyclex_edge.interpreter import interpreter_class, interpreter_error, runtime_chatter_filtered
from recyclex_edge.model_card import SHIPPED_MODEL, ModelCard, load_card
from recyclex_edge.preprocess import Preprocessor


@dataclass(frozen=True)
class Classification:
    """What the model said about one frame."""

    label: str
    confidence: float
    probabilities: dict[str, float]
    model_name: str
    model_version: str
    preprocess_ms: float
    inference_ms: float
    # The pooled embedding (float32, dequantised) when the card declares one; site adaptation uses it.
    embedding: np.ndarray | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "class": self.label,
            "confidence": self.confidence,
            "probabilities": self.probabilities,
            "model": {"name": self.model_name, "version": self.model_version},
            "timing": {"preprocess_ms": self.preprocess_ms, "inference_ms": self.inference_ms},
        }


@dataclass(frozen=True)
class _Output:
    """One output tensor and how to turn its integers back into real values."""

    index: int
    scale: float
    zero_point: int

    @classmethod
    def of(cls, detail: dict[str, Any]) -> _Output:
        scale, zero_point = detail["quantization"]
        return cls(int(detail["index"]), float(scale), int(zero_point))

    def read(self, interpreter: Any) -> np.ndarray:
        raw: np.ndarray = interpreter.get_tensor(self.index)[0]
        if self.scale:
            return (raw.astype(np.float32) - self.zero_point) * self.scale
        return raw.astype(np.float32)


@dataclass
class _Runner:
    """One interpreter with its tensor indices and output dequantisation resolved once."""

    interpreter: Any
    input_index: int
    scores: _Output
    embedding: _Output | None

    def run(self, tensor: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input_index, tensor)
        self.interpreter.invoke()
        return self.scores.read(self.interpreter)

    def last_embedding(self) -> np.ndarray | None:
        return self.embedding.read(self.interpreter) if self.embedding is not None else None


def _load_runner(
    interpreter_type: type[Any], model_path: Path, num_threads: int, card: ModelCard, content: bytes
) -> _Runner:
    try:
        with runtime_chatter_filtered():
            interpreter = interpreter_type(model_content=content, num_threads=num_threads)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError, SystemError) as exc:  # SystemError: tflite-runtime under numpy 2
        raise interpreter_error(interpreter_type, exc) or ModelError(
            f"model file {model_path} cannot be loaded by the TFLite runtime: {exc}"
        ) from None
    (input_detail,) = interpreter.get_input_details()
    # Outputs are told apart by size (the card forbids an embedding as long as the label list), not by
    # order or name, which converters do not keep stable.
    by_size = {int(np.prod(d["shape"])): d for d in interpreter.get_output_details()}
    sizes = sorted(by_size)
    expected = sorted([len(card.labels)] + ([card.embedding.size] if card.embedding else []))
    if sizes != expected or len(by_size) != len(interpreter.get_output_details()):
        raise ModelError(
            f"model outputs have sizes {sizes} but its card expects {expected} "
            f"({len(card.labels)} labels"
            + (f", an embedding of {card.embedding.size}" if card.embedding else "")
            + "); the card belongs to another model"
        )
    embedding = _Output.of(by_size[card.embedding.size]) if card.embedding else None
    return _Runner(interpreter, input_detail["index"], _Output.of(by_size[len(card.labels)]), embedding)


class Classifier:
    """Classifies BGR frames with the model its card describes.

    >>> classifier = Classifier(num_threads=1, pool_size=2)
    >>> result = classifier.classify(cv2.imread("bottle.jpg"))
    >>> result.label, result.confidence
    ('plastic', 0.97)
    """

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        num_threads: int = 1,
        pool_size: int = 1,
        model_content: bytes | None = None,
        card: ModelCard | None = None,
    ) -> None:
        """`model_content` with its `card`: a model held only in memory (an encrypted one, decrypted by
        its owner); `model_path` then only names it in messages."""
        self.model_path = Path(model_path) if model_path is not None else SHIPPED_MODEL
        if model_content is None:
            self.card: ModelCard = load_card(self.model_path)
        elif card is None or hashlib.sha256(model_content).hexdigest() != card.sha256:
            raise ModelError(f"model {self.model_path} in memory does not match its card's sha256")
        else:
            self.card = card
        interpreter_type, self.backend = interpreter_class()
        self.num_threads = num_threads
        # One copy of the model's bytes for the whole pool: each interpreter given the path would map
        # the file again, and every mapping counts in the process's resident memory.
        if model_content is None:
            try:
                model_content = self.model_path.read_bytes()
            except OSError as exc:
                raise ModelError(f"model file {self.model_path} cannot be read: {exc.strerror}") from None
        runners = [
            _load_runner(interpreter_type, self.model_path, num_threads, self.card, model_content)
            for _ in range(pool_size)
        ]
        self._check_against_card(runners[0])
        input_detail = runners[0].interpreter.get_input_details()[0]
        scale, zero_point = input_detail["quantization"]
        self.preprocess = Preprocessor(self.card.input, input_detail["dtype"], float(scale), int(zero_point))
        self._idle: queue.Queue[_Runner] = queue.Queue()
        for runner in runners:
            self._idle.put(runner)
        self.pool_size = pool_size

    @property
    def labels(self) -> tuple[str, ...]:
        return self.card.labels

    def _check_against_card(self, runner: _Runner) -> None:
        interpreter = runner.interpreter
        input_detail = interpreter.get_input_details()[0]
        expected_shape = [1, self.card.input.height, self.card.input.width, 3]
        if list(input_detail["shape"]) != expected_shape:
            raise ModelError(
                f"model input shape {list(input_detail['shape'])} does not match its card {expected_shape}"
            )
        if np.dtype(input_detail["dtype"]).name != self.card.input.dtype:
            raise ModelError(
                f"model input type {np.dtype(input_detail['dtype']).name} does not match its card "
                f"({self.card.input.dtype})"
            )

    @contextmanager
    def _runner(self) -> Iterator[_Runner]:
        runner = self._idle.get()
        try:
            yield runner
        finally:
            self._idle.put(runner)

    def _probabilities(self, outputs: np.ndarray) -> np.ndarray:
        if self.card.output.kind == "logits":
            scaled = outputs / self.card.output.temperature
            exps = np.exp(scaled - scaled.max())
            return np.asarray(exps / exps.sum())
        total = float(outputs.sum())
        return outputs / total if total > 0 else np.full_like(outputs, 1.0 / len(outputs))

    def _classify_with(self, runner: _Runner, frame: np.ndarray) -> Classification:
        started = time.perf_counter()
        tensor = self.preprocess(frame)
        prepared = time.perf_counter()
        outputs = runner.run(tensor)
        finished = time.perf_counter()
        probabilities = self._probabilities(outputs)
        best = int(np.argmax(probabilities))
        return Classification(
            label=self.card.labels[best],
            confidence=float(probabilities[best]),
            probabilities={label: float(p) for label, p in zip(self.card.labels, probabilities, strict=True)},
            model_name=self.card.name,
            model_version=self.card.version,
            preprocess_ms=(prepared - started) * 1000.0,
            inference_ms=(finished - prepared) * 1000.0,
            embedding=runner.last_embedding(),
        )

    def classify(self, frame_bgr: np.ndarray) -> Classification:
        """Classify one BGR uint8 frame of any size. Thread-safe; blocks while every interpreter is busy."""
        with self._runner() as runner:
            return self._classify_with(runner, frame_bgr)

    def classify_batch(self, frames: Sequence[np.ndarray]) -> list[Classification]:
        """Classify several frames (a burst) on one interpreter, in order."""
        with self._runner() as runner:
            return [self._classify_with(runner, frame) for frame in frames]

    def invoke_raw(self, tensor: np.ndarray) -> np.ndarray:
        """Run the model on an already prepared input tensor (benchmarks measure the bare model with it)."""
        with self._runner() as runner:
            return runner.run(tensor)
