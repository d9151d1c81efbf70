"""SVI on PyTorch Lightning: Pyro's ELBO as the loss of a ``LightningModule``.

This is Pyro's documented route to distributed SVI (``examples/svi_lightning.py``):
the ELBO's ``differentiable_loss`` is the training loss, a torch optimizer steps the
module's own parameters (module-local, no global param store), and Lightning's
``Trainer`` does the rest: devices and DDP across GPUs and nodes, mixed precision,
gradient all-reduce, progress bar, loggers. What stays ours is what Lightning does not
know: the run directory of contract item 5 (``checkpoint.pt`` in our format, ``best.pt``,
``metrics.jsonl``, written atomically by rank 0), KL annealing by step, free bits, early
stopping that ignores warm-up epochs, and a data order that is a function of
``(seed, epoch)`` so that ``--resume`` continues exactly.

Sharding: each process draws its part of one global permutation per epoch
(``DistributedSampler`` semantics: ``batch_size`` is per process, the effective batch is
``batch_size * world_size``; the last images of an epoch are repeated to make the shards
equal when ``world_size`` does not divide the training set). Validation is sharded
without repetition and its sums are all-reduced.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import lightning.pytorch as pl
import pyro
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, Sampler

from .config import LatentScale, TrainingDiverged, make_elbo
from .free_bits import FreeBitsELBO
from .importance import log_importance_weights
from .kl import kl_divergence
from .program import probe
from .train import quiet_lightning  # noqa: F401 (for callers of this module)


class EpochOffsetSampler(DistributedSampler):
    """``DistributedSampler`` whose epoch counts from ``offset`` (the epochs a resumed run
    has already done), so that epoch ``e`` of a run always draws the same permutation."""

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int, offset: int):
        super().__init__(dataset, num_replicas, rank, shuffle=True, seed=seed)
        self.offset = int(offset)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(self.offset + int(epoch))


class StridedSampler(Sampler):
    """Indices ``rank, rank + world, ...``: a shard without repetition (for validation)."""

    def __init__(self, n: int, rank: int, world: int):
        self.indices = list(range(rank, n, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class _Batches(BatchSampler):
    """``BatchSampler`` passing Lightning's ``set_epoch`` on to its sampler (Lightning calls
    it on the loader's ``sampler``, which here is this batch sampler)."""

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


