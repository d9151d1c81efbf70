"""Named training recipes: a model, its config, a data set and training settings in TOML.

``pyro-genmodels train --preset NAME`` (or ``--config FILE.toml``, the same format)
starts from a recipe; options given on the command line override it. The shipped
recipes are the ``*.toml`` files next to this module; ``pyro-genmodels list --presets``
prints them. A recipe file holds::

    description = "one line"
    reference = "where its settings come from"
    model = "vae"                 # a registered model
    dataset = "binarized-mnist"   # a data set name
    binarization = "static"       # optional: static | dynamic
    [model_config]                # keys of the model's config (not image_shape)
    [model_config.guide_options]  # options of the guide family
    [train]                       # keys of TrainConfig

Every key is checked on load (:func:`load_preset`): an unknown one is a ``ValueError``
naming the valid ones, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PRESET_DIR = Path(__file__).parent
_TOP_KEYS = (
    "description",
    "reference",
    "model",
    "dataset",
    "binarization",
    "model_config",
    "train",
)


@dataclass(frozen=True)
class Preset:
    """A training recipe (see the module docstring for the file format)."""

    name: str
    model: str
    dataset: str
    description: str = ""
    reference: str = ""
    binarization: str | None = None
    model_config: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    path: str = ""


def list_presets() -> list[str]:
    """The names of the shipped recipes."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_preset(name_or_path: str | Path) -> Preset:
    """A shipped recipe by name, or a recipe file (``*.toml``) by path, checked.

    :raises ValueError: an unknown name, an unreadable file, or an unknown or invalid key.
    """
    path = Path(name_or_path)
    if path.suffix.lower() != ".toml":
        if str(name_or_path) not in list_presets():
            raise ValueError(
                f"unknown preset {str(name_or_path)!r}; valid: {', '.join(list_presets())}"
            )
        path = PRESET_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise ValueError(f"no config file at {path}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid TOML: {e}") from None
    preset = _from_dict(raw, path)
    check_preset(preset)
    return preset


def _from_dict(raw: dict, path: Path) -> Preset:
    unknown = sorted(set(raw) - set(_TOP_KEYS))
    if unknown:
        raise ValueError(f"{path.name}: unknown key(s) {unknown}; valid: {', '.join(_TOP_KEYS)}")
    for key in ("model", "dataset"):
        if key not in raw:
            raise ValueError(f"{path.name}: missing key {key!r}")
    for key in ("model_config", "train"):
        if not isinstance(raw.get(key, {}), dict):
            raise ValueError(f"{path.name}: [{key}] must be a table")
    model_config = dict(raw.get("model_config", {}))
    for key, value in model_config.items():
        if isinstance(value, list):  # TOML arrays are tuples in the configs
            model_config[key] = tuple(value)
    return Preset(
        name=path.stem,
        model=raw["model"],
        dataset=raw["dataset"],
        description=raw.get("description", ""),
        reference=raw.get("reference", ""),
        binarization=raw.get("binarization"),
        model_config=model_config,
        train=dict(raw.get("train", {})),
        path=str(path),
    )


def check_preset(preset: Preset) -> None:
    """Build the recipe's model config and training config once, so that every key and
    value is checked by the dataclasses themselves.

    :raises ValueError: the first unknown or invalid key, naming the valid ones.
    """
    from ..data import BINARIZATIONS, DATASETS
    from ..infer import TrainConfig
    from ..registry import make_config

    where = f"preset {preset.name!r}"
    if preset.dataset not in DATASETS:
        raise ValueError(
            f"{where}: unknown dataset {preset.dataset!r}; valid: {', '.join(DATASETS)}"
        )
    if preset.binarization is not None and preset.binarization not in BINARIZATIONS:
        raise ValueError(
            f"{where}: unknown binarization {preset.binarization!r}; "
            f"valid: {', '.join(BINARIZATIONS)}"
        )
    if "image_shape" in preset.model_config:
        raise ValueError(f"{where}: image_shape comes from the data set; leave it out")
    valid = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = sorted(set(preset.train) - set(valid))
    if unknown:
        raise ValueError(f"{where}: unknown [train] key(s) {unknown}; valid: {', '.join(valid)}")
    try:
        make_config(preset.model, **preset.model_config)
        TrainConfig(**preset.train)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: {e}") from None


def merge(base: dict, given: dict) -> dict:
    """``base`` updated by ``given``, with ``guide_options`` merged key by key."""
    out = {**base, **given}
    if "guide_options" in base and "guide_options" in given:
        out["guide_options"] = {**base["guide_options"], **given["guide_options"]}
    return out
