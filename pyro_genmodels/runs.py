"""Run directories: train a registered model on a named data set, and reload it.

A run directory holds ``checkpoint.pt`` (resumable: model, optimizer, RNG state,
metrics, and the metadata needed to rebuild the model and reload its data) and
``metrics.jsonl`` (one JSON object per epoch). This is the layer the CLI and the
demo use; it ties ``models``, ``data`` and ``infer`` together. What is done with a
reloaded run (evaluate, BDMC, sample, plot) is in :mod:`pyro_genmodels.evaluation`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .data import ImageDataset, load_dataset, load_raw
from .distributions import LIKELIHOODS
from .infer import (
    CheckpointError,
    TrainConfig,
    fit,
    load_checkpoint,
    resolve_device,
)
from .infer.train import BEST_NAME, CHECKPOINT_NAME, resumable
from .models import family_options
from .registry import create_model, make_config, model_from_config

#: training settings that ``resume`` may change; the rest come from the checkpoint
RESUMABLE = (
    "epochs", "patience", "progress", "accelerator", "devices", "num_nodes", "strategy",
    "precision", "logger", "compile", "validate",
)  # fmt: skip
#: guide options that checkpoints of version 0.1.0 hold flat in the model config
_FLAT_GUIDE_OPTIONS = (
    "num_components", "rank", "flow_steps", "num_classes", "temperature", "straight_through"
)  # fmt: skip


def build_model(model_name: str, image_shape, **model_config: Any):
    """Create a registered model for images of ``image_shape``."""
    return create_model(model_name, image_shape=tuple(image_shape), **model_config)


def upgrade_model_config(model_config: dict) -> dict:
    """A stored model config in today's layout: guide options nested under the guide."""
    config = dict(model_config)
    flat = {k: config.pop(k) for k in _FLAT_GUIDE_OPTIONS if k in config}
    if flat and "guide" in config:
        valid = family_options(config["guide"]).__dataclass_fields__
        config["guide_options"] = {k: v for k, v in flat.items() if k in valid}
    return config


def _resumed_train_config(saved: dict, train_config: TrainConfig | dict | None) -> TrainConfig:
    """The checkpoint's training settings with the changes ``resume`` allows."""
    if isinstance(train_config, TrainConfig):
        changes = {k: getattr(train_config, k) for k in RESUMABLE}
    else:
        changes = dict(train_config or {})
        fixed = sorted(set(changes) - set(RESUMABLE))
        if fixed:
            raise ValueError(
                f"resume continues the checkpoint's training settings; only "
                f"{', '.join(RESUMABLE)} may change (got {', '.join(fixed)})"
            )
    saved = dict(saved)
    device = saved.pop("device", "auto")  # format 1: --device, now --accelerator's alias
    if saved.get("accelerator", "auto") == "auto" and device != "auto":
        saved["accelerator"] = device
    return TrainConfig(**{**saved, **changes})


def train_run(
    model_name: str,
    dataset: str,
    out: str | Path,
    model_config: dict | None = None,
    train_config: TrainConfig | dict | None = None,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    binarization: str = "static",
    download: bool = True,
    resume: bool = False,
    on_epoch_end=None,
    preset: str | None = None,
    image_size: int | None = None,
) -> tuple[torch.nn.Module, list[dict]]:
    """Train ``model_name`` on ``dataset`` and keep everything in the run directory ``out``.

    :param model_config: config keys of the model (not ``image_shape``: the data's).
    :param train_config: a :class:`TrainConfig`, or a dict of its keys.
    :param preset: the name of the recipe the settings came from, kept in the metadata.
    :param image_size: 32 for the 32x32 sprites (see :func:`~pyro_genmodels.data.load_raw`).

    With ``resume``, the model, data and training settings come from the checkpoint;
    only the keys in :data:`RESUMABLE` (``epochs``: the total to reach) may change.
    """
    out = Path(out)
    ckpt_path = out / CHECKPOINT_NAME
    model_config = dict(model_config or {})
    if resume:
        if model_config:
            raise ValueError(
                f"resume rebuilds the model from {ckpt_path}; drop the model settings "
                f"({', '.join(sorted(model_config))})"
            )
        ckpt = load_checkpoint(resumable(out))
        meta = ckpt["metadata"]
        train_config = _resumed_train_config(ckpt["train_config"], train_config)
        model_name, model_config = meta["model"], upgrade_model_config(meta["model_config"])
        data = meta["data"]
        if dataset is not None and dataset != data["dataset"]:
            raise ValueError(
                f"{out} was trained on {data['dataset']}; --resume continues on it, not on "
                f"{dataset} (drop --dataset, or train a new run with another --out)"
            )
        dataset, limit, binarization = data["dataset"], data["limit"], data["binarization"]
        image_size = data.get("image_size")
        preset = meta.get("preset")
        data_dir = data_dir if data_dir is not None else data.get("data_dir")
    elif ckpt_path.exists():
        raise ValueError(
            f"{out} already holds a checkpoint; pass --resume to continue it "
            "or choose another --out"
        )
    elif isinstance(train_config, dict):
        train_config = TrainConfig(**train_config)
    train_config = train_config or TrainConfig()
    if "image_shape" in model_config:
        raise ValueError("image_shape comes from the data set; leave it out of the model config")
    binarization = binarization or "static"
    raw_train = load_raw(dataset, "train", data_dir, download, limit, image_size)
    # the config is built once: it names the likelihood, which picks the data representation
    config = make_config(model_name, image_shape=raw_train.image_shape, **model_config)
    fmt = LIKELIHOODS[config.likelihood].data_format
    train = ImageDataset(raw_train, fmt, binarization).subset(limit)
    valid = load_dataset(dataset, "valid", fmt, binarization, data_dir, None, download,
                         image_size=image_size)  # fmt: skip
    torch.manual_seed(train_config.seed)  # the initial weights follow the seed
    module = model_from_config(model_name, config)
    metadata = {
        "model": model_name,
        "model_config": {k: v for k, v in module.config_dict().items() if k != "image_shape"},
        "image_shape": list(train.image_shape),
        "data": {
            "dataset": dataset,
            "data_format": fmt,
            "binarization": train.binarization,
            "limit": limit,
            "image_size": image_size,
            "data_dir": str(data_dir) if data_dir is not None else None,
            "num_train": len(train),
        },
        "version": __version__,
        "preset": preset,
    }
    metrics = fit(module, train, valid.fixed(), train_config, out, metadata, resume=resume,
                  on_epoch_end=on_epoch_end)  # fmt: skip
    return module, metrics


