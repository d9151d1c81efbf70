"""Stochastic variational inference on PyTorch Lightning, with checkpoints and resume.

:class:`Trainer` owns a run: its counters, metrics, best validation ELBO, early stopping
and the run directory; :mod:`~pyro_genmodels.infer.lightning` holds the
``LightningModule`` whose loss is Pyro's ELBO. A step is Pyro's SVI step written against a
``torch.optim`` optimizer over the module's own parameters (Pyro's idiom with
module-local params): ``loss = elbo.differentiable_loss(model, guide, x)``; Lightning does
``backward`` and ``step``. The whole optimizer state is one ``state_dict``, for exact resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.optim.clipped_adam import ClippedAdam
from torch.utils.data import Dataset

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
from .config import (  # noqa: F401 (re-exported)
    OBJECTIVES,
    OPTIMIZERS,
    LatentScale,
    TrainConfig,
    TrainingDiverged,
    make_elbo,
    make_logger,
    resolve_accelerator,
    resolve_device,
    resolve_objective,
)
from .optim import AdamNormGrad

CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"  # the module at the best validation ELBO so far (model selection)
METRICS_NAME = "metrics.jsonl"


class _TensorBatches(Dataset):
    """A tensor indexed by lists of indices (one DataLoader item = one batch)."""

    def __init__(self, data: torch.Tensor):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index):
        return self.data[index]


#: the submodules :func:`compile_networks` compiles: the pixel models' causal network, the
#: PixelVAE's, and the VAEs' encoder and decoder (plain networks; the Pyro program around
#: them, with its tracing, stays eager)
COMPILED_NETWORKS = ("net", "pixel_net", "encoder", "decoder")


def compile_networks(module: torch.nn.Module) -> list[str]:
    """``torch.compile`` the plain networks of ``module`` in place (``nn.Module.compile``: the
    state dict and checkpoints are unchanged) and return their names.

    Off by default (``TrainConfig.compile``): compiling costs about 20 s per process before
    the first step and needs a C++ compiler on CPU; it repays that on long runs
    (benchmarks/pixel_models.py --speed measures both).
    """
    names = []
    for name in COMPILED_NETWORKS:
        child = getattr(module, name, None)
        if isinstance(child, torch.nn.Module) and any(True for _ in child.parameters()):
            child.compile()
            names.append(name)
    if not names:
        raise ValueError(f"{type(module).__name__} has none of {COMPILED_NETWORKS} to compile")
    return names


@contextlib.contextmanager
def quiet_lightning():
    """Lightning's banners (accelerators found, tips, "fit stopped") and its pytree
    deprecation warning stay out of the library's output; its warnings about the run do not."""
    names = ("lightning.pytorch", "lightning.fabric")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)")
            # fit without validation data is a supported case, not a mistake
            warnings.filterwarnings("ignore", message="You defined a `validation_step` but")
            yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


