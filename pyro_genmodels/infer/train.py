"""Stochastic variational inference over a DataLoader, with checkpoints and resume.

The step is Pyro's SVI step written against a ``torch.optim`` optimizer over the
module's own parameters (Pyro's recommended idiom with module-local params):
``loss = elbo.differentiable_loss(model, guide, x); loss.backward(); optim.step()``.
That keeps the whole optimizer state in one ``state_dict`` for exact resume.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import pyro
import torch
from pyro.optim.clipped_adam import ClippedAdam
from pyro.poutine.scale_messenger import ScaleMessenger
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler
from tqdm.auto import tqdm

from .checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointError,
    get_rng_state,
    load_checkpoint,
    save_atomic,
    set_rng_state,
    write_jsonl_atomic,
)
from .free_bits import FreeBitsELBO
from .hints import hint
from .importance import _max_plate_nesting, log_importance_weights
from .iwae import IWAE_ELBO
from .kl import kl_divergence

CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"  # the module at the best validation ELBO so far (model selection)
METRICS_NAME = "metrics.jsonl"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class LatentScale(ScaleMessenger):
    """``poutine.scale`` restricted to latent (unobserved) sample sites.

    Applied to both model and guide it multiplies the KL part of the ELBO by
    ``scale`` (beta-VAE, KL annealing) and leaves the reconstruction term alone.
    """

    def _process_message(self, msg) -> None:
        if msg["type"] == "sample" and not msg["is_observed"]:
            super()._process_message(msg)


def _elbo_objectives() -> dict[str, Callable[..., pyro.infer.ELBO]]:
    return {
        "elbo": lambda n: pyro.infer.Trace_ELBO(num_particles=n, vectorize_particles=n > 1),
        "meanfield": lambda n: pyro.infer.TraceMeanField_ELBO(
            num_particles=n, vectorize_particles=n > 1
        ),
        # the IWAE bound of Burda et al.: log (1/K) sum_k w_k over K vectorized particles
        "iwae": lambda n: IWAE_ELBO(num_particles=n),
        # discrete model sites marked for enumeration are summed out exactly
        "enum": lambda n: pyro.infer.TraceEnum_ELBO(num_particles=n, vectorize_particles=n > 1),
    }


Objective = Literal["auto", "elbo", "meanfield", "iwae", "enum"]
Optimizer = Literal["adam", "clipped-adam"]
Device = Literal["auto", "cpu", "cuda"]
#: "auto" asks the module (``module.default_objective``), else uses "elbo"
OBJECTIVES: tuple[str, ...] = get_args(Objective)
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)


def make_elbo(
    objective: str, num_particles: int = 1, max_plate_nesting: int | None = None
) -> pyro.infer.ELBO:
    """The Pyro ELBO for an objective name: ``elbo`` (Trace_ELBO), ``meanfield``
    (TraceMeanField_ELBO, analytic KL where registered), ``iwae`` (RenyiELBO with
    alpha=0) or ``enum`` (TraceEnum_ELBO)."""
    table = _elbo_objectives()
    if objective not in table:
        raise ValueError(f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVES)}")
    if int(num_particles) < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    elbo = table[objective](int(num_particles))
    if max_plate_nesting is not None:  # spares Pyro's guess (and its log line)
        extra = 1 if elbo.vectorize_particles and elbo.num_particles > 1 else 0
        elbo.max_plate_nesting = int(max_plate_nesting) + extra
    return elbo


def resolve_objective(objective: str, module) -> str:
    """Resolve ``"auto"`` and check that the objective suits the module."""
    if objective == "auto":
        objective = hint(module, "default_objective")
    if objective not in OBJECTIVES[1:]:
        raise ValueError(f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVES)}")
    if hint(module, "requires_enumeration") and objective != "enum":
        raise ValueError(
            f"this model has an enumerated discrete site (e.g. the GMVAE cluster); "
            f"objective {objective!r} cannot sum it out: use objective 'enum' (or 'auto')"
        )
    return objective


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else CPU. Asking for CUDA without one is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but no CUDA device is available")
    return device


@dataclass
class TrainConfig:
    epochs: int = 10  # most passes over the training data (with --resume: the total to reach)
    patience: int = 0  # stop after this many epochs without a better validation ELBO (0: off)
    batch_size: int = 128  # minibatch size
    lr: float = 1e-3  # learning rate
    optimizer: Optimizer = "adam"  # clipped-adam: Pyro's, with per-parameter norm clipping
    clip_norm: float = 10.0  # clipped-adam only
    objective: Objective = "auto"  # iwae: K = num_particles; auto: the model's choice
    num_particles: int = 1  # particles per ELBO estimate (vectorized); K for "iwae"
    beta: float = 1.0  # KL weight (beta-VAE)
    anneal_epochs: float = 0.0  # linear KL annealing from ~0 to beta over this many epochs
    free_bits: float = 0.0  # KL floor in nats per latent dimension (0: off); elbo objective
    seed: int = 0  # random seed (initial weights, batches, samples)
    device: Device = "auto"  # auto: CUDA when available, else CPU
    valid_batch_size: int = 500  # images per validation batch
    validate: bool = True  # Pyro's argument and shape checks (off: ~10% faster steps)
    progress: bool = True  # tqdm progress bar with the running loss

    def __post_init__(self):
        if self.device not in get_args(Device):
            raise ValueError(f"unknown device {self.device!r}; valid: {get_args(Device)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; valid: {OPTIMIZERS}")
        if self.objective != "auto":
            make_elbo(self.objective, self.num_particles)  # validates both
        elif int(self.num_particles) < 1:
            raise ValueError(f"num_particles must be >= 1, got {self.num_particles}")
        for key in ("epochs", "batch_size", "num_particles", "valid_batch_size", "patience"):
            value = getattr(self, key)
            low = 0 if key == "patience" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                kind = "a non-negative" if low == 0 else "a positive"
                raise ValueError(f"{key} must be {kind} integer, got {value!r}")
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not self.free_bits >= 0:
            raise ValueError(f"free_bits must be >= 0, got {self.free_bits}")
        if self.free_bits > 0 and self.objective not in ("auto", "elbo"):
            raise ValueError(f"free bits replace the elbo objective; got {self.objective!r}")


class _TensorBatches(Dataset):
    """A tensor indexed by lists of indices (one DataLoader item = one batch)."""

    def __init__(self, data: torch.Tensor):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index):
        return self.data[index]


def _batches(dataset: Dataset, batch_size: int, generator: torch.Generator | None) -> DataLoader:
    """A DataLoader yielding whole batches via batched indexing (fast for in-memory data)."""
    base = RandomSampler(dataset, generator=generator) if generator is not None else None
    if base is None:
        base = range(len(dataset))
    sampler = BatchSampler(base, batch_size, drop_last=False)
    return DataLoader(dataset, sampler=sampler, batch_size=None, collate_fn=lambda b: b)


class Trainer:
    """Fit a module with ``model(x)`` and ``guide(x)`` methods by SVI.

    :param module: e.g. ``create_model("vae", ...)``; its parameters are optimized.
    :param config: a :class:`TrainConfig`.
    :param run_dir: where ``checkpoint.pt`` and ``metrics.jsonl`` go (None: nowhere).
    :param metadata: opaque data stored in every checkpoint (model name, config, dataset).
    """

    def __init__(
        self,
        module: torch.nn.Module,
        config: TrainConfig | None = None,
        run_dir: str | Path | None = None,
        metadata: dict | None = None,
    ):
        self.config = config or TrainConfig()
        self.device = resolve_device(self.config.device)
        self.module = module.to(self.device)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.metadata = dict(metadata or {})
        self.objective = resolve_objective(self.config.objective, module)
        self.elbo = None  # built at the first step, when the plate nesting is known
        self.optimizer = self._make_optimizer()
        self.epoch = 0  # completed epochs
        self.step = 0  # optimizer steps taken
        self.metrics: list[dict] = []
        self.best_valid_elbo = -math.inf
        self.best_epoch = 0  # the epoch of best.pt (0: none yet)
        self.since_best = 0  # epochs counted towards the patience since best_epoch
        self.stopped = False  # early stopping ended the run

    # -- set-up ---------------------------------------------------------------------------
    def _make_optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.module.parameters() if p.requires_grad]
        if self.config.optimizer == "clipped-adam":
            return ClippedAdam(params, lr=self.config.lr, clip_norm=self.config.clip_norm)
        try:  # the fused kernel is several times faster than the per-tensor loop
            return torch.optim.Adam(params, lr=self.config.lr, fused=True)
        except (RuntimeError, TypeError):
            return torch.optim.Adam(params, lr=self.config.lr)

    @property
    def checkpoint_path(self) -> Path | None:
        return self.run_dir / CHECKPOINT_NAME if self.run_dir else None

    def kl_weight(self, step: int, steps_per_epoch: int) -> float:
        """beta, linearly annealed over ``anneal_epochs`` (strictly positive)."""
        beta = float(self.config.beta)
        anneal_steps = self.config.anneal_epochs * steps_per_epoch
        if anneal_steps <= 0:
            return beta
        return beta * min(1.0, (step + 1) / anneal_steps)

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "epoch": self.epoch,
            "step": self.step,
            "module_state": self.module.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "train_config": dataclasses.asdict(self.config),
            "rng": get_rng_state(),
            "metadata": self.metadata,
            "metrics": self.metrics,
            "best_valid_elbo": self.best_valid_elbo,
            "early_stopping": {
                "best_epoch": self.best_epoch,
                "since_best": self.since_best,
                "stopped": self.stopped,
            },
        }

    def save(self, best: bool = False) -> None:
        """Write the checkpoint and metrics atomically (no-op without a run_dir).

        With ``best``, also write ``best.pt``: the module alone, for model selection.
        """
        if self.run_dir is None:
            return
        state = self.state_dict()
        if best:
            keep = ("format", "version", "epoch", "step", "module_state", "metadata", "metrics")
            save_atomic({k: state[k] for k in keep}, self.run_dir / BEST_NAME)
        save_atomic(state, self.checkpoint_path)
        write_jsonl_atomic(self.metrics, self.run_dir / METRICS_NAME)

    def load(self, ckpt: dict) -> None:
        """Restore module, optimizer, counters, metrics and RNG state from a checkpoint."""
        try:
            self.module.load_state_dict(ckpt["module_state"])
            self.optimizer.load_state_dict(ckpt["optimizer_state"])
        except (RuntimeError, KeyError, ValueError) as e:
            raise CheckpointError(f"checkpoint does not match this model: {e}") from e
        self.epoch, self.step = int(ckpt["epoch"]), int(ckpt["step"])
        self.metrics = list(ckpt.get("metrics", []))
        self.best_valid_elbo = float(ckpt.get("best_valid_elbo", -math.inf))
        stopping = ckpt.get("early_stopping") or self._replay_early_stopping()
        self.best_epoch = int(stopping.get("best_epoch", 0))
        self.since_best = int(stopping.get("since_best", 0))
        self.stopped = bool(stopping.get("stopped", False))
        set_rng_state(ckpt["rng"])

    # -- the loop -------------------------------------------------------------------------------
    def fit(
        self,
        train_data: Dataset | torch.Tensor,
        valid_data: torch.Tensor | None = None,
        resume: bool = False,
        on_epoch_end: Callable[[dict], None] | None = None,
    ) -> list[dict]:
        """Train until ``config.epochs`` epochs are complete; returns the per-epoch metrics.
        The module is left in eval mode, ready to be scored.

        :param train_data: a tensor of images, or a Dataset indexed by lists of indices
            that returns a batch (e.g. :class:`pyro_genmodels.data.ImageDataset`).
        :param valid_data: images for the per-epoch validation ELBO and KL.
        :param resume: continue from ``run_dir/checkpoint.pt``.
        """
        if isinstance(train_data, torch.Tensor):
            train_data = _TensorBatches(train_data)
        if len(train_data) == 0:
            raise ValueError("the training set is empty")
        if valid_data is not None and len(valid_data) == 0:
            raise ValueError("the validation set is empty (pass valid_data=None to skip it)")
        if resume:
            if self.checkpoint_path is None:
                raise ValueError("resume needs a run_dir")
            self.load(load_checkpoint(self.checkpoint_path, map_location=self.device))
        else:
            pyro.set_rng_seed(self.config.seed)
        if self.config.patience and valid_data is None:
            raise ValueError("early stopping (patience > 0) needs validation data")
        steps_per_epoch = math.ceil(len(train_data) / self.config.batch_size)
        while self.epoch < self.config.epochs and not self.stopped:
            row = self._train_epoch(train_data, steps_per_epoch)
            best = False
            if valid_data is not None:
                row.update(self.validate(valid_data))
                best = row["valid_elbo"] > self.best_valid_elbo
                self._early_stopping(row, best)
            self._check_finite(row)
            self.metrics.append(row)
            self.epoch += 1
            self.save(best=best)
            if on_epoch_end is not None:
                on_epoch_end(row)
        self.module.eval()  # scored as trained: exact discrete codes, no dropout
        return self.metrics

    def _early_stopping(self, row: dict, best: bool) -> None:
        """Track the best validation ELBO and stop after ``patience`` epochs without a better one.

        As in Tomczak & Welling's code, epochs before the KL weight reaches beta
        (``anneal_epochs``) do not count: the validation ELBO is not comparable across weights.
        """
        epoch = self.epoch + 1
        if best:
            self.best_valid_elbo, self.best_epoch, self.since_best = row["valid_elbo"], epoch, 0
        elif epoch >= self.config.anneal_epochs:
            self.since_best += 1
        row["best_epoch"], row["epochs_since_best"] = self.best_epoch, self.since_best
        if self.config.patience and self.since_best >= self.config.patience:
            self.stopped = True
            row["stopped_early"] = True

    def _replay_early_stopping(self) -> dict:
        """The early-stopping state of a checkpoint written before it was saved, from its
        metrics."""
        best, best_epoch, since = -math.inf, 0, 0
        for row in self.metrics:
            if row.get("valid_elbo", -math.inf) > best:
                best, best_epoch, since = row["valid_elbo"], row["epoch"], 0
            elif row["epoch"] >= self.config.anneal_epochs:
                since += 1
        return {"best_epoch": best_epoch, "since_best": since, "stopped": False}

    @property
    def stop_reason(self) -> str | None:
        """Why the run ended before ``epochs``, in words (None if it did not)."""
        if not self.stopped:
            return None
        return (
            f"stopped early after epoch {self.epoch}: no better validation ELBO in "
            f"{self.since_best} epochs (best {self.best_valid_elbo:.3f} at epoch {self.best_epoch})"
        )

    def _train_epoch(self, train_data: Dataset, steps_per_epoch: int) -> dict:
        cfg = self.config
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.epoch)
        loader = _batches(train_data, cfg.batch_size, generator)
        self.module.train()
        total, count, start = 0.0, 0, time.perf_counter()
        bar = tqdm(
            loader,
            desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
            disable=not cfg.progress,
            leave=False,
        )
        for x in bar:
            x = x.to(self.device)
            weight = self.kl_weight(self.step, steps_per_epoch)
            loss = self._step(x, weight)
            total += loss * x.shape[0]
            count += x.shape[0]
            if not math.isfinite(loss):
                where = f"epoch {self.epoch + 1}, step {self.step + 1}"
                kept = (
                    f"; the last good checkpoint (epoch {self.epoch}) is kept in {self.run_dir}"
                    if self.run_dir and self.epoch > 0
                    else ""
                )
                raise TrainingDiverged(
                    f"the loss became {loss} at {where}{kept}; try a lower --lr or clipped-adam"
                )
            bar.set_postfix(loss=f"{total / count:.3f}")
        return {
            "epoch": self.epoch + 1,
            "train_loss": total / count,  # negative (beta-weighted) ELBO per image, nats
            "kl_weight": self.kl_weight(self.step - 1, steps_per_epoch),
            "objective": self.objective,
            "seconds": time.perf_counter() - start,
            "steps": self.step,
        }

    def _step(self, x: torch.Tensor, kl_weight: float) -> float:
        """One SVI step on the per-image loss (the batch loss divided by the batch size)."""
        model, guide = self.module.model, self.module.guide
        if kl_weight != 1.0:
            model, guide = LatentScale(kl_weight)(model), LatentScale(kl_weight)(guide)
        n = x.shape[0]
        if self.elbo is None:
            devices = [x.device] if x.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):  # the probe leaves the RNG untouched
                nesting = _max_plate_nesting(self.module.model, self.module.guide, x)[0]
            if self.config.free_bits > 0:
                if self.objective != "elbo":
                    raise ValueError(f"free bits need the elbo objective, not {self.objective!r}")
                self.elbo = FreeBitsELBO(self.config.free_bits, self.config.num_particles)
                self.elbo.max_plate_nesting = nesting
            else:
                self.elbo = make_elbo(self.objective, self.config.num_particles, nesting)
        self.optimizer.zero_grad(set_to_none=True)
        with pyro.validation_enabled(self.config.validate):
            loss = self.elbo.differentiable_loss(model, guide, x) / n
        value = loss.item()
        if not math.isfinite(value):
            return value
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return value

    def _check_finite(self, row: dict) -> None:
        """Never checkpoint NaN parameters (a NaN gradient can precede a NaN loss)."""
        bad = [n for n, p in self.module.named_parameters() if not torch.isfinite(p).all()]
        if bad or not math.isfinite(row.get("valid_elbo", 0.0)):
            what = f"parameter {bad[0]!r}" if bad else "the validation ELBO"
            kept = f"; the last good checkpoint (epoch {self.epoch}) is kept" if self.epoch else ""
            raise TrainingDiverged(
                f"{what} became NaN or infinite in epoch {self.epoch + 1}{kept}; "
                "try a lower --lr or clipped-adam"
            )

    @torch.no_grad()
    def validate(self, valid_data: torch.Tensor) -> dict:
        """Validation ELBO and KL per image (beta = 1, no annealing), in nats."""
        if len(valid_data) == 0:
            raise ValueError("the validation set is empty")
        self.module.eval()
        elbo, kl, n = 0.0, 0.0, 0
        for start in range(0, len(valid_data), self.config.valid_batch_size):
            x = valid_data[start : start + self.config.valid_batch_size].to(self.device)
            lw = log_importance_weights(self.module.model, self.module.guide, x, 1)
            elbo += lw.sum().item()
            kl += kl_divergence(self.module.model, self.module.guide, x).sum().item()
            n += x.shape[0]
        return {"valid_elbo": elbo / n, "valid_kl": kl / n}


def fit(
    module: torch.nn.Module,
    train_data: Dataset | torch.Tensor,
    valid_data: torch.Tensor | None = None,
    config: TrainConfig | None = None,
    run_dir: str | Path | None = None,
    metadata: dict | None = None,
    resume: bool = False,
    **config_kwargs: Any,
) -> list[dict]:
    """Train ``module`` by SVI; keyword arguments fill a :class:`TrainConfig`.

    >>> fit(vae, train_images, valid_images, epochs=5, beta=1.0)  # doctest: +SKIP
    """
    if config is None:
        config = TrainConfig(**config_kwargs)
    elif config_kwargs:
        config = dataclasses.replace(config, **config_kwargs)
    return Trainer(module, config, run_dir, metadata).fit(train_data, valid_data, resume=resume)
