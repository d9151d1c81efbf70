"""The model registry behind :func:`create_model` and :func:`list_models`.

Each model class registers itself where it is defined, with the dataclass that
holds its configuration::

    @register_model("vae", VAEConfig)
    class VAE(PyroModule): ...

``create_model(name, **config)`` then validates the keys against the dataclass
fields, so an unknown key fails loudly instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Callable
from typing import Any

_REGISTRY: dict[str, tuple[type, type]] = {}


def register_model(name: str, config_cls: type) -> Callable[[type], type]:
    """Class decorator registering a model under ``name``.

    :param name: the public name (``create_model(name)``, ``--model name``).
    :param config_cls: a dataclass whose fields are the accepted config keys.
    """
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"config_cls for {name!r} must be a dataclass")

    def decorator(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name][0] is not cls:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = (cls, config_cls)
        cls.registry_name = name
        cls.config_class = config_cls
        return cls

    return decorator


def list_models() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_REGISTRY)


def config_classes() -> dict[str, type]:
    """``{model name: config dataclass}`` for every registered model."""
    return {name: _REGISTRY[name][1] for name in list_models()}


def config_keys(name: str) -> list[str]:
    """The config keys that model ``name`` accepts."""
    return [f.name for f in dataclasses.fields(_lookup(name)[1])]


def did_you_mean(word: str, valid) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``valid`` to a misspelt ``word``, or
    ``""``."""
    close = difflib.get_close_matches(str(word), [str(v) for v in valid], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def make_config(name: str, **config: Any) -> Any:
    """Build (and validate) the config dataclass of model ``name``.

    :raises ValueError: an unknown key (with the closest valid one), or a value of the wrong
        type, naming the key and the type its field expects.
    """
    _, config_cls = _lookup(name)
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(config) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown config key(s) {unknown} for model {name!r}"
            f"{did_you_mean(unknown[0], fields)}; valid keys: {sorted(fields)}"
        )
    hints = typing.get_type_hints(config_cls)
    for key, value in config.items():
        expected = hints.get(key)
        options = typing.get_args(expected)
        if type(None) in options:  # X | None: None is fine, else check X
            rest = [t for t in options if t is not type(None)]
            expected = None if value is None or len(rest) != 1 else rest[0]
        if expected in (int, float) and not (
            isinstance(value, int | float) and not isinstance(value, bool)
        ):
            raise ValueError(f"{key} must be {'an int' if expected is int else 'a number'}, "
                             f"got {value!r}")  # fmt: skip
    return config_cls(**config)


def create_model(name: str, pretrained: str | None = None, **config: Any) -> Any:
    """Create a registered model, like ``timm.create_model``.

    :param name: one of :func:`list_models`.
    :param pretrained: the name of a shipped checkpoint (``list_pretrained()``) or a run
        directory: the trained model, in eval mode, which must be a ``name`` model; config
        keys given with it must equal the checkpoint's.
    :param config: keys of the model's config dataclass, e.g. ``image_shape=(1, 28, 28)``,
        ``likelihood="bernoulli"``, ``latent_dim=50``, ``guide="diagonal"``.
    :raises ValueError: for an unknown name or key, listing the valid ones.

    >>> vae = create_model("vae", pretrained="vae-paper")  # doctest: +SKIP
    """
    if pretrained is None:
        return model_from_config(name, make_config(name, **config))
    from .runs import load_run

    run = load_run(pretrained, which="best")
    if run.model_name != name:
        raise ValueError(f"{pretrained!r} holds a {run.model_name!r} model, not {name!r}")
    saved = run.module.config_dict()
    trained, asked = make_config(name, **saved), make_config(name, **{**saved, **config})
    differ = sorted(k for k in config if getattr(asked, k) != getattr(trained, k))
    if differ:
        raise ValueError(f"{pretrained!r} was trained with other {', '.join(differ)}; leave "
                         "them out to get the trained model")  # fmt: skip
    return run.module


def model_from_config(name: str, config: Any) -> Any:
    """Create model ``name`` from a config already built by :func:`make_config`."""
    cls, config_cls = _lookup(name)
    if not isinstance(config, config_cls):
        raise TypeError(f"model {name!r} takes a {config_cls.__name__}, got {type(config)}")
    return cls(config)


def _lookup(name: str) -> tuple[type, type]:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(
            f"unknown model {name!r}{did_you_mean(name, _REGISTRY)}; valid models: "
            f"{', '.join(list_models())}"
        )
    return _REGISTRY[name]
