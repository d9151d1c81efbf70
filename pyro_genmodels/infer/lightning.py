"""SVI on PyTorch Lightning: Pyro's ELBO as the loss of a ``LightningModule``.

Pyro's documented route to distributed SVI (``examples/svi_lightning.py``): the ELBO's
``differentiable_loss`` is the training loss and a torch optimizer steps the module's own
parameters. :class:`SVIModule` is the one object holding the run's state (the objective,
the per-epoch metrics, the RNG in its checkpoints); Lightning's loops, ``ModelCheckpoint``
and ``EarlyStopping`` do the rest, and :class:`RunDirectory` writes ``metrics.jsonl``.

Sharding: each process reads its part of one permutation per epoch (``DistributedSampler``
seeded by the run's seed, so ``--resume`` continues exactly; ``batch_size`` is per
process); validation is sharded without repetition and summed by torchmetrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import platform
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pyro
import torch
import torchmetrics
from lightning.pytorch.callbacks import Checkpoint, EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from .checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    RunLock,
    get_rng_state,
    set_rng_state,
    write_jsonl_atomic,
)
from .config import (
    LatentScale,
    TrainConfig,
    TrainingDiverged,
    kl_weight,
    make_elbo,
    resolve_objective,
)
from .disentangle import Discriminator, capacity_at
from .importance import log_importance_weights
from .kl import kl_divergence
from .optim import AdamNormGrad
from .program import probe

CHECK_EVERY = 50  # steps between the checks that the loss is finite (each one a host sync)
PROGRESS_EVERY = 20  # steps between the losses shown by the progress bar


class SVIModule(pl.LightningModule):
    """Train ``module`` (with ``model(x)`` and ``guide(x)``) by SVI with ``config``.

    :param metadata: opaque data stored in every checkpoint (model name, config, data).

    ``history`` holds one row per completed epoch; it travels in the state dict (extra
    state), hence in every checkpoint.
    """

    def __init__(self, module: torch.nn.Module, config: TrainConfig, metadata: dict | None = None):
        super().__init__()
        self.net, self.config, self.metadata = module, config, dict(metadata or {})
        self.objective = resolve_objective(config, module)
        self.elbo = None  # built at the first step, when the plate nesting is known
        self.discriminator = None
        if self.objective == "factor-vae":  # a module of the run: checkpointed, moved, synced
            latent_dim = getattr(module, "latent_dim", None)
            if not isinstance(latent_dim, int):
                raise ValueError("factor-vae needs a model with an integer latent_dim")
            self.discriminator = Discriminator(latent_dim, config.factor_hidden)
        self.history: list[dict] = []
        self.train_loss = torchmetrics.MeanMetric(nan_strategy="disable")
        self.valid_elbo = torchmetrics.MeanMetric(nan_strategy="disable")
        self.valid_kl = torchmetrics.MeanMetric(nan_strategy="disable")
        self._rng: dict | None = None  # from a checkpoint, applied when training starts
        self._first_bad: torch.Tensor | None = None  # first non-finite loss's step, or -1

    def get_extra_state(self) -> dict:
        return {"metrics": self.history}

    def set_extra_state(self, state: dict) -> None:
        self.history = list(state.get("metrics", []))

    # -- the loss --------------------------------------------------------------------------
    def loss(self, x: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        """The objective's negative bound per image, the KL scaled by ``weight``."""
        if self.elbo is None:
            devices = [x.device] if x.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):  # the probe leaves the RNG untouched
                nesting = probe(self.net.model, self.net.guide, x, check_estimable=False).nesting
            cfg = self.config
            size = len(self.trainer.datamodule.train) if self._trainer is not None else None
            self.elbo = make_elbo(self.objective, cfg.num_particles, nesting, cfg.free_bits,
                                  size, cfg)  # fmt: skip
            if self.discriminator is not None:
                self.elbo.discriminator = self.discriminator
        model, guide = self.net.model, self.net.guide
        if self.objective == "beta-tcvae":
            self.elbo.beta = weight  # beta weighs the total correlation
        elif self.objective == "annealed":
            steps = self.trainer.num_training_batches if self._trainer is not None else 1
            cfg = self.config
            self.elbo.capacity = capacity_at(cfg.capacity, cfg.capacity_epochs * steps,
                                             self.global_step)  # fmt: skip
        elif weight != 1.0:
            model, guide = LatentScale(weight)(model), LatentScale(weight)(guide)
        with pyro.validation_enabled(self.config.validate):
            return self.elbo.differentiable_loss(model, guide, x) / x.shape[0]

    def training_step(self, x: torch.Tensor, batch_idx: int) -> torch.Tensor:
        steps = self.trainer.num_training_batches
        loss = self.loss(x, kl_weight(self.config, self.global_step, steps))
        detached = loss.detach()
        self.train_loss.update(detached, x.shape[0])
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, device=loss.device)
        self._first_bad = torch.where(
            (self._first_bad < 0) & ~torch.isfinite(detached), self.global_step, self._first_bad
        )
        if (batch_idx + 1) % CHECK_EVERY == 0 or batch_idx + 1 == steps:
            self._check_loss()
        if self.config.progress and batch_idx % PROGRESS_EVERY == 0:  # self.log costs ~1 ms
            self.log("loss", detached, prog_bar=True, logger=False)
        return loss

    def _check_loss(self) -> None:
        """Raise :class:`TrainingDiverged` (on every process) if a loss was not finite."""
        bad = bool(self._first_bad >= 0)
        if self.trainer.strategy.reduce_boolean_decision(bad, all=False):
            step = int(self._first_bad) + 1 if bad else "?"
            raise TrainingDiverged(
                f"the loss became NaN or infinite in epoch {self.current_epoch + 1}, step "
                f"{step}{self._kept()}; try a lower --lr or --optimizer clipped-adam"
            )

    def _kept(self) -> str:
        where = getattr(self.trainer.checkpoint_callback, "dirpath", None)
        if not (self.history and where):
            return ""
        return f"; the last good checkpoint (epoch {len(self.history)}) is kept in {where}"

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.net.parameters() if p.requires_grad]
        cfg = self.config
        if cfg.optimizer == "adam-normgrad":
            return AdamNormGrad(params, lr=cfg.lr)
        if cfg.optimizer == "clipped-adam":
            from pyro.optim.clipped_adam import ClippedAdam

            return ClippedAdam(params, lr=cfg.lr, clip_norm=cfg.clip_norm)
        groups = [{"params": params}]
        if self.discriminator is not None:  # FactorVAE's, at the rate and betas of the paper
            groups.append({"params": list(self.discriminator.parameters()), "lr": cfg.factor_lr,
                           "betas": (0.5, 0.9)})  # fmt: skip
        return torch.optim.Adam(groups, lr=cfg.lr, fused=self.device.type in ("cpu", "cuda"))

    # -- validation ------------------------------------------------------------------------
    @torch.no_grad()
    def validation_step(self, x: torch.Tensor, batch_idx: int) -> None:
        """Per-image ELBO (one sample, beta = 1) and KL, in nats, in the parameters' dtype
        (never under the autocast of a mixed-precision run: these are the numbers that pick
        ``best.pt``)."""
        net = self.net
        with torch.autocast(self.device.type, enabled=False):
            elbo = log_importance_weights(net.model, net.guide, x, 1, allow_point_mass=True)
            kl = kl_divergence(net.model, net.guide, x, allow_point_mass=True)
        self.valid_elbo.update(elbo)
        self.valid_kl.update(kl)

    # -- epochs ----------------------------------------------------------------------------
    def on_train_start(self) -> None:
        """The checkpoint's RNG state on rank 0, a stream of its own on every other rank."""
        if self._rng is not None and self.global_rank == 0:
            set_rng_state(self._rng, self.device)
        elif self.global_rank > 0:
            pyro.set_rng_seed(self.config.seed * 1_000_003 + 7919 * self.global_rank
                              + self.current_epoch)  # fmt: skip

    def on_train_epoch_start(self) -> None:
        self.net.train()
        self._first_bad = None
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        """Book the epoch (before the checkpoint callbacks run): the metrics row, and a
        :class:`TrainingDiverged` instead of a checkpoint of non-finite parameters."""
        steps = self.trainer.num_training_batches
        row = {
            "epoch": self.current_epoch + 1,
            "train_loss": self.train_loss.compute().item(),
            "kl_weight": kl_weight(self.config, self.global_step - 1, steps),
            "objective": self.objective,
            "seconds": time.perf_counter() - self._epoch_start,
            "steps": self.global_step,
            "hardware": hardware(self.device, self.trainer.world_size),
            "precision": str(self.trainer.precision),
            "compiled": self.config.compile,
        }
        self.train_loss.reset()
        if self.valid_elbo.update_count:  # validation ran this epoch
            row.update(valid_elbo=self.valid_elbo.compute().item(),
                       valid_kl=self.valid_kl.compute().item())  # fmt: skip
            self.valid_elbo.reset(), self.valid_kl.reset()
        bad = [n for n, p in self.net.named_parameters() if not torch.isfinite(p).all()]
        if bad or not math.isfinite(row.get("valid_elbo", 0.0)):
            what = f"parameter {bad[0]!r}" if bad else "the validation ELBO"
            raise TrainingDiverged(
                f"{what} became NaN or infinite in epoch {row['epoch']}{self._kept()}; "
                "try a lower --lr or --optimizer clipped-adam"
            )
        if "valid_elbo" in row:
            best = max(self.history + [row], key=lambda r: r.get("valid_elbo", -math.inf))
            row["best_epoch"] = best["epoch"]
            self.log("valid_elbo", row["valid_elbo"], prog_bar=True, logger=self._logs)
        self.history.append(row)
        self.log("train_loss", row["train_loss"], logger=self._logs)

    @property
    def _logs(self) -> bool:
        return self.trainer.logger is not None

    # -- checkpoints -----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint.update(
            format=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION, metadata=self.metadata,
            train_config=dataclasses.asdict(self.config), rng=get_rng_state(self.device),
        )  # fmt: skip

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._rng = checkpoint.get("rng")


