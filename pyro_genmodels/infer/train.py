"""Train a module by SVI on PyTorch Lightning: :func:`fit`.

:class:`~pyro_genmodels.infer.lightning.SVIModule` holds the run (its loss is Pyro's
``elbo.differentiable_loss(model, guide, x)``, a ``torch.optim`` optimizer steps the
module's own parameters); ``lightning.pytorch.Trainer`` runs the loop with its own
``ModelCheckpoint`` (``checkpoint.pt`` every epoch, ``best.pt`` at the best validation
ELBO) and ``EarlyStopping``, and resumes through ``fit(ckpt_path=...)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyro
import torch
from torch.utils.data import Dataset

from .checkpoint import CheckpointError, load_checkpoint
from .config import TrainConfig, make_logger, resolve_accelerator

CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"  # the module at the best validation ELBO so far (model selection)
METRICS_NAME = "metrics.jsonl"


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
            # checkpoint.pt and best.pt are rewritten in place every epoch, by design
            warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not")
            # the epoch's values are torchmetrics' sums over all processes already
            warnings.filterwarnings("ignore", message="It is recommended to use `self.log\\(")
            # evaluate's predict loop keeps its results in the module, returning None
            warnings.filterwarnings("ignore", message="predict returned None if it was on")
            yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


def fit(
    module: torch.nn.Module,
    train_data: Dataset | torch.Tensor,
    valid_data: torch.Tensor | None = None,
    config: TrainConfig | None = None,
    run_dir: str | Path | None = None,
    metadata: dict | None = None,
    resume: bool = False,
    on_epoch_end: Callable[[dict], None] | None = None,
    **config_kwargs: Any,
) -> list[dict]:
    """Train ``module`` (with ``model(x)`` and ``guide(x)`` methods) by SVI until
    ``config.epochs`` epochs are complete or early stopping; keyword arguments fill a
    :class:`TrainConfig`. Returns the per-epoch metrics; the module is left where it was,
    in eval mode.

    :param train_data: a tensor of images, or a Dataset indexed by lists of indices that
        returns a batch (e.g. :class:`pyro_genmodels.data.ImageDataset`).
    :param valid_data: images for the per-epoch validation ELBO and KL.
    :param run_dir: where ``checkpoint.pt``, ``best.pt`` and ``metrics.jsonl`` go (None:
        nowhere), written by rank 0 with the directory locked.
    :param metadata: opaque data stored in every checkpoint (model name, config, data).
    :param resume: continue from ``run_dir/checkpoint.pt`` (loops, optimizer, RNG).
    :param on_epoch_end: called with each epoch's metrics row, on rank 0.

    >>> fit(vae, train_images, valid_images, epochs=5, beta=1.0)  # doctest: +SKIP
    """
    from .lightning import SVIData, SVIModule

    if config is None:
        config = TrainConfig(**config_kwargs)
    elif config_kwargs:
        config = dataclasses.replace(config, **config_kwargs)
    run_dir = Path(run_dir) if run_dir is not None else None
    svi = SVIModule(module, config, metadata)  # resolves and checks the objective
    _check_data(module, train_data, valid_data, config)
    ckpt_path = None
    if resume:
        ckpt_path = resumable(run_dir)
        history = load_checkpoint(ckpt_path)["metrics"]
        if finished(history, config):
            return history
    device = next(module.parameters(), torch.empty(0)).device
    with quiet_lightning():
        trainer = _trainer(config, run_dir, on_epoch_end, has_validation=valid_data is not None)
        if config.compile:
            compile_networks(module)
        if not resume:
            pyro.set_rng_seed(config.seed)
        data = SVIData(train_data, valid_data, config.batch_size, config.valid_batch_size,
                       config.seed)  # fmt: skip
        module.train()
        try:
            with lightning_errors(trainer):
                trainer.fit(svi, datamodule=data, ckpt_path=ckpt_path, weights_only=False)
        finally:
            module.to(device)  # Lightning's teardown moves the module to the CPU
    module.eval()  # scored as trained: exact discrete codes, no dropout
    return svi.history


@contextlib.contextmanager
def lightning_errors(trainer):
    """Around a call of ``trainer`` (``fit``, ``predict``), in every process of the run.

    - Ctrl-C, which Lightning turns into ``exit(1)`` with SIGINT ignored, comes back as
      ``KeyboardInterrupt`` with the caller's SIGINT handler (the CLI's one line names what
      was saved); an error that Lightning's teardown masked comes back as itself.
    - A Ctrl-C in a terminal reaches every process of a multi-process run. The processes
      Lightning launches never see it (:class:`~.distributed.HeldInterrupt`; one pressed
      while they start is raised once all have joined the run): the first process stops
      them (Lightning kills them), and then Lightning's observer of those processes, which
      kills the first one too (SIGKILL) when it sees them gone, is given none to watch.
    - The process leaves the distributed run at the end (Lightning keeps its process group),
      waiting for the others only when the call succeeded.
    """
    from .distributed import HeldInterrupt, release_process_group

    handler = signal.getsignal(signal.SIGINT)
    held = HeldInterrupt()
    if trainer.local_rank > 0:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    elif hasattr(trainer.strategy.launcher, "procs") and trainer.world_size > 1:
        held.hold()  # until every process has joined
        trainer.callbacks.append(held)
    try:
        yield
    except BaseException as raised:  # noqa: BLE001 - re-raised, unmasked
        launcher = trainer.strategy.launcher
        children = getattr(launcher, "procs", None)
        if children:  # Lightning kills them on Ctrl-C only (on an error they fail on their own)
            launcher.kill(signal.SIGKILL)
            for child in children:
                child.wait()
            children.clear()
        release_process_group(wait=False)
        error = _unmasked(raised)
        if isinstance(error, SystemExit | KeyboardInterrupt):
            raise KeyboardInterrupt from None
        if error is raised:
            raise
        raise error from None  # its own traceback, without Lightning's teardown
    else:
        release_process_group()
    finally:
        held.release(raise_pressed=False)
        signal.signal(signal.SIGINT, handler)
        if held in trainer.callbacks:
            trainer.callbacks.remove(held)


def _unmasked(error: BaseException) -> BaseException:
    """The exception that stopped ``Trainer.fit``: the one ``error`` was raised over when
    Lightning's teardown failed while handling it (its data fetcher asks the length of a
    loader whose iterator the exception left uncreated: ``Please call iter(combined_loader)
    first``), else ``error``."""
    frames = traceback.extract_tb(error.__traceback__)
    if error.__context__ is not None and any(f.name == "_teardown" for f in frames):
        return error.__context__
    return error


def resumable(run_dir: Path | None) -> Path:
    """``run_dir/checkpoint.pt``, checked to be one ``fit`` can resume."""
    if run_dir is None:
        raise ValueError("resume needs a run_dir")
    path = run_dir / CHECKPOINT_NAME
    ckpt = load_checkpoint(path)
    if ckpt["version"] < 2:
        raise CheckpointError(
            f"{path} is in checkpoint format {ckpt['version']} (before pyro-genmodels moved "
            "onto Lightning's checkpoints): it evaluates, samples and plots, but cannot resume"
        )
    return path


def finished(history: list[dict], config: TrainConfig) -> bool:
    """Whether a run with these metrics has nothing left to train under ``config``."""
    return bool(history) and (history[-1]["epoch"] >= config.epochs
                              or bool(history[-1].get("stopped_early")))  # fmt: skip


def _trainer(config: TrainConfig, run_dir: Path | None, on_epoch_end, has_validation: bool):
    import lightning.pytorch as pl

    from .lightning import ProgressBar, RunCheckpoint, RunDirectory, WarmupEarlyStopping

    if config.patience and not has_validation:
        raise ValueError("early stopping (patience > 0) needs validation data")
    callbacks = []
    if run_dir is not None:
        every = dict(dirpath=run_dir, save_on_train_epoch_end=True, enable_version_counter=False)
        callbacks.append(RunCheckpoint(filename="checkpoint", **every))
        if has_validation:
            callbacks.append(RunCheckpoint(filename="best", monitor="valid_elbo", mode="max",
                                             save_weights_only=True, **every))  # fmt: skip
    if config.patience:
        callbacks.append(WarmupEarlyStopping(config.patience, config.anneal_epochs))
    callbacks.append(RunDirectory(run_dir, on_epoch_end))
    if config.progress:
        callbacks.append(ProgressBar())
    return pl.Trainer(
        accelerator=resolve_accelerator(config),
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        precision=config.precision,
        max_epochs=config.epochs,
        logger=make_logger(config.logger, run_dir),
        callbacks=callbacks,
        enable_progress_bar=config.progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=None if has_validation else 0,
        use_distributed_sampler=False,  # SVIData shards (and orders) the data
        log_every_n_steps=1,
        default_root_dir=str(run_dir) if run_dir else None,
    )


def _check_data(module, train_data, valid_data, config: TrainConfig) -> None:
    """The checks that run once, before any process starts: sizes, and the model's own data
    checks (shape, values) on each set (the steps then run without per-call checks unless
    ``config.validate``)."""
    if len(train_data) == 0:
        raise ValueError("the training set is empty")
    if valid_data is not None and len(valid_data) == 0:
        raise ValueError("the validation set is empty (pass valid_data=None to skip it)")
    check = getattr(module, "check_input", None)
    for what, data in (("training", train_data), ("validation", valid_data)):
        for start in range(0, len(data), 10_000) if check and data is not None else ():
            try:
                with pyro.validation_enabled(True):
                    check(data[list(range(start, min(len(data), start + 10_000)))])
            except ValueError as e:
                raise ValueError(f"the {what} images: {e}") from None