@dataclass
class Run:
    """A reloaded run: the trained module, its metadata and raw checkpoint."""

    module: torch.nn.Module
    metadata: dict
    checkpoint: dict
    path: Path

    @property
    def model_name(self) -> str:
        return self.metadata["model"]

    def dataset(self, split: str, dataset: str | None = None, data_dir=None, limit=None):
        """Reload a split of the run's data (or of another data set of the same kind)."""
        data = self.metadata["data"]
        data_dir = data_dir if data_dir is not None else data.get("data_dir")
        ds = load_dataset(
            dataset or data["dataset"],
            split,
            data["data_format"],
            data["binarization"] or "static",
            data_dir,
            limit,
            image_size=data.get("image_size") if dataset in (None, data["dataset"]) else None,
        )
        if tuple(ds.image_shape) != tuple(self.metadata["image_shape"]):
            raise ValueError(
                f"{dataset or data['dataset']} images have shape {tuple(ds.image_shape)} but the "
                f"model was trained on {tuple(self.metadata['image_shape'])}"
            )
        return ds


CHECKPOINT_CHOICES = ("best", "last")


def load_run(run_dir: str | Path, device: str = "cpu", which: str = "last") -> Run:
    """Rebuild the trained module of a run directory.

    :param run_dir: a run directory, or the name of a shipped checkpoint (``vae-paper``).
    :param which: ``"last"`` (the latest epoch) or ``"best"`` (the best validation ELBO;
        falls back to the latest when the run has no ``best.pt``, and the other way round
        for a shipped checkpoint, which has only ``best.pt``).
    :raises CheckpointError: missing or corrupt checkpoint, or one for another model.
    """
    if which not in CHECKPOINT_CHOICES:
        raise ValueError(f"unknown checkpoint {which!r}; valid: {', '.join(CHECKPOINT_CHOICES)}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir() and len(run_dir.parts) == 1:  # a shipped checkpoint's name
        from .pretrained import list_pretrained, pretrained_path

        if str(run_dir) in list_pretrained():
            run_dir = pretrained_path(str(run_dir))
    if not run_dir.is_dir():
        raise CheckpointError(f"no run directory at {run_dir}")
    device = resolve_device(device)
    name = BEST_NAME if which == "best" and (run_dir / BEST_NAME).is_file() else CHECKPOINT_NAME
    if not (run_dir / name).is_file() and (run_dir / BEST_NAME).is_file():
        name = BEST_NAME  # a shipped checkpoint: its best epoch is all it has
    ckpt = load_checkpoint(run_dir / name, map_location=device)
    return Run(module_from_checkpoint(ckpt, run_dir, device), ckpt["metadata"], ckpt, run_dir)


def module_from_checkpoint(ckpt: dict, source: str | Path, device) -> torch.nn.Module:
    """The trained module of a loaded checkpoint (any format), on ``device``, in eval mode.

    :raises CheckpointError: it is for a model or config this version cannot build.
    """
    try:
        meta = ckpt["metadata"]
        model_config = upgrade_model_config(meta["model_config"])
        module = build_model(meta["model"], meta["image_shape"], **model_config)
        module.load_state_dict(ckpt["module_state"])
    except (KeyError, TypeError, RuntimeError, ValueError) as e:
        saved = ckpt.get("metadata", {}).get("version") if isinstance(ckpt, dict) else None
        newer = f" (written by pyro-genmodels {saved}, newer than this {__version__}: upgrade)"
        why = newer if saved and _version_key(saved) > _version_key(__version__) else ""
        raise CheckpointError(
            f"{source} holds a checkpoint this version cannot use{why}: {e}"
        ) from e
    return module.to(resolve_device(device)).eval()


def active_units(run: Run, limit: int = 2000) -> tuple[int, int] | None:
    """``(active, total)`` latent dimensions over the first ``limit`` validation images:
    those whose q(z|x) mean varies by more than 0.01 (Burda et al.); None for a model
    without codes."""
    module = run.module
    if not hasattr(module, "encode"):
        return None
    x = run.dataset("valid", limit=limit).fixed().to(module.device)
    codes = torch.cat([module.encode(b) for b in x.split(500)])
    return int((codes.var(0) > 0.01).sum()), codes.shape[-1]


def _version_key(version: str) -> tuple[int, ...]:
    """``"0.10.2"`` -> ``(0, 10, 2)``; pre-release suffixes are ignored."""
    parts = []
    for part in str(version).split("."):
        digits = "".join(ch for ch in part if ch.isdigit()) if part[:1].isdigit() else ""
        parts.append(int(digits) if digits else 0)
    return tuple(parts)
