"""The TFLite runtime choice and its numpy ABI failures: the real tflite-runtime under numpy 2, and import
failures worded as numpy words them."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recyclex_edge.classifier import Classifier
from recyclex_edge.errors import ModelError
from recyclex_edge.interpreter import RUNTIME_CHATTER, interpreter_class, runtime_chatter_filtered
from recyclex_edge.numpy_abi import is_numpy_abi_error

NUMPY_MAJOR = int(np.__version__.split(".")[0])


def hide(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    """Make `package` unimportable for this test, as if it were not installed."""
    for name in (package, f"{package}.interpreter"):
        monkeypatch.setitem(sys.modules, name, None)


def test_ai_edge_litert_is_preferred() -> None:
    _, backend = interpreter_class()
    assert backend == "ai-edge-litert"


@pytest.mark.skipif(
    platform.machine() != "x86_64" or sys.version_info >= (3, 12),
    reason="tflite-runtime 2.14, its last release, has x86-64 wheels for CPython 3.11 at most",
)
def test_real_tflite_runtime_under_numpy_2_names_the_fix() -> None:
    assert NUMPY_MAJOR >= 2, "the test venv resolves numpy 2; this test is about that clash"
    # A fresh interpreter in which ai-edge-litert cannot be imported, so the fallback is used.
    script = (
        "import sys; sys.modules['ai_edge_litert'] = None\n"
        "from recyclex_edge.classifier import Classifier\n"
        "from recyclex_edge.errors import ModelError\n"
        "try:\n    Classifier()\nexcept ModelError as error:\n    print('MODEL-ERROR', error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("MODEL-ERROR")]
    assert "the TFLite runtime (tflite-runtime) was built for a different numpy" in line
    assert re.search(r"(ImportError: numpy.core.multiarray failed|AttributeError: _ARRAY_API)", line), (
        "the cause numpy gave, not the opaque SystemError around it"
    )
    assert f"numpy {np.__version__}" in line and "install 'numpy<2'" in line


def test_runtime_import_failing_on_numpy_abi_names_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hide(monkeypatch, "ai_edge_litert")
    monkeypatch.delitem(sys.modules, "tflite_runtime", raising=False)
    monkeypatch.delitem(sys.modules, "tflite_runtime.interpreter", raising=False)
    (tmp_path / "tflite_runtime").mkdir()
    (tmp_path / "tflite_runtime" / "__init__.py").write_text("")
    (tmp_path / "tflite_runtime" / "interpreter.py").write_text(
        "raise ImportError('numpy.core.multiarray failed to import')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelError, match=r"built for a different numpy.*install 'numpy<2'"):
        interpreter_class()


def test_no_runtime_at_all_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    hide(monkeypatch, "ai_edge_litert")
    hide(monkeypatch, "tflite_runtime")
    with pytest.raises(ModelError, match="no TFLite interpreter is installed: pip install ai-edge-litert"):
        interpreter_class()


def test_abi_errors_are_recognised_through_their_cause() -> None:
    try:
        try:
            raise AttributeError("_ARRAY_API not found")
        except AttributeError as inner:
            raise SystemError("<built-in method CreateWrapperFromFile> returned a result") from inner
    except SystemError as outer:
        assert is_numpy_abi_error(outer)
    assert not is_numpy_abi_error(ValueError("Could not open 'model.tflite'."))


# The TFLite runtime's INFO chatter is dropped from stderr while interpreters are made; nothing else is.
# (That `recyclex-edge classify` prints nothing on stderr, in a fresh process, is in tests/test_cli.py.)
def test_only_the_runtime_chatter_is_dropped(capfd: pytest.CaptureFixture[str]) -> None:
    with runtime_chatter_filtered():
        os.write(2, RUNTIME_CHATTER[0] + b"\n")
        os.write(2, b"another thread's warning\n")
        Classifier(pool_size=2)  # the real runtime (it says its XNNPACK line once per process)
    captured = capfd.readouterr()
    assert captured.err == "another thread's warning\n"
