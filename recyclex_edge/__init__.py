"""RecycleX Edge: the daemon that runs inside a smart recycling bin.

Data flows one way: camera -> deposit detector -> classifier -> decision -> sorter and outbox -> MQTT.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("recyclex-edge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
