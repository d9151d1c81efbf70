"""pyro-genmodels: deep generative models for images as Pyro probabilistic programs."""

import pyro as _pyro

# Parameters live in the modules, not in Pyro's global param store, so notebook
# cells that rebuild a model can be re-run safely.
_pyro.settings.set(module_local_params=True)

from . import models  # noqa: E402, F401  (importing it fills the registry)
from .registry import create_model, list_models  # noqa: E402

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "list_models"]
