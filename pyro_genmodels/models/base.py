"""What every model shares: input checks, the method layout, and the attributes that
training and evaluation read.

Every model has ``model(x)``, ``guide(x)`` (possibly empty) and
``sample(num_samples) -> (num_samples, C, H, W)``; the observed site is ``"x"``
inside ``pyro.plate("data", x.shape[0])``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pyro
import torch
from pyro.infer.util import is_validation_enabled
from pyro.nn import PyroModule

from ..distributions import Likelihood, get_likelihood
from ..infer.hints import InferenceHints


def likelihood_from_config(config: Any, image_shape: tuple[int, int, int]) -> Likelihood:
    """The likelihood a model config names, with the options that likelihood takes."""
    options = {
        "gaussian": {"scale": getattr(config, "gaussian_scale", None)},
        "logistic-mixture": {"num_mixtures": getattr(config, "num_mixtures", 5)},
    }.get(config.likelihood, {})
    return get_likelihood(config.likelihood, image_shape, **options)


def check_image_shape(image_shape: Any) -> tuple[int, int, int]:
    """Normalize ``image_shape`` to a tuple of three positive ints or raise ValueError."""
    try:
        shape = tuple(int(s) for s in image_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image_shape must be (C, H, W) with positive sizes, got {image_shape!r}")
    return shape  # type: ignore[return-value]


class ImageModel(PyroModule, InferenceHints):
    """Base class of the library's models; holds ``config`` and the image likelihood.

    Subclasses define ``model``, ``guide`` and ``sample``. ``check_input`` turns
    bad data into a clear :class:`ValueError` before anything is computed. The class
    attributes below (and those of :class:`~pyro_genmodels.infer.hints.InferenceHints`:
    ``default_objective``, ``requires_enumeration``, ``iw_samples_per_pass``) are what the
    trainer, ``evaluate`` and the plots read; subclasses override them where they differ.
    """

    registry_name: str = ""
    #: False for a model without a prior (the autoencoder): no ``sample``, no log p(x)
    is_generative: bool = True
    #: whether ``encode`` returns real vectors (active units, traversals, embeddings)
    latent_is_real: bool = False
    #: images per batch in ``evaluate``
    eval_batch_size: int = 100

    def __init__(self, config: Any):
        super().__init__()
        self.config = config
        self.image_shape = check_image_shape(config.image_shape)

    def __getattr__(self, name: str) -> Any:
        # With module-local params, Pyro announces every parameter of a plain nn.Module child
        # by a "fake" param statement at each attribute access (for handlers of pyro.param
        # such as poutine.lift). The library's networks are plain modules that no handler
        # lifts, and those statements cost 7-9 % of a training step
        # (benchmarks/svi_overhead.py); global-param mode keeps Pyro's pyro.module call.
        modules = self.__dict__.get("_modules")
        if modules is not None and pyro.settings.get("module_local_params"):
            child = modules.get(name)
            if child is not None and not isinstance(child, PyroModule):
                return child
        return super().__getattr__(name)

    # -- helpers -----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def _ref(self) -> torch.Tensor:
        """A scalar on the module's device and dtype, to build tensors from."""
        for p in self.parameters():
            return p.new_zeros(())
        return torch.zeros(())

    def config_dict(self) -> dict[str, Any]:
        """The config as plain data (what checkpoints store)."""
        return dataclasses.asdict(self.config)

    def check_input(self, x: Any) -> torch.Tensor:
        """Validate a batch of images ``(N, C, H, W)`` for this model and return it in the
        dtype of the model's parameters (binary images and grey levels are exact in any
        float dtype; ``model.double()`` evaluates in float64).

        :raises ValueError: not a float tensor, wrong shape, or (while Pyro's validation is
            enabled, as by default) NaN/inf values or values outside the likelihood's
            support (e.g. grey levels for a Bernoulli model).
        """
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"images must be a torch.Tensor, got {type(x).__name__}")
        if not torch.is_floating_point(x):
            raise ValueError(f"images must be a float tensor, got dtype {x.dtype}; use x.float()")
        x = x.to(self._ref().dtype)
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            want, got = "(N, {}, {}, {})".format(*self.image_shape), tuple(x.shape)
            which = ""
            if x.dim() == 4 and got[1] != self.image_shape[0]:
                kinds = {1: "grey", 3: "RGB"}
                have, need = (kinds.get(c, f"{c}-channel") for c in (got[1], self.image_shape[0]))
                which = f" ({have} images for a {need} model)"
            raise ValueError(
                f"expected images of shape {want} for this model, got {got}{which}; a model "
                f"for these is built with image_shape={got[1:]}"
            )
        if is_validation_enabled():  # a host sync: training checks its data once instead
            self.likelihood.check_data(x)  # one pass; NaN and inf fail it and are named
        return x

    def model(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def guide(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def sample(self, num_samples: int) -> torch.Tensor:
        raise NotImplementedError


class CodeDecoderModel(ImageModel):
    """An image model that maps images to codes (``encode``, defined by subclasses) and codes
    back to images through ``self.decoder`` and ``self.likelihood``: the VAE and the
    autoencoder."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def decode(self, z: torch.Tensor, mean: bool = True) -> torch.Tensor:
        """Images for flat codes ``z`` ``(..., z_size)``: the likelihood's mean or a draw."""
        params = self.decoder(z)
        return self.likelihood.mean(params) if mean else self.likelihood(params).sample()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoded code of ``x`` (for a VAE: the mean of p(x | z) at the mean of q(z | x))."""
        return self.decode(self.encode(x))