def batch_loader(dataset: Dataset, sampler: Sampler, batch_size: int) -> DataLoader:
    """Whole batches by batched indexing (one ``dataset[list]`` per batch), as the in-memory
    data sets of :mod:`pyro_genmodels.data` are fastest read."""
    batches = _Batches(sampler, batch_size, drop_last=False)
    # a private generator: creating an iterator draws a worker seed from it, and the global
    # RNG (checkpointed, restored on resume) must see only the model's draws
    return DataLoader(
        dataset, sampler=batches, batch_size=None, collate_fn=lambda b: b,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip


@torch.no_grad()
def validation_sums(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``[sum of ELBO, sum of KL, count]`` over the images ``x`` (beta = 1, one sample), in
    float64: the sums that the processes of a distributed validation add up."""
    lw = log_importance_weights(module.model, module.guide, x, 1, allow_point_mass=True)
    kl = kl_divergence(module.model, module.guide, x, allow_point_mass=True)
    return torch.tensor([lw.sum().item(), kl.sum().item(), x.shape[0]], dtype=torch.float64)


class SVIModule(pl.LightningModule):
    """Train a module with ``model(x)`` and ``guide(x)`` by SVI, as a ``LightningModule``.

    :param module: the model; its parameters are the optimized ones (``self.net``).
    :param trainer_state: a :class:`~pyro_genmodels.infer.train.Trainer` holding the
        configuration, the counters and what is written to the run directory.
    """

    def __init__(self, module: torch.nn.Module, trainer_state):
        super().__init__()
        self.net = module
        self.state = trainer_state
        self.elbo = None  # built at the first step, when the plate nesting is known
        self._train_sum = self._train_count = 0.0
        self._valid = torch.zeros(3, dtype=torch.float64)  # sum ELBO, sum KL, count

    # -- the loss --------------------------------------------------------------------------
    def _build_elbo(self, x: torch.Tensor) -> None:
        cfg = self.state.config
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the probe leaves the RNG untouched
            nesting = probe(self.net.model, self.net.guide, x, check_estimable=False).nesting
        if cfg.free_bits > 0:
            self.elbo = FreeBitsELBO(cfg.free_bits, cfg.num_particles)
            self.elbo.max_plate_nesting = nesting
        else:
            self.elbo = make_elbo(self.state.objective, cfg.num_particles, nesting)

    def loss(self, x: torch.Tensor, kl_weight: float) -> torch.Tensor:
        """The negative ELBO (the objective's bound) per image, KL scaled by ``kl_weight``."""
        if self.elbo is None:
            self._build_elbo(x)
        model, guide = self.net.model, self.net.guide
        if kl_weight != 1.0:
            model, guide = LatentScale(kl_weight)(model), LatentScale(kl_weight)(guide)
        with pyro.validation_enabled(self.state.config.validate):
            return self.elbo.differentiable_loss(model, guide, x) / x.shape[0]

    def training_step(self, x: torch.Tensor, batch_idx: int) -> torch.Tensor:
        state = self.state
        loss = self.loss(x, state.kl_weight(state.step, state.steps_per_epoch))
        bad = not torch.isfinite(loss).item()
        if self.trainer.strategy.reduce_boolean_decision(bad, all=False):
            raise TrainingDiverged(state.diverged_message(loss.item() if bad else "non-finite"))
        self._train_sum += loss.item() * x.shape[0]
        self._train_count += x.shape[0]
        state.step += 1
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.state.make_optimizer(self.net)

    # -- epochs ----------------------------------------------------------------------------
    def on_train_start(self) -> None:
        self.state.on_train_start(self)

    def on_train_epoch_start(self) -> None:
        self.net.train()
        self._train_sum = self._train_count = 0.0
        self._epoch_start = time.perf_counter()

    def on_validation_epoch_start(self) -> None:
        self._valid = torch.zeros(3, dtype=torch.float64)

    def validation_step(self, x: torch.Tensor, batch_idx: int) -> None:
        self._valid += validation_sums(self.net, x)

    def on_train_epoch_end(self) -> None:
        totals = torch.tensor([self._train_sum, self._train_count], dtype=torch.float64)
        totals = self._all_sum(totals)
        row = {
            "epoch": self.state.epoch + 1,
            "train_loss": (totals[0] / totals[1]).item(),
            "kl_weight": self.state.kl_weight(self.state.step - 1, self.state.steps_per_epoch),
            "objective": self.state.objective,
            "seconds": time.perf_counter() - self._epoch_start,
            "steps": self.state.step,
        }
        if self.state.has_validation:
            valid = self._all_sum(self._valid)
            row.update(
                valid_elbo=(valid[0] / valid[2]).item(), valid_kl=(valid[1] / valid[2]).item()
            )
            self.log("valid_elbo", row["valid_elbo"], sync_dist=True)  # equal on every rank
        self.log("train_loss", row["train_loss"], sync_dist=True)
        if self.state.end_epoch(self, row):
            self.trainer.should_stop = True

    def _all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a float64 vector over processes (identity on one)."""
        if self.trainer.world_size == 1:
            return t
        out = self.trainer.strategy.reduce(t.to(self.device), reduce_op="sum")
        return out.double().cpu()


class BatchEvaluator(pl.LightningModule):
    """Runs ``fn(module, batch)`` on the batches of this process (``Trainer.predict``) and
    gathers every process's results at the end, on every process, in ``results``."""

    def __init__(self, module: torch.nn.Module, fn):
        super().__init__()
        self.net, self.fn, self.results = module, fn, []

    def predict_step(self, batch, batch_idx: int) -> None:
        self.results.append(self.fn(self.net, batch))

    def on_predict_epoch_end(self) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, self.results)
            self.results = [r for part in gathered for r in part]


def release_process_group() -> None:
    """End this process's part in a distributed run: wait for the other processes, then
    destroy the default process group.

    Lightning leaves the group alive after ``fit`` and ``predict`` (to reuse it); a process
    that then exits with gloo's threads still running can abort in C++ teardown
    ("terminate called without an active exception", exit status -6) after its work is done.
    A no-op outside a distributed run.
    """
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def make_loaders(
    train_data: Dataset,
    valid_data: torch.Tensor | None,
    batch_size: int,
    valid_batch_size: int,
    seed: int,
    epoch_offset: int,
    rank: int,
    world: int,
) -> tuple[DataLoader, DataLoader | None]:
    """The training loader (this process's shard of each epoch's permutation) and the
    validation loader (a strided shard)."""
    sampler = EpochOffsetSampler(train_data, world, rank, seed, epoch_offset)
    train = batch_loader(train_data, sampler, batch_size)
    valid = None
    if valid_data is not None:
        valid = batch_loader(_Tensor(valid_data), StridedSampler(len(valid_data), rank, world),
                             valid_batch_size)  # fmt: skip
    return train, valid


class _Tensor(Dataset):
    def __init__(self, data: torch.Tensor):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index):
        return self.data[index]
