"""Training settings and objectives: ``TrainConfig``, the ELBO for an objective name, the
accelerator and logger handed to Lightning, and the KL weight for beta and annealing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args, get_origin, get_type_hints

import pyro
import torch
from pyro.poutine.scale_messenger import ScaleMessenger

from .elbo import TraceELBO, TraceEnumELBO
from .free_bits import FreeBitsELBO
from .hints import hint
from .iwae import IWAE_ELBO
from .meanfield import MeanFieldELBO


class TrainingDiverged(RuntimeError):
    """The loss or a parameter became NaN or infinite; the last good checkpoint is kept."""


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
        "elbo": lambda n, fb: TraceELBO(num_particles=n, vectorize_particles=n > 1),
        "meanfield": lambda n, fb: MeanFieldELBO(num_particles=n, vectorize_particles=n > 1),
        # the IWAE bound of Burda et al.: log (1/K) sum_k w_k over K vectorized particles
        "iwae": lambda n, fb: IWAE_ELBO(num_particles=n),
        # discrete model sites marked for enumeration are summed out exactly
        "enum": lambda n, fb: TraceEnumELBO(num_particles=n, vectorize_particles=n > 1),
        # Trace_ELBO with a KL floor of free_bits nats per latent dimension
        "free-bits": lambda n, fb: FreeBitsELBO(fb, num_particles=n),
    }


Objective = Literal[
    "auto", "elbo", "meanfield", "iwae", "enum", "free-bits", "beta-tcvae", "factor-vae",
    "dip-vae-i", "dip-vae-ii", "annealed",
]  # fmt: skip
#: the objectives for disentangled representations (``infer.disentangle``): one particle,
#: and a model whose own objective is a Trace_ELBO
DISENTANGLING = ("beta-tcvae", "factor-vae", "dip-vae-i", "dip-vae-ii", "annealed")
Optimizer = Literal["adam", "clipped-adam", "adam-normgrad"]
AnnealPer = Literal["step", "epoch"]
Accelerator = Literal["auto", "cpu", "gpu", "cuda"]  # cuda: the same as gpu
Precision = Literal["32", "16-mixed", "bf16-mixed"]
LoggerName = Literal["none", "csv", "tensorboard"]
#: "auto" asks the module (``module.default_objective``), else uses "elbo"
OBJECTIVES: tuple[str, ...] = get_args(Objective)
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
#: strategies whose worker processes cannot hand the run's state back to the caller
SPAWNING_STRATEGIES = ("ddp_spawn", "ddp_fork", "ddp_notebook")


def make_elbo(
    objective: str,
    num_particles: int = 1,
    max_plate_nesting: int | None = None,
    free_bits: float = 0.0,
    dataset_size: int | None = None,
    config: TrainConfig | None = None,
) -> pyro.infer.ELBO:
    """The Pyro ELBO for an objective name: ``elbo`` (Trace_ELBO), ``meanfield``
    (:class:`MeanFieldELBO`: TraceMeanField_ELBO, analytic KL where registered), ``iwae``
    (RenyiELBO with alpha=0), ``enum`` (TraceEnum_ELBO), ``free-bits`` (:class:`FreeBitsELBO` with a
    floor of ``free_bits`` nats per latent dimension), or one of
    :mod:`~pyro_genmodels.infer.disentangle`'s: ``beta-tcvae`` (for minibatches of a data
    set of ``dataset_size`` images), ``factor-vae`` (its discriminator set by the trainer),
    ``dip-vae-i``, ``dip-vae-ii`` and ``annealed``, with
    the weights of ``config`` (beta and the capacity are set by the trainer at each step)."""
    from .disentangle import DIPVAE_ELBO, TCVAE_ELBO, AnnealedELBO, FactorVAE_ELBO

    c = config or TrainConfig()
    table = _elbo_objectives()
    table["beta-tcvae"] = lambda n, fb: TCVAE_ELBO(dataset_size, c.tc_alpha, 1.0, c.tc_gamma)
    table["dip-vae-i"] = lambda n, fb: DIPVAE_ELBO("i", c.dip_lambda_od, c.dip_lambda_d)
    table["dip-vae-ii"] = lambda n, fb: DIPVAE_ELBO("ii", c.dip_lambda_od, c.dip_lambda_d)
    table["annealed"] = lambda n, fb: AnnealedELBO(c.capacity_gamma)
    table["factor-vae"] = lambda n, fb: FactorVAE_ELBO(c.factor_gamma)
    if objective not in table:
        raise ValueError(f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVES)}")
    if int(num_particles) < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    if objective == "free-bits" and not free_bits > 0:
        raise ValueError(f"the free-bits objective needs free_bits > 0, got {free_bits}")
    if objective in DISENTANGLING and int(num_particles) != 1:
        raise ValueError(f"{objective} takes one particle, got num_particles={num_particles}")
    elbo = table[objective](int(num_particles), float(free_bits))
    if max_plate_nesting is not None:  # spares Pyro's guess (and its log line)
        extra = 1 if elbo.vectorize_particles and elbo.num_particles > 1 else 0
        elbo.max_plate_nesting = int(max_plate_nesting) + extra
    return elbo


def resolve_objective(config: TrainConfig | str, module) -> str:
    """The objective a module trains with: ``"auto"`` asks the module (``free-bits`` when
    ``free_bits > 0``), and the choice is checked against the module's hints."""
    config = TrainConfig(objective=config) if isinstance(config, str) else config
    objective = config.objective
    default = hint(module, "default_objective")
    if objective == "auto":
        objective = "free-bits" if config.free_bits > 0 else default
    if objective not in OBJECTIVES[1:]:
        raise ValueError(f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVES)}")
    if hint(module, "requires_enumeration") and objective != "enum":
        raise ValueError(
            f"this model has an enumerated discrete site (e.g. the GMVAE cluster); "
            f"objective {objective!r} cannot sum it out: use objective 'enum' (or 'auto')"
        )
    if objective == "free-bits" and default not in ("elbo", "meanfield"):
        raise ValueError(
            f"free bits replace a Trace_ELBO objective; this model trains with {default!r}"
        )
    if objective in DISENTANGLING and default not in ("elbo", "meanfield"):
        raise ValueError(
            f"{objective} replaces a Trace_ELBO objective; this model trains with {default!r}"
        )
    return objective


