"""moa-search: architecture search over activation banks in Transformer feedforward layers."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("moa-search")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
