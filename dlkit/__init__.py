"""dlkit: train, compress, export and serve neural networks, extended by plugins.

This module stays light (no torch, onnx or sklearn) so that ``dlkit --help`` is instant.
"""

from .errors import DlkitError, InputError, PluginError
from .hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "DlkitError", "InputError", "PluginError", "__version__"]
