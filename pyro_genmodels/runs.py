"""Run directories: train a registered model on a named data set, reload, evaluate, sample.

A run directory holds ``checkpoint.pt`` (resumable: model, optimizer, RNG state,
metrics, and the metadata needed to rebuild the model and reload its data) and
``metrics.jsonl`` (one JSON object per epoch). This is the layer the CLI and the
demo use; it ties ``models``, ``data`` and ``infer`` together.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import __version__
from .data import ImageDataset, load_dataset, load_raw
from .distributions import LIKELIHOODS
from .infer import (
    CheckpointError,
    TrainConfig,
    ais_estimate,
    bdmc,
    fit,
    importance_estimate,
    kl_divergence,
    load_checkpoint,
    log_importance_weights,
    prior_log_marginal,
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
) -> tuple[torch.nn.Module, list[dict]]:
    """Train ``model_name`` on ``dataset`` and keep everything in the run directory ``out``.

    :param model_config: config keys of the model (not ``image_shape``: the data's).
    :param train_config: a :class:`TrainConfig`, or a dict of its keys.
    :param preset: the name of the recipe the settings came from, kept in the metadata.

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
    raw_train = load_raw(dataset, "train", data_dir, download)
    # the config is built once: it names the likelihood, which picks the data representation
    config = make_config(model_name, image_shape=raw_train.image_shape, **model_config)
    fmt = LIKELIHOODS[config.likelihood].data_format
    train = ImageDataset(raw_train, fmt, binarization).subset(limit)
    valid = load_dataset(dataset, "valid", fmt, binarization, data_dir, None, download)
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


def _nanmean(t: torch.Tensor) -> float:
    t = t[~torch.isnan(t)]
    return t.mean().item() if t.numel() else float("nan")


def _nanmax(t: torch.Tensor) -> float:
    t = t[~torch.isnan(t)]
    return t.max().item() if t.numel() else float("nan")


def _batch_seed(seed: int, index: int) -> int:
    """The seed of evaluation batch ``index``: results per image do not depend on which
    process (or in which order) a batch is evaluated."""
    return (int(seed) * 1_000_003 + 7_919 * int(index) + 1) % (2**63 - 1)


def evaluate_batch(
    module,
    xb: torch.Tensor,
    index: int,
    *,
    method: str = "iw",
    num_samples: int = 5000,
    chunk_size: int | None = None,
    prior_samples: int = 0,
    ais_steps: int = 1000,
    ais_chains: int = 16,
    seed: int = 0,
    example_offset: int = 0,
    ais_gradient_dtype: str | None = None,
) -> dict:
    """Per-image estimates for batch number ``index`` of an evaluation, drawn from the
    batch's own random stream (``seed``, ``index``); tensors on the CPU."""
    device = module.device
    xb = xb.to(device)
    out: dict[str, Any] = {"index": int(index)}
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(_batch_seed(seed, index))
        if method == "ais":
            low = getattr(torch, ais_gradient_dtype) if ais_gradient_dtype else None
            est = ais_estimate(module.model, module.guide, xb, ais_steps, ais_chains, seed=seed,
                               example_offset=example_offset, gradient_dtype=low)  # fmt: skip
            elbo = log_importance_weights(module.model, module.guide, xb, 10).mean(0)
            khat = torch.full_like(est.log_marginal, float("nan"))
            out["accept"] = est.acceptance_rate.cpu()
        else:
            est = importance_estimate(module.model, module.guide, xb, num_samples, chunk_size)
            elbo, khat = est.elbo, est.khat
        out.update(
            has_latent=est.has_latent,
            lm=est.log_marginal.cpu(),
            elbo=elbo.cpu(),
            khat=khat.float().cpu(),
            ess=est.ess.float().cpu(),
        )
        if est.has_latent:
            out["kl"] = kl_divergence(module.model, module.guide, xb).cpu()
            if module.latent_is_real and module.is_generative:
                out["codes"] = module.encode(xb).cpu()  # encode runs without grad
            if prior_samples:
                out["prior"] = prior_log_marginal(module.model, xb, prior_samples, chunk_size).cpu()
    return out


def evaluate_images(
    module,
    x: torch.Tensor,
    num_samples: int = 5000,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    prior_samples: int = 0,
    progress: bool = True,
    method: str = "iw",
    ais_steps: int = 1000,
    ais_chains: int = 16,
    seed: int = 0,
    ais_gradient_dtype: str | None = None,
) -> dict:
    """Evaluation of ``module`` on images ``x`` ``(N, C, H, W)``: log p(x) by importance
    sampling (``method="iw"``, K = ``num_samples``) or by annealed importance sampling
    (``method="ais"``, ``ais_steps`` temperatures, ``ais_chains`` chains; the ELBO and KL then
    come from 10 importance samples and there is no Pareto k; ``ais_gradient_dtype``, e.g.
    ``"bfloat16"``, computes the leapfrog gradients in it: see
    :func:`~pyro_genmodels.infer.ais_estimate`). Batch ``b`` (images
    ``b * batch_size`` onwards) draws from its own stream, seeded by (``seed``, ``b``).

    :returns: the contract's keys (``nll``, ``elbo``, ``bits_per_dim``, ``num_samples``,
        ``num_examples``, ``psis_khat_mean``, ``psis_khat_max``) plus ``kl``, the standard
        error of ``nll``, the share of examples with k > 0.7, the mean ESS, ``active_units``
        (real latents: dimensions whose q(z|x) mean has variance > 0.01 over ``x``) and, if
        ``prior_samples``, the naive prior-sampling estimate ``prior_nll``.
    """
    settings = _evaluation_settings(module, x, method, batch_size, ais_gradient_dtype)
    kwargs = dict(method=method, num_samples=num_samples, chunk_size=chunk_size,
                  prior_samples=prior_samples, ais_steps=ais_steps, ais_chains=ais_chains,
                  seed=seed, ais_gradient_dtype=ais_gradient_dtype)  # fmt: skip
    start = time.perf_counter()
    batches = [
        evaluate_batch(module, x[i : i + settings], i // settings, example_offset=i, **kwargs)
        for i in tqdm(range(0, len(x), settings), desc="evaluate", disable=not progress)
    ]
    return summarize_evaluation(module, batches, time.perf_counter() - start, **kwargs)


#: the dtypes AIS may compute its leapfrog gradients in (``evaluate --ais-gradient-dtype``)
AIS_GRADIENT_DTYPES = ("bfloat16", "float16")


def _evaluation_settings(module, x, method: str, batch_size, gradient_dtype=None) -> int:
    """Check the request; returns the batch size."""
    if len(x) == 0:
        raise ValueError("no images to evaluate")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if gradient_dtype not in (None, *AIS_GRADIENT_DTYPES):
        valid = ", ".join(AIS_GRADIENT_DTYPES)
        raise ValueError(f"unknown AIS gradient dtype {gradient_dtype!r}; valid: {valid}")
    return batch_size or max(1, min(len(x), module.eval_batch_size))


def summarize_evaluation(module, batches: list[dict], seconds: float, **kwargs) -> dict:
    """The summary of :func:`evaluate_images` from the per-batch results of
    :func:`evaluate_batch` (in any order: they are sorted by batch index)."""
    batches = sorted(batches, key=lambda b: b["index"])
    method, num_samples = kwargs["method"], kwargs["num_samples"]
    ais_chains, prior_samples = kwargs["ais_chains"], kwargs["prior_samples"]

    def cat(key: str) -> torch.Tensor | None:
        parts = [b[key] for b in batches if key in b]
        return torch.cat(parts) if parts else None

    offset = module.likelihood.nll_offset()
    num_dims = math.prod(module.image_shape)
    has_latent = batches[-1]["has_latent"]
    nll = -cat("lm").double() + offset
    khat = cat("khat")
    n = len(nll)
    result = {
        "nll": nll.mean().item(),
        "nll_stderr": (nll.std().item() / math.sqrt(n)) if n > 1 else float("nan"),
        "elbo": (cat("elbo").double() - offset).mean().item(),
        "bits_per_dim": nll.mean().item() / (num_dims * math.log(2)),
        "method": method,
        "num_samples": (int(num_samples) if method == "iw" else int(ais_chains))
        if has_latent
        else 1,
        "num_examples": n,
        "psis_khat_mean": _nanmean(khat),
        "psis_khat_max": _nanmax(khat),
        "psis_khat_frac_above_0.7": (khat > 0.7).float().mean().item() if has_latent else 0.0,
        "ess_mean": cat("ess").mean().item(),
        "kl": cat("kl").mean().item() if has_latent else float("nan"),
        "exact": not has_latent,
        "nll_offset": offset,
        "seconds": seconds,
    }
    if method == "ais":
        result.update(ais_steps=int(kwargs["ais_steps"]), ais_chains=int(ais_chains),
                      ais_gradient_dtype=kwargs.get("ais_gradient_dtype") or "full")  # fmt: skip
        result["acceptance_rate"] = _nanmean(cat("accept").double()) if has_latent else float("nan")
    codes = cat("codes")
    if codes is not None and n > 1:
        # active units (Burda et al.): dimensions whose q(z|x) mean varies over the data
        result["active_units"] = int((codes.var(0) > 0.01).sum())
    if not module.is_generative:  # an autoencoder: p(x | code(x)) only
        result["reconstruction_nll"] = result["nll"]
        for key in ("nll", "nll_stderr", "elbo", "bits_per_dim"):
            result[key] = float("nan")
    prior = cat("prior")
    if prior is not None:
        result["prior_nll"] = (-prior.double() + offset).mean().item()
        result["prior_num_samples"] = int(prior_samples)
    result["per_image_nll"] = nll.tolist()
    return result


METHODS = ("iw", "ais")


def evaluate_images_distributed(
    module,
    x: torch.Tensor,
    devices: int,
    accelerator: str = "cpu",
    num_nodes: int = 1,
    batch_size: int | None = None,
    progress: bool = True,
    **kwargs,
) -> dict | None:
    """:func:`evaluate_images` sharded over ``devices`` processes (DDP through Lightning):
    process r takes batches r, r + P, ...; the per-batch results are gathered on rank 0,
    which returns the summary (the other processes return None). Each batch draws from
    its own stream, so every image gets the same estimate as in one process."""
    import lightning.pytorch as pl
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
    from torch.utils.data import DataLoader

    from .infer.distributed import BatchEvaluator, release_process_group
    from .infer.train import quiet_lightning

    size = _evaluation_settings(module, x, kwargs.get("method", "iw"), batch_size,
                                kwargs.get("ais_gradient_dtype"))  # fmt: skip
    kwargs = {**_EVAL_DEFAULTS, **kwargs}
    batches = [(i // size, i, x[i : i + size]) for i in range(0, len(x), size)]
    with quiet_lightning():
        trainer = pl.Trainer(
            accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy="ddp",
            logger=False, enable_checkpointing=False, enable_model_summary=False,
            enable_progress_bar=progress, use_distributed_sampler=False, inference_mode=False,
        )  # fmt: skip
        loader = DataLoader(
            batches, batch_size=None, collate_fn=lambda b: b,
            sampler=UnrepeatedDistributedSampler(batches, trainer.world_size, trainer.global_rank,
                                                 shuffle=False),
        )  # fmt: skip
        evaluator = BatchEvaluator(
            module, lambda net, b: evaluate_batch(net, b[2], b[0], example_offset=b[1], **kwargs)
        )
        start = time.perf_counter()
        trainer.predict(evaluator, loader, return_predictions=False)
        release_process_group()
    if trainer.global_rank != 0:
        return None
    return summarize_evaluation(module, evaluator.results, time.perf_counter() - start, **kwargs)


_EVAL_DEFAULTS = dict(method="iw", num_samples=5000, chunk_size=None, prior_samples=0,
                      ais_steps=1000, ais_chains=16, seed=0, ais_gradient_dtype=None)  # fmt: skip


def evaluate_run(
    run_dir: str | Path,
    num_samples: int = 5000,
    split: str = "test",
    limit: int | None = None,
    dataset: str | None = None,
    data_dir: str | Path | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    prior_samples: int = 0,
    seed: int = 0,
    progress: bool = True,
    which: str = "best",
    method: str = "iw",
    ais_steps: int = 1000,
    ais_chains: int = 16,
    devices: int = 1,
    ais_gradient_dtype: str | None = None,
) -> dict | None:
    """Evaluate a run on a split of its data set; see :func:`evaluate_images`.

    :param which: ``"best"`` (best validation ELBO, the default: model selection on the
        validation split) or ``"last"`` (the latest epoch).
    :param devices: processes to shard the images over (GPUs if ``device`` is cuda, or auto
        with CUDA present; else CPU processes): see :func:`evaluate_images_distributed`.
        Returns None in every process but the first.
    """
    if int(devices) < 1:
        raise ValueError(f"devices must be a positive integer, got {devices}")
    accelerator = "cpu"
    if devices > 1:
        accelerator = {"auto": "gpu" if torch.cuda.is_available() else "cpu", "cpu": "cpu",
                       "cuda": "gpu"}[str(device)]  # fmt: skip
        if accelerator == "gpu" and torch.cuda.device_count() < devices:
            raise ValueError(
                f"--devices {devices} GPUs requested but {torch.cuda.device_count()} available"
            )
        device = "cpu"  # Lightning moves the module to each process's device
    run = load_run(run_dir, device, which)
    data = run.dataset(split, dataset, data_dir, limit)
    kwargs = dict(method=method, num_samples=num_samples, chunk_size=None,
                  prior_samples=prior_samples, ais_steps=ais_steps, ais_chains=ais_chains,
                  seed=seed, ais_gradient_dtype=ais_gradient_dtype)  # fmt: skip
    if devices > 1:
        result = evaluate_images_distributed(
            run.module, data.fixed(), devices, accelerator, batch_size=batch_size,
            progress=progress, **kwargs,
        )  # fmt: skip
        if result is None:
            return None  # not rank 0
    else:
        result = evaluate_images(
            run.module, data.fixed(), batch_size=batch_size, progress=progress, **kwargs
        )
    info = data.describe()
    return {
        "model": run.model_name,
        "guide": run.metadata["model_config"].get("guide"),
        "epoch": run.checkpoint["epoch"],
        "checkpoint": which,
        **{k: info[k] for k in ("dataset", "split", "binarization", "data_format")},
        **result,
    }


def bdmc_run(
    run_dir: str | Path,
    num_examples: int = 100,
    ais_steps: int = 1000,
    ais_chains: int = 16,
    device: str = "auto",
    seed: int = 0,
    which: str = "best",
) -> dict:
    """BDMC on ``num_examples`` images simulated from a run's model: forward and reverse AIS
    bounds on their log p(x) (nats), per image and on average, and the gap between them."""
    run = load_run(run_dir, device, which)
    module = run.module
    if not module.is_generative:
        raise ValueError(f"{run.model_name} is not a generative model: nothing to simulate")
    torch.manual_seed(seed)
    start = time.perf_counter()
    r = bdmc(module.model, module.guide, num_examples, ais_steps, ais_chains, seed=seed)
    offset = module.likelihood.nll_offset()
    return {
        "model": run.model_name,
        "epoch": run.checkpoint["epoch"],
        "checkpoint": which,
        "num_examples": int(num_examples),
        "ais_steps": int(ais_steps),
        "ais_chains": int(ais_chains),
        "nll_lower_bound": offset - r.upper.mean().item(),  # from reverse AIS
        "nll_upper_bound": offset - r.lower.mean().item(),  # from forward AIS
        "gap_mean": r.gap.mean().item(),
        "gap_max": r.gap.max().item(),
        "log_px_lower": r.lower.tolist(),
        "log_px_upper": r.upper.tolist(),
        "acceptance_rate": _nanmean(r.forward.acceptance_rate.double()),
        "seconds": time.perf_counter() - start,
    }