class Trainer:
    """Fit a module with ``model(x)`` and ``guide(x)`` methods by SVI on PyTorch Lightning.

    :param module: e.g. ``create_model("vae", ...)``; its parameters are optimized.
    :param config: a :class:`TrainConfig` (its ``accelerator``, ``devices``, ``num_nodes``,
        ``strategy``, ``precision`` and ``logger`` go to ``lightning.pytorch.Trainer``).
    :param run_dir: where ``checkpoint.pt``, ``best.pt`` and ``metrics.jsonl`` go (None:
        nowhere); written by rank 0 only.
    :param metadata: opaque data stored in every checkpoint (model name, config, dataset).

    Lightning runs the loop (:class:`~pyro_genmodels.infer.lightning.SVIModule`); this
    object holds what outlives a ``fit`` call: the counters, the metrics, the best
    validation ELBO and the early-stopping state, all saved in ``checkpoint.pt``.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        config: TrainConfig | None = None,
        run_dir: str | Path | None = None,
        metadata: dict | None = None,
    ):
        self.config = config or TrainConfig()
        self.accelerator = resolve_accelerator(self.config)
        self.module = module
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.metadata = dict(metadata or {})
        self.objective = resolve_objective(self.config.objective, module)
        self.epoch = 0  # completed epochs
        self.step = 0  # optimizer steps taken
        self.steps_per_epoch = 1
        self.metrics: list[dict] = []
        self.best_valid_elbo = -math.inf
        self.best_epoch = 0  # the epoch of best.pt (0: none yet)
        self.since_best = 0  # epochs counted towards the patience since best_epoch
        self.stopped = False  # early stopping ended the run
        self.has_validation = False
        self.optimizer: torch.optim.Optimizer | None = None
        self._optimizer_state: dict | None = None  # from a checkpoint, for make_optimizer
        self._rng_state: dict | None = None
        self._on_epoch_end: Callable[[dict], None] | None = None
        self._lightning: Any = None

    # -- set-up ---------------------------------------------------------------------------
    def make_optimizer(self, module: torch.nn.Module) -> torch.optim.Optimizer:
        """The optimizer over ``module``'s parameters (with a checkpoint's state, on resume)."""
        params = [p for p in module.parameters() if p.requires_grad]
        if self.config.optimizer == "adam-normgrad":
            optimizer = AdamNormGrad(params, lr=self.config.lr)
        elif self.config.optimizer == "clipped-adam":
            optimizer = ClippedAdam(params, lr=self.config.lr, clip_norm=self.config.clip_norm)
        else:
            try:  # the fused kernel is several times faster than the per-tensor loop
                optimizer = torch.optim.Adam(params, lr=self.config.lr, fused=True)
            except (RuntimeError, TypeError):
                optimizer = torch.optim.Adam(params, lr=self.config.lr)
        if self._optimizer_state is not None:
            try:
                optimizer.load_state_dict(self._optimizer_state)
            except (RuntimeError, KeyError, ValueError) as e:
                raise CheckpointError(f"checkpoint does not match this model: {e}") from e
        self.optimizer = optimizer
        return optimizer

    @property
    def checkpoint_path(self) -> Path | None:
        return self.run_dir / CHECKPOINT_NAME if self.run_dir else None

    def kl_weight(self, step: int, steps_per_epoch: int) -> float:
        """beta, linearly annealed over ``anneal_epochs`` (strictly positive).

        ``anneal_per="step"`` raises it at every step, reaching beta at the last step of
        epoch ``anneal_epochs``; ``"epoch"`` holds ``beta * e / anneal_epochs`` through epoch
        ``e`` (1-based), the schedule of Tomczak & Welling's code.
        """
        beta = float(self.config.beta)
        if self.config.anneal_epochs <= 0:
            return beta
        if self.config.anneal_per == "epoch":
            epoch = step // steps_per_epoch + 1
            return beta * min(1.0, epoch / self.config.anneal_epochs)
        anneal_steps = self.config.anneal_epochs * steps_per_epoch
        return beta * min(1.0, (step + 1) / anneal_steps)

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "epoch": self.epoch,
            "step": self.step,
            "module_state": self.module.state_dict(),
            "optimizer_state": self.optimizer.state_dict() if self.optimizer else {},
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
            keep = ("format", "version", "epoch", "step", "module_state", "train_config",
                    "metadata", "metrics")  # fmt: skip
            save_atomic({k: state[k] for k in keep}, self.run_dir / BEST_NAME)
        save_atomic(state, self.checkpoint_path)
        write_jsonl_atomic(self.metrics, self.run_dir / METRICS_NAME)

    def load(self, ckpt: dict) -> None:
        """Restore module, counters, metrics from a checkpoint; the optimizer state and the
        RNG state are applied when training starts."""
        try:
            self.module.load_state_dict(ckpt["module_state"])
        except (RuntimeError, KeyError, ValueError) as e:
            raise CheckpointError(f"checkpoint does not match this model: {e}") from e
        self._optimizer_state = ckpt["optimizer_state"]
        self.epoch, self.step = int(ckpt["epoch"]), int(ckpt["step"])
        self.metrics = list(ckpt.get("metrics", []))
        self.best_valid_elbo = float(ckpt.get("best_valid_elbo", -math.inf))
        stopping = ckpt.get("early_stopping") or self._replay_early_stopping()
        self.best_epoch = int(stopping.get("best_epoch", 0))
        self.since_best = int(stopping.get("since_best", 0))
        self.stopped = bool(stopping.get("stopped", False))
        self._rng_state = ckpt["rng"]

    # -- the loop -------------------------------------------------------------------------------
    def fit(
        self,
        train_data: Dataset | torch.Tensor,
        valid_data: torch.Tensor | None = None,
        resume: bool = False,
        on_epoch_end: Callable[[dict], None] | None = None,
    ) -> list[dict]:
        """Train until ``config.epochs`` epochs are complete (or early stopping); returns the
        per-epoch metrics. The module is left in eval mode, ready to be scored.

        :param train_data: a tensor of images, or a Dataset indexed by lists of indices
            that returns a batch (e.g. :class:`pyro_genmodels.data.ImageDataset`).
        :param valid_data: images for the per-epoch validation ELBO and KL.
        :param resume: continue from ``run_dir/checkpoint.pt``.
        :param on_epoch_end: called with each epoch's metrics row, on rank 0.
        """
        if isinstance(train_data, torch.Tensor):
            train_data = _TensorBatches(train_data)
        if len(train_data) == 0:
            raise ValueError("the training set is empty")
        if valid_data is not None and len(valid_data) == 0:
            raise ValueError("the validation set is empty (pass valid_data=None to skip it)")
        if self.config.patience and valid_data is None:
            raise ValueError("early stopping (patience > 0) needs validation data")
        self._check_image_shape(train_data, "training")
        if valid_data is not None:
            self._check_image_shape(valid_data, "validation")
        if resume:
            if self.checkpoint_path is None:
                raise ValueError("resume needs a run_dir")
            self.load(load_checkpoint(self.checkpoint_path, map_location="cpu"))
        self.has_validation = valid_data is not None
        self._on_epoch_end = on_epoch_end
        remaining = self.config.epochs - self.epoch
        if remaining > 0 and not self.stopped:
            with quiet_lightning():
                self._fit_lightning(train_data, valid_data, resume, remaining)
        self.module.eval()  # scored as trained: exact discrete codes, no dropout
        return self.metrics

    def _check_image_shape(self, data, what: str) -> None:
        """Images of another shape (an RGB data set for a grey model) fail here, before any
        process starts, not inside the first step."""
        shape = getattr(self.module, "image_shape", None)
        if shape is None:
            return
        got = tuple(data[[0]].shape[1:])
        if got != tuple(shape):
            kind = {1: "grey", 3: "RGB"}
            which = ""
            if got[0] != shape[0]:
                have, want = (kind.get(c, f"{c}-channel") for c in (got[0], shape[0]))
                which = f" ({have} images for a {want} model)"
            raise ValueError(
                f"the {what} images have shape {got} but the model was built for "
                f"{tuple(shape)}{which}; build the model with image_shape={got}"
            )

    def _fit_lightning(self, train_data, valid_data, resume: bool, remaining: int) -> None:
        from .lightning import SVIModule, make_loaders, release_process_group

        if self.config.compile:
            compile_networks(self.module)

        trainer = self._lightning_trainer(remaining)
        rank, world = trainer.global_rank, trainer.world_size
        cfg = self.config
        train, valid = make_loaders(
            train_data, valid_data, cfg.batch_size, cfg.valid_batch_size, cfg.seed,
            self.epoch, rank, world,
        )  # fmt: skip
        self.steps_per_epoch = len(train)
        if not resume:
            pyro.set_rng_seed(cfg.seed)
        self.module.train()
        handler = signal.getsignal(signal.SIGINT)
        try:
            trainer.fit(SVIModule(self.module, self), train, valid)
        except SystemExit:
            # Lightning turns Ctrl-C into exit(1) with SIGINT ignored; give the caller back
            # its KeyboardInterrupt (the CLI's hint names the checkpoint) and its handler
            signal.signal(signal.SIGINT, handler)
            raise KeyboardInterrupt from None
        release_process_group()

    def _lightning_trainer(self, max_epochs: int):
        import lightning.pytorch as pl

        cfg = self.config
        return pl.Trainer(
            accelerator=self.accelerator,
            devices=cfg.devices,
            num_nodes=cfg.num_nodes,
            strategy=cfg.strategy,
            precision=cfg.precision,
            max_epochs=max_epochs,
            logger=make_logger(cfg.logger, self.run_dir),
            enable_checkpointing=False,  # the run directory is written by end_epoch
            enable_progress_bar=cfg.progress,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            use_distributed_sampler=False,  # our samplers shard (and order) the data
            log_every_n_steps=1,
            default_root_dir=str(self.run_dir) if self.run_dir else None,
        )

    def on_train_start(self, lightning_module) -> None:
        """Every process: the checkpoint's RNG state (rank 0) or a per-rank stream."""
        rank = lightning_module.global_rank
        if self._rng_state is not None and rank == 0:
            set_rng_state(self._rng_state)
        elif rank > 0:
            pyro.set_rng_seed(self.config.seed * 1_000_003 + 7919 * rank + self.epoch)

    def end_epoch(self, lightning_module, row: dict) -> bool:
        """Book an epoch on every process (same numbers everywhere: they are all-reduced);
        rank 0 writes the run directory. Returns whether to stop."""
        best = False
        if self.has_validation:
            best = row["valid_elbo"] > self.best_valid_elbo
            self._early_stopping(row, best)
        self._check_finite(row)
        self.metrics.append(row)
        self.epoch += 1
        if lightning_module.global_rank == 0:
            self.save(best=best)
            if self._on_epoch_end is not None:
                self._on_epoch_end(row)
        return self.stopped

    def validate(self, valid_data: torch.Tensor) -> dict:
        """Validation ELBO and KL per image (beta = 1, no annealing), in nats, in this
        process: what each epoch logs."""
        from .lightning import validation_sums

        if len(valid_data) == 0:
            raise ValueError("the validation set is empty")
        self.module.eval()
        device = next(self.module.parameters()).device
        totals = torch.zeros(3, dtype=torch.float64)
        for start in range(0, len(valid_data), self.config.valid_batch_size):
            x = valid_data[start : start + self.config.valid_batch_size].to(device)
            totals += validation_sums(self.module, x)
        return {
            "valid_elbo": (totals[0] / totals[2]).item(),
            "valid_kl": (totals[1] / totals[2]).item(),
        }

    def diverged_message(self, loss) -> str:
        where = f"epoch {self.epoch + 1}, step {self.step + 1}"
        kept = (
            f"; the last good checkpoint (epoch {self.epoch}) is kept in {self.run_dir}"
            if self.run_dir and self.epoch > 0
            else ""
        )
        return f"the loss became {loss} at {where}{kept}; try a lower --lr or clipped-adam"

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
