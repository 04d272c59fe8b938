"""Recognising a numpy ABI clash and saying how to fix it.

On Raspberry Pi OS the camera stack (python3-picamera2 and the simplejpeg it imports) comes from apt,
compiled against the system numpy (1.24 on Bookworm), and tflite-runtime's wheels are compiled against
numpy 1.x too. Loaded next to numpy 2 they fail with errors that do not name the cause: a ValueError
"numpy.dtype size changed", an ImportError "numpy.core.multiarray failed to import", or a SystemError
wrapping "AttributeError: _ARRAY_API not found". This module recognises them so that the camera and the
interpreter can report the one fix that works: numpy below 2 in the bin's venv.
"""

from __future__ import annotations

import sys

import numpy as np

# What numpy and Cython print when an extension meets a numpy whose C ABI it was not built for.
_MARKERS = (
    "numpy.dtype size changed",
    "numpy.ndarray size changed",
    "compiled using numpy 1.x",
    "_array_api not found",
    "multiarray failed to import",
    "numpy.core._multiarray_umath",
)


def _abi_failure(error: BaseException) -> BaseException | None:
    """The exception in `error`'s chain (itself, its cause, its context...) that names a numpy ABI clash."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if any(marker in str(current).lower() for marker in _MARKERS):
            return current
        current = current.__cause__ or current.__context__
    return None


def is_numpy_abi_error(error: BaseException) -> bool:
    """Whether `error`, or an exception it was raised from, is a numpy ABI mismatch."""
    return _abi_failure(error) is not None


def abi_clash_message(what: str, error: BaseException) -> str:
    """One line for /health and the log: what failed, which numpy is loaded, and the fix to apply.

    No file paths: /health is public. Whether numpy came from the venv or the system says enough.
    """
    failure = _abi_failure(error) or error
    reason = str(failure).strip().splitlines()[0] if str(failure).strip() else ""
    in_venv = sys.prefix != sys.base_prefix and np.__file__.startswith(sys.prefix)
    return (
        f"{what} was built for a different numpy than the one loaded here (numpy {np.__version__}, "
        f"{'the venv' if in_venv else 'the system'}'s): {type(failure).__name__}: {reason}. Fix: "
        "install numpy below 2 in the bin's venv (/opt/recyclex-edge/venv/bin/pip install 'numpy<2'; "
        "sudo tools/install-service installs the tested set from tools/pi-constraints.txt) and restart"
    )