def hardware(device: torch.device, processes: int = 1) -> str:
    """What an epoch ran on, for its metrics row: the GPU's name or the CPU's architecture and
    cores, times the processes."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{device.type} ({platform.machine()}, {os.cpu_count()} cores)"
    return name if processes == 1 else f"{processes} x {name}"


class _Batches(Dataset):
    """Images (a tensor, or a Dataset whose ``data[list_of_indices]`` is a batch) read one
    batch per indexing (``__getitems__``), not one image at a time."""

    def __init__(self, data):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index):
        return self.data[index]

    def __getitems__(self, indices):
        return self.data[indices]


def _whole(batch):
    """The collate function of batches read whole (picklable, unlike a lambda)."""
    return batch


class SVIData(pl.LightningDataModule):
    """Each process's shard of the training permutation of each epoch (seeded by ``seed``,
    drawn again per epoch by Lightning's ``set_epoch``), and an unrepeated validation shard.

    :param train: images, or a Dataset whose ``dataset[list_of_indices]`` is a batch.
    """

    def __init__(self, train, valid, batch_size: int, valid_batch_size: int, seed: int):
        super().__init__()
        self.train, self.valid = _Batches(train), None if valid is None else _Batches(valid)
        self.batch_size, self.valid_batch_size, self.seed = batch_size, valid_batch_size, seed

    def _loader(self, data, sampler, batch_size: int) -> DataLoader:
        # batch_sampler (not sampler=BatchSampler(...), batch_size=None): Lightning's per-epoch
        # set_epoch finds the DistributedSampler only there. A private generator: creating an
        # iterator draws a seed from it, and the global RNG (checkpointed, restored on
        # resume) must see only the model's draws
        return DataLoader(
            data, batch_sampler=BatchSampler(sampler, batch_size, drop_last=False),
            collate_fn=_whole, generator=torch.Generator().manual_seed(0),
        )  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(self.train, world, rank, shuffle=True, seed=self.seed)
        return self._loader(self.train, sampler, self.batch_size)

    def val_dataloader(self) -> DataLoader | list:
        if self.valid is None:
            return []
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = UnrepeatedDistributedSampler(self.valid, world, rank, shuffle=False)
        return self._loader(self.valid, sampler, self.valid_batch_size)


class WarmupEarlyStopping(EarlyStopping):
    """Lightning's ``EarlyStopping`` on the validation ELBO, except that epochs before the
    KL weight reaches beta (``anneal_epochs``) do not count towards the patience (as in
    Tomczak & Welling's code: the ELBO is not comparable across weights). It records its
    counter in the epoch's metrics row."""

    def __init__(self, patience: int, warmup_epochs: float):
        super().__init__(monitor="valid_elbo", mode="max", patience=patience,
                         check_on_train_epoch_end=True, verbose=False)  # fmt: skip
        self.warmup_epochs = float(warmup_epochs)

    def load_state_dict(self, state_dict: dict) -> None:
        patience = self.patience  # --resume --patience N: the new N, not the checkpoint's
        super().load_state_dict(state_dict)
        self.patience = patience

    def _run_early_stopping_check(self, trainer) -> None:
        wait = self.wait_count
        super()._run_early_stopping_check(trainer)
        row = trainer.lightning_module.history[-1]
        if row["epoch"] < self.warmup_epochs and self.wait_count > wait:
            self.wait_count = wait  # not an epoch at full weight: no count
        row["epochs_since_best"] = self.wait_count
        if trainer.should_stop:
            row["stopped_early"] = True


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` writing ``RUN_DIR/NAME.pt``. A run directory that
    moved (copied to another machine, or another folder) resumes with its best score:
    Lightning's own forgets it when the directory's path changed, and the first epoch after
    such a resume would replace ``best.pt`` whatever its ELBO."""

    FILE_EXTENSION = ".pt"

    def load_state_dict(self, state_dict: dict) -> None:
        def here(path):
            return str(Path(self.dirpath) / Path(path).name) if path else path

        state = {
            **state_dict,
            "dirpath": self.dirpath,
            "best_k_models": {here(k): v for k, v in state_dict.get("best_k_models", {}).items()},
        }
        for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
            if key in state:
                state[key] = here(state[key])
        super().load_state_dict(state)


class RunDirectory(Checkpoint):
    """Writes ``metrics.jsonl`` after each epoch's checkpoints (it is a ``Checkpoint`` so
    that Lightning calls it after the module's epoch end, with the checkpoint callbacks),
    holds the run directory's lock while training, and hands each new metrics row to
    ``on_epoch_end`` on rank 0."""

    def __init__(self, run_dir=None, on_epoch_end=None):
        self.run_dir, self.on_epoch_end = run_dir, on_epoch_end
        self.lock = RunLock(run_dir) if run_dir is not None else None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.lock is not None and trainer.is_global_zero:
            self.lock.acquire()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self.lock is not None:
            self.lock.release()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "fit")  # Ctrl-C and errors skip teardown

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        if self.run_dir is not None:
            write_jsonl_atomic(pl_module.history, self.run_dir / "metrics.jsonl")
        if self.on_epoch_end is not None:
            self.on_epoch_end(pl_module.history[-1])


class ProgressBar(TQDMProgressBar):
    """Lightning's progress bar on stderr (``train > log`` keeps the log clean), counting
    epochs from 1 as the metrics rows do."""

    def init_train_tqdm(self):
        with contextlib.redirect_stdout(sys.stderr):  # Lightning's bars write to sys.stdout
            return super().init_train_tqdm()

    def init_validation_tqdm(self):
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_validation_tqdm()

    def on_train_epoch_start(self, trainer, *_) -> None:
        super().on_train_epoch_start(trainer)
        self.train_progress_bar.set_description(f"epoch {trainer.current_epoch + 1}")
