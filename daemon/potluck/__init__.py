"""potluck: volunteers improve one shared model with signed sparse patches over a P2P swarm."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("potluck")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"

AGENT = f"potluck/{__version__}"
