"""What :mod:`pyro_genmodels.infer` reads from a module, declared once with its defaults.

``infer`` takes any ``(model, guide)`` callables and any ``torch.nn.Module`` with
``model`` and ``guide`` methods; it never imports ``models``. A module may tune how it
is trained and evaluated by setting these attributes; the library's models inherit
:class:`InferenceHints` and override them where they differ.
"""

from __future__ import annotations

from typing import Any


class InferenceHints:
    """Attributes ``infer`` reads from a module, with their defaults."""

    #: the objective ``objective="auto"`` picks ("elbo", "meanfield", "iwae", "enum")
    default_objective: str = "elbo"
    #: the model has discrete sites that only ``TraceEnum_ELBO`` ("enum") sums out
    requires_enumeration: bool = False
    #: importance sampling: particles x examples per model pass (None: a memory budget);
    #: for decoders whose cost grows with the batch faster than memory (a PixelCNN)
    iw_samples_per_pass: int | None = None


_NAMES = frozenset(name for name in vars(InferenceHints) if not name.startswith("_"))


def hint(owner: Any, name: str) -> Any:
    """``owner.name``, or the default of :class:`InferenceHints` for other objects.

    :param owner: a module, or a bound method (``module.model``) whose module is asked.
    """
    if name not in _NAMES:
        raise AttributeError(f"{name!r} is not an inference hint; valid: {sorted(_NAMES)}")
    owner = getattr(owner, "__self__", owner)
    return getattr(owner, name, getattr(InferenceHints, name))