def kl_weight(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """beta at optimizer step ``step`` (0-based), linearly annealed over ``anneal_epochs``.

    ``anneal_per="step"`` raises it at every step, reaching beta at the last step of epoch
    ``anneal_epochs``; ``"epoch"`` holds ``beta * e / anneal_epochs`` through epoch ``e``
    (1-based), the schedule of Tomczak & Welling's code.
    """
    beta = float(config.beta)
    if config.anneal_epochs <= 0:
        return beta
    if config.anneal_per == "epoch":
        return beta * min(1.0, (step // steps_per_epoch + 1) / config.anneal_epochs)
    return beta * min(1.0, (step + 1) / (config.anneal_epochs * steps_per_epoch))


def resolve_accelerator(config: TrainConfig) -> str:
    """Lightning's accelerator (``cpu`` or ``gpu``) for ``config.accelerator``.

    :raises ValueError: GPUs asked for without CUDA (or more than there are), an unknown
        strategy, or one that spawns its processes.
    """
    accelerator = {"cuda": "gpu"}.get(config.accelerator, config.accelerator)
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise ValueError(
            f"--accelerator {config.accelerator} was requested but CUDA is not available"
        )
    if accelerator == "gpu" and config.devices > torch.cuda.device_count():
        raise ValueError(
            f"--devices {config.devices} GPUs requested but {torch.cuda.device_count()} available"
        )
    from lightning.pytorch.strategies import StrategyRegistry

    strategies = ["auto", *StrategyRegistry.available_strategies()]
    if config.strategy not in strategies:
        raise ValueError(f"unknown strategy {config.strategy!r}; valid: {', '.join(strategies)}")
    if config.strategy.startswith(SPAWNING_STRATEGIES):
        raise ValueError(
            f"strategy {config.strategy!r} trains in child processes whose state never reaches "
            "this one; use --strategy ddp (one process per device, launched by Lightning)"
        )
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
    free_bits: float = 0.0  # KL floor in nats per latent dimension (objective free-bits)
    tc_alpha: float = 1.0  # beta-tcvae: weight of the index-code MI (beta weights the TC)
    tc_gamma: float = 1.0  # beta-tcvae: weight of the dimension-wise KL
    dip_lambda_od: float = 10.0  # dip-vae-i/ii: weight of the off-diagonal covariance terms
    dip_lambda_d: float | None = None  # dip-vae: diagonal weight (default: 10x od for I, 1x for II)
    capacity: float = 25.0  # annealed: the KL target C in nats, reached after capacity_epochs
    capacity_epochs: float = 0.0  # annealed: C rises linearly from 0 over these epochs
    capacity_gamma: float = 1000.0  # annealed: weight gamma of |KL - C|
    factor_gamma: float = 35.0  # factor-vae: weight of the discriminator's TC estimate
    factor_hidden: int = 1000  # factor-vae: width of the discriminator's 6 hidden layers
    factor_lr: float = 1e-4  # factor-vae: the discriminator's Adam rate (betas 0.5, 0.9)
    seed: int = 0  # random seed (initial weights, batches, samples)
    accelerator: Accelerator = "auto"  # auto (a GPU when available), cpu, gpu (= cuda)
    devices: int = 1  # processes per node (GPUs, or CPU processes); batch_size is per process
    num_nodes: int = 1  # machines (each runs --devices processes)
    strategy: str = "auto"  # Lightning's: auto, ddp, ddp_spawn, ... (several devices: ddp)
    precision: Precision = "32"  # 32, 16-mixed or bf16-mixed (autocast; the ELBO sums in fp32)
    logger: LoggerName = "none"  # also log to RUN_DIR/lightning_logs: csv or tensorboard
    valid_batch_size: int = 500  # images per validation batch
    validate: bool = False  # Pyro's checks at every step (the data are checked once anyway)
    compile: bool = False  # torch.compile the model's networks (first step slower; see README)
    progress: bool = True  # tqdm progress bar with the running loss

    def __post_init__(self):
        for key, kind in get_type_hints(TrainConfig).items():
            valid, value = get_args(kind), getattr(self, key)
            if get_origin(kind) is Literal and value not in valid:
                raise ValueError(f"unknown {key} {value!r}; valid: {', '.join(valid)}")
        for key in _COUNTS:
            value, low = getattr(self, key), int(key != "patience")
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                kind = "a non-negative" if low == 0 else "a positive"
                raise ValueError(f"{key} must be {kind} integer, got {value!r}")
        for key in _ABOVE_ZERO + _AT_LEAST_ZERO:
            value, above = getattr(self, key), key in _ABOVE_ZERO
            if value is not None and not (value > 0 if above else value >= 0):
                raise ValueError(f"{key} must be {'>' if above else '>='} 0, got {value}")
        if self.objective == "annealed" and (self.beta != 1.0 or self.anneal_epochs > 0):
            raise ValueError(
                "the annealed objective has its own schedule (capacity, capacity_epochs, "
                "capacity_gamma); beta and anneal_epochs do not apply to it"
            )
        if self.objective == "factor-vae" and self.optimizer != "adam":
            raise ValueError("factor-vae trains its discriminator with Adam: use --optimizer adam")
        if self.objective != "auto":  # the objective's settings together
            make_elbo(self.objective, self.num_particles, free_bits=self.free_bits, config=self)
        if self.free_bits > 0 and self.objective not in ("auto", "free-bits"):
            raise ValueError(
                f"free_bits > 0 is the free-bits objective; got objective {self.objective!r}"
            )


#: what ``TrainConfig`` checks besides its ``Literal`` fields: integers >= 1 (``patience``
#: >= 0), numbers > 0, and numbers >= 0 (``dip_lambda_d`` may also be None)
_COUNTS = ("epochs", "batch_size", "num_particles", "valid_batch_size", "patience", "devices",
           "num_nodes", "factor_hidden")  # fmt: skip
_ABOVE_ZERO = ("beta", "lr", "factor_lr")
_AT_LEAST_ZERO = ("free_bits", "tc_alpha", "tc_gamma", "dip_lambda_od", "dip_lambda_d",
                  "capacity", "capacity_epochs", "capacity_gamma", "factor_gamma")  # fmt: skip
