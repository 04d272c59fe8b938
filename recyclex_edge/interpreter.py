"""Where the TFLite interpreter comes from.

ai-edge-litert is the maintained runtime and runs int8 fast on x86 and ARM; tflite-runtime is the
fallback for older Raspberry Pi OS images where only it installs. Nothing else in the package imports
either directly.

tflite-runtime 2.14 (its last release) is compiled against numpy 1.x. Under numpy 2 it still imports,
then fails when an interpreter is created, with a SystemError wrapping "_ARRAY_API not found";
`interpreter_error()` turns that into a message naming the fix.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

from recyclex_edge.errors import ModelError
from recyclex_edge.numpy_abi import abi_clash_message, is_numpy_abi_error

# What the runtime's own C++ logger writes straight to file descriptor 2 when an interpreter is made.
# No environment variable turns it off (TF_CPP_MIN_LOG_LEVEL does not reach that logger).
RUNTIME_CHATTER = (b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",)


def interpreter_class() -> tuple[type[Any], str]:
    """(Interpreter class, backend name)."""
    failures: list[BaseException] = []
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError as error:
        failures.append(error)
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite-runtime"
    except ImportError as error:
        failures.append(error)
    for failure in failures:
        if is_numpy_abi_error(failure):
            raise ModelError(abi_clash_message("the TFLite runtime", failure)) from None
    raise ModelError(
        "no TFLite interpreter is installed: pip install ai-edge-litert (or tflite-runtime)"
    ) from None


def interpreter_error(interpreter_type: type[Any], error: BaseException) -> ModelError | None:
    """A ModelError naming the fix when creating an interpreter failed on a numpy ABI clash, else None."""
    if is_numpy_abi_error(error):
        package = interpreter_type.__module__.split(".")[0].replace("_", "-")
        return ModelError(abi_clash_message(f"the TFLite runtime ({package})", error))
    return None


@contextlib.contextmanager
def runtime_chatter_filtered() -> Iterator[None]:
    """Drop the runtime's INFO lines from stderr while an interpreter is created; keep everything else.

    File descriptor 2 points at a temporary file meanwhile; afterwards every other line written to it
    (by another thread, say) is written to the real stderr, late but not lost. Without a usable fd 2 or
    temporary directory, nothing is filtered.
    """
    sys.stderr.flush()
    with contextlib.ExitStack() as stack:
        try:
            capture = stack.enter_context(tempfile.TemporaryFile())
            saved = os.dup(2)
        except OSError:
            capture = None
        if capture is None:
            yield
            return
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().splitlines(keepends=True)
            kept = [line for line in lines if not line.startswith(RUNTIME_CHATTER)]
            if kept:
                os.write(2, b"".join(kept))
