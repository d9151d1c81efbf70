"""Training settings and objectives: ``TrainConfig``, the ELBO for an objective name, the
accelerator and logger handed to Lightning, and KL scaling for beta and annealing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import pyro
import torch
from pyro.poutine.scale_messenger import ScaleMessenger

from .hints import hint
from .iwae import IWAE_ELBO


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
Optimizer = Literal["adam", "clipped-adam", "adam-normgrad"]
Device = Literal["auto", "cpu", "cuda"]
AnnealPer = Literal["step", "epoch"]
Accelerator = Literal["auto", "cpu", "gpu"]
Precision = Literal["32", "16-mixed", "bf16-mixed"]
LoggerName = Literal["none", "csv", "tensorboard"]
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


def resolve_accelerator(config: TrainConfig) -> str:
    """Lightning's accelerator from ``accelerator`` and the older ``device`` setting.

    :raises ValueError: the two disagree, GPUs asked for without CUDA, or an unknown
        strategy.
    """
    accelerator = config.accelerator
    if config.device != "auto":
        implied = {"cpu": "cpu", "cuda": "gpu"}[config.device]
        if accelerator not in ("auto", implied):
            raise ValueError(
                f"--device {config.device} and --accelerator {accelerator} disagree; give one"
            )
        accelerator = implied
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise ValueError("--accelerator gpu was requested but no CUDA device is available")
    if accelerator == "gpu" and config.devices > torch.cuda.device_count():
        raise ValueError(
            f"--devices {config.devices} GPUs requested but {torch.cuda.device_count()} available"
        )
    from lightning.pytorch.strategies import StrategyRegistry

    strategies = ["auto", *StrategyRegistry.available_strategies()]
    if config.strategy not in strategies:
        raise ValueError(f"unknown strategy {config.strategy!r}; valid: {', '.join(strategies)}")
    return accelerator


def make_logger(name: str, run_dir: Path | None):
    """Lightning's logger for ``name`` (``none``: False), writing under ``run_dir``."""
    if name == "none":
        return False
    if run_dir is None:
        raise ValueError(f"--logger {name} needs a run directory")
    from lightning.pytorch import loggers

    if name == "csv":
        return loggers.CSVLogger(str(run_dir), name="lightning_logs")
    try:
        return loggers.TensorBoardLogger(str(run_dir), name="lightning_logs")
    except ModuleNotFoundError as e:
        raise ValueError(f"--logger tensorboard needs the tensorboard package ({e})") from None


@dataclass
class TrainConfig:
    epochs: int = 10  # most passes over the training data (with --resume: the total to reach)
    patience: int = 0  # stop after this many epochs without a better validation ELBO (0: off)
    batch_size: int = 128  # minibatch size
    lr: float = 1e-3  # learning rate
    optimizer: Optimizer = "adam"  # clipped-adam: Pyro's, norms clipped; adam-normgrad: normalized
    clip_norm: float = 10.0  # clipped-adam only
    objective: Objective = "auto"  # iwae: K = num_particles; auto: the model's choice
    num_particles: int = 1  # particles per ELBO estimate (vectorized); K for "iwae"
    beta: float = 1.0  # KL weight (beta-VAE)
    anneal_epochs: float = 0.0  # linear KL annealing from ~0 to beta over this many epochs
    anneal_per: AnnealPer = "step"  # warm-up: per step, or per epoch (beta * e / anneal_epochs)
    free_bits: float = 0.0  # KL floor in nats per latent dimension (0: off); elbo objective
    seed: int = 0  # random seed (initial weights, batches, samples)
    device: Device = "auto"  # auto: CUDA when available, else CPU (or use --accelerator)
    accelerator: Accelerator = "auto"  # Lightning's: auto (a GPU when available), cpu, gpu
    devices: int = 1  # processes per node (GPUs, or CPU processes); batch_size is per process
    num_nodes: int = 1  # machines (each runs --devices processes)
    strategy: str = "auto"  # Lightning's: auto, ddp, ddp_spawn, ... (several devices: ddp)
    precision: Precision = "32"  # 32, 16-mixed or bf16-mixed (autocast; the ELBO sums in fp32)
    logger: LoggerName = "none"  # also log to RUN_DIR/lightning_logs: csv or tensorboard
    valid_batch_size: int = 500  # images per validation batch
    validate: bool = True  # Pyro's argument and shape checks (off: ~10% faster steps)
    compile: bool = False  # torch.compile the model's networks (first step slower; see README)
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
        for key, kind in (("accelerator", Accelerator), ("precision", Precision),
                          ("logger", LoggerName)):  # fmt: skip
            valid = get_args(kind)
            if getattr(self, key) not in valid:
                raise ValueError(f"unknown {key} {getattr(self, key)!r}; valid: {', '.join(valid)}")
        for key in (
            "epochs", "batch_size", "num_particles", "valid_batch_size", "patience", "devices",
            "num_nodes",
        ):  # fmt: skip
            value = getattr(self, key)
            low = 0 if key == "patience" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                kind = "a non-negative" if low == 0 else "a positive"
                raise ValueError(f"{key} must be {kind} integer, got {value!r}")
        if self.anneal_per not in get_args(AnnealPer):
            valid = ", ".join(get_args(AnnealPer))
            raise ValueError(f"unknown anneal_per {self.anneal_per!r}; valid: {valid}")
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not self.free_bits >= 0:
            raise ValueError(f"free_bits must be >= 0, got {self.free_bits}")
        if self.free_bits > 0 and self.objective not in ("auto", "elbo"):
            raise ValueError(f"free bits replace the elbo objective; got {self.objective!r}")
