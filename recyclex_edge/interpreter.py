"""Where the TFLite interpreter comes from.

ai-edge-litert is the maintained runtime and runs int8 fast on x86 and ARM; tflite-runtime is the
fallback for older Raspberry Pi OS images where only it installs. Nothing else in the package imports
either directly.
"""

from __future__ import annotations

from typing import Any

from recyclex_edge.errors import ModelError


def interpreter_class() -> tuple[type[Any], str]:
    """(Interpreter class, backend name)."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite-runtime"
    except ImportError:
        raise ModelError(
            "no TFLite interpreter is installed: pip install ai-edge-litert (or tflite-runtime)"
        ) from None
