"""pyro-genmodels: deep generative models for images as Pyro probabilistic programs.

Importing the library changes no Pyro setting. Its trainer optimizes a module's own
``parameters()`` with a torch optimizer, which works with either value of Pyro's
``module_local_params``; the CLI, ``make demo`` and the notebooks turn it on (so that
re-running a notebook cell that rebuilds a model never meets the previous model's
parameters in Pyro's global param store). Plain ``pyro.infer.SVI`` with a
``pyro.optim`` optimizer needs it off, Pyro's default.
"""

from . import models  # noqa: F401  (importing it fills the registry)
from .registry import create_model, list_models

__version__ = "0.2.0"

from .pretrained import list_pretrained, load_pretrained  # noqa: E402 (uses __version__)

__all__ = ["__version__", "create_model", "list_models", "list_pretrained", "load_pretrained"]
