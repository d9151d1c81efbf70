"""What the ``evaluate``, ``bdmc``, ``sample`` and ``plot`` commands do, as functions.

Each command's settings are one typed dataclass (:class:`EvalConfig`,
:class:`BDMCConfig`, :class:`SampleConfig`, :class:`PlotConfig`) whose defaults are
the only ones: the CLI generates its options from the fields (``configargs``), and
the functions take the dataclass or its fields as keywords. :class:`RunOptions`
(which checkpoint, which device) and :class:`DataOptions` (which images) are shared.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import DATASETS, SPLITS
from .infer import (
    ais_estimate,
    bdmc,
    importance_estimate,
    kl_divergence,
    log_importance_weights,
    prior_log_marginal,
)
from .infer.checkpoint import save_atomic
from .infer.program import positive_int
from .runs import load_run

Split = Literal[SPLITS]  # type: ignore[valid-type]  # Literal of the tuple's values
Dataset = Literal[DATASETS]  # type: ignore[valid-type]
PLOT_KINDS = ("curves", "reconstructions", "traversals", "manifold", "embedding",
              "mutual-information")  # fmt: skip
PlotKind = Literal[PLOT_KINDS]  # type: ignore[valid-type]
AIS_GRADIENT_DTYPES = ("bfloat16", "float16")
GradientDtype = Literal[AIS_GRADIENT_DTYPES]  # type: ignore[valid-type]


def _positive(config, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value is not None:
            positive_int(value, name)


@dataclass
class RunOptions:
    """Which trained model a command loads, and where it runs."""

    checkpoint: Literal["best", "last"] = "best"  # best: the best validation ELBO; last: latest
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when present, else the CPU


@dataclass
class DataOptions:
    """Which images a command uses: a split of the run's data set, or of another of its shape."""

    split: Split = "test"  # data split
    limit: int | None = None  # the first N images of the split (default: all)
    #: a fixed random subset of N images of the split (of the first --limit, if given), the
    #: same N images for every model, seed and machine
    subset: int | None = None
    dataset: Dataset | None = None  # another data set of the same shape (default: the run's)
    data_dir: str | None = None  # data directory (default: the run's, then the usual)

    def __post_init__(self):
        _positive(self, "limit", "subset")

    def images(self, loaded, limit: int | None = None):
        """The images of run ``loaded`` these options name (``limit``: the command's default
        for ``self.limit``, unless a subset is asked for), as an
        :class:`~pyro_genmodels.data.ImageDataset`."""
        limit = self.limit or (None if self.subset else limit)
        images = loaded.dataset(self.split, self.dataset, self.data_dir, limit)
        return images if self.subset is None else random_subset(images, self.subset)


#: the seed of :func:`random_subset`'s draw: one fixed subset of each size for everybody
SUBSET_SEED = 0


def random_subset(images, size: int):
    """``size`` of ``images`` drawn without replacement, kept in their order: the same ones
    for every call (a fixed random subset, for figures on part of a split)."""
    if size > len(images):
        raise ValueError(f"a subset of {size} images from {len(images)} is not possible")
    gen = torch.Generator().manual_seed(SUBSET_SEED)
    return images.select(torch.randperm(len(images), generator=gen)[:size].sort().values)


@dataclass
class EvalConfig:
    """How log p(x) is estimated per image (exactly for models without latents)."""

    method: Literal["iw", "ais"] = "iw"  # iw: importance sampling from q(z|x); ais: annealed IS
    num_samples: int = 5000  # importance samples K per image (method iw)
    ais_steps: int = 1000  # AIS temperatures T (method ais)
    ais_chains: int = 16  # AIS chains per image (method ais)
    #: compute AIS's leapfrog gradients in this dtype (densities and acceptance stay in full
    #: precision, so the estimate is as exact; bfloat16 is 2x faster on CPUs with AVX512-BF16
    #: and on GPUs); default: full precision
    ais_gradient_dtype: GradientDtype | None = None
    batch_size: int | None = None  # images per batch (default: the model's evaluation batch)
    chunk_size: int | None = None  # importance samples at once (default: what memory holds)
    prior_samples: int = 0  # also the naive estimate with this many z ~ p(z) per image (0: off)
    devices: int = 1  # processes to shard the images over (GPUs on CUDA); same numbers as one
    seed: int = 0  # random seed; batch b draws from its own stream (seed, b)
    progress: bool = True  # progress bar
    #: also the disentanglement metrics of the q(z|x) means (a data set with known factors):
    #: MIG, SAP, DCI and modularity on the evaluated images, the beta-VAE and FactorVAE
    #: scores on images drawn from chosen factors
    disentanglement: bool = False
    intervention_points: int = 500  # beta-VAE / FactorVAE score: training points (eval: half)

    def __post_init__(self):
        if self.method not in ("iw", "ais"):
            raise ValueError(f"unknown method {self.method!r}; valid: iw, ais")
        if self.ais_gradient_dtype not in (None, *AIS_GRADIENT_DTYPES):
            valid = ", ".join(AIS_GRADIENT_DTYPES)
            dtype = self.ais_gradient_dtype
            raise ValueError(f"unknown AIS gradient dtype {dtype!r}; valid: {valid}")
        _positive(self, "num_samples", "ais_steps", "ais_chains", "batch_size", "chunk_size",
                  "devices", "intervention_points")  # fmt: skip
        if int(self.prior_samples) < 0:
            raise ValueError(f"prior_samples must be >= 0, got {self.prior_samples}")


@dataclass
class BDMCConfig:
    """BDMC: forward and reverse AIS on images simulated from the model."""

    num_examples: int = 100  # images to simulate
    ais_steps: int = 1000  # AIS temperatures T
    ais_chains: int = 16  # AIS chains per image
    seed: int = 0  # random seed

    def __post_init__(self):
        _positive(self, "num_examples", "ais_steps", "ais_chains")


@dataclass
class SampleConfig:
    """Images drawn from a trained model."""

    num: int  # number of images
    mean: bool = False  # show the likelihood's mean (pixel probabilities) instead of a sample
    seed: int = 0  # random seed

    def __post_init__(self):
        _positive(self, "num")


@dataclass
class PlotConfig:
    """One figure of a trained run."""

    kind: PlotKind  # which figure
    method: Literal["pca", "tsne"] = "pca"  # embedding: how the codes are brought to 2-D
    dims: int = 10  # traversals: this many latent dims, the most active first
    seed: int = 0  # random seed

    def __post_init__(self):
        if self.kind not in PLOT_KINDS:
            raise ValueError(f"unknown plot kind {self.kind!r}; valid: {', '.join(PLOT_KINDS)}")
        _positive(self, "dims")


def _config(cls, config, overrides: dict):
    """``config`` (or the defaults) with ``overrides``; an unknown key is a ValueError."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; valid: {sorted(fields)}")
    if config is None:
        return cls(**overrides)
    if not isinstance(config, cls):
        raise TypeError(f"expected a {cls.__name__}, got {type(config).__name__}")
    return dataclasses.replace(config, **overrides)


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


def evaluate_batch(module, xb: torch.Tensor, index: int, config: EvalConfig,
                   example_offset: int = 0) -> dict:  # fmt: skip
    """Per-image estimates for batch number ``index`` of an evaluation, drawn from the
    batch's own random stream (``config.seed``, ``index``); tensors on the CPU."""
    device = module.device
    xb = xb.to(device)
    out: dict[str, Any] = {"index": int(index)}
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(_batch_seed(config.seed, index))
        if config.method == "ais":
            low = getattr(torch, config.ais_gradient_dtype) if config.ais_gradient_dtype else None
            est = ais_estimate(module.model, module.guide, xb, config.ais_steps,
                               config.ais_chains, seed=config.seed,
                               example_offset=example_offset, gradient_dtype=low)  # fmt: skip
            elbo = log_importance_weights(module.model, module.guide, xb, 10).mean(0)
            khat = torch.full_like(est.log_marginal, float("nan"))
            out["accept"] = est.acceptance_rate.cpu()
        else:
            est = importance_estimate(module.model, module.guide, xb, config.num_samples,
                                      config.chunk_size)  # fmt: skip
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
            if config.prior_samples:
                out["prior"] = prior_log_marginal(module.model, xb, config.prior_samples,
                                                  config.chunk_size).cpu()  # fmt: skip
    return out


def evaluate_images(module, x: torch.Tensor, config: EvalConfig | None = None,
                    partial: str | Path | None = None, **overrides):  # fmt: skip
    """Evaluation of ``module`` on images ``x`` ``(N, C, H, W)``: log p(x) by importance
    sampling (``method="iw"``, K = ``num_samples``) or by annealed importance sampling
    (``method="ais"``: ``ais_steps`` temperatures, ``ais_chains`` chains; the ELBO and KL then
    come from 10 importance samples and there is no Pareto k; ``ais_gradient_dtype``, e.g.
    ``"bfloat16"``, computes the leapfrog gradients in it: see
    :func:`~pyro_genmodels.infer.ais_estimate`). Batch ``b`` (images ``b * batch_size``
    onwards) draws from its own stream, seeded by (``seed``, ``b``); with ``devices > 1``
    the batches are sharded over processes (:func:`evaluate_images_distributed`).

    :param config: an :class:`EvalConfig`; ``overrides`` replace its fields
        (``evaluate_images(vae, x, num_samples=1000)``).
    :param partial: a file where the per-batch results are kept as they come
        (:class:`PartialEvaluation`): the same evaluation, interrupted, continues from it
        (in one process or in several); it is removed at the end.
    :returns: the contract's keys (``nll``, ``elbo``, ``bits_per_dim``, ``num_samples``,
        ``num_examples``, ``psis_khat_mean``, ``psis_khat_max``) plus ``kl``, the standard
        error of ``nll``, the share of examples with k > 0.7, the mean ESS, ``active_units``
        (real latents: dimensions whose q(z|x) mean has variance > 0.01 over ``x``),
        ``per_image_nll`` and, if ``prior_samples``, the naive prior-sampling estimate
        ``prior_nll``. With ``devices > 1``, None in every process but the first.
    """
    config = _config(EvalConfig, config, overrides)
    if config.devices > 1:
        accelerator = "gpu" if module.device.type == "cuda" else "cpu"
        return evaluate_images_distributed(module, x, config, accelerator, partial=partial)
    size = _batch_size(module, x, config)
    saved = PartialEvaluation(partial, module, x, size, config) if partial else None
    batches = saved.done if saved else []
    done = {b["index"] for b in batches}
    start, before = time.perf_counter(), saved.seconds if saved else 0.0
    for i in tqdm(range(0, len(x), size), desc="evaluate", disable=not config.progress,
                  initial=len(done), total=-(-len(x) // size)):  # fmt: skip
        if i // size in done:
            continue
        batches.append(evaluate_batch(module, x[i : i + size], i // size, config, example_offset=i))
        if saved:
            saved.save(batches, before + time.perf_counter() - start)
    result = summarize_evaluation(module, batches, before + time.perf_counter() - start, config)
    if saved:
        saved.remove()
    return result


def partial_files(path: str | Path) -> list[Path]:
    """``path`` and the files ``path.rankR`` of the other processes of an evaluation sharded
    over processes (:class:`PartialEvaluation`), those that exist."""
    path = Path(path)
    others = sorted(path.parent.glob(glob.escape(path.name) + ".rank*"))
    return [f for f in [path, *others] if f.is_file()]


class PartialEvaluation:
    """The per-batch results of an evaluation kept in a file as they come (atomically, after
    each batch), so that the same evaluation interrupted (Ctrl-C, kill -9) continues where
    it stopped. The file holds a digest of what the results depend on (the module's weights,
    the images, the batch size, the estimator's settings and the kind of device): a file from
    another evaluation is not used, and is replaced.

    Process ``rank`` of an evaluation sharded over processes keeps its batches in
    ``PATH.rankR`` (``PATH`` itself for rank 0). The batches done (``done``) are those of
    every such file of this evaluation, whichever number of processes wrote them, so an
    evaluation continues in one process or in several.
    """

    def __init__(self, path, module, x: torch.Tensor, batch_size: int, config: EvalConfig,
                 rank: int = 0):  # fmt: skip
        self.base = base = Path(path)
        self.path = base if rank == 0 else base.with_name(f"{base.name}.rank{rank}")
        settings = dataclasses.asdict(config)
        for key in ("progress", "devices", "disentanglement", "intervention_points"):
            settings.pop(key)  # how it runs, or what is computed after the batches
        device = next(module.parameters(), x).device.type  # a CPU's figures differ from a GPU's
        digest = hashlib.sha256(json.dumps([settings, batch_size, device], sort_keys=True).encode())
        for t in (x, *module.state_dict().values()):
            if isinstance(t, torch.Tensor):  # as bytes, whatever the dtype
                digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        self.key = digest.hexdigest()
        self.batches, self.seconds, done = [], 0.0, {}
        for file in partial_files(base):
            saved = self._load(file)
            for batch in saved.get("batches", []):
                done[batch["index"]] = batch
            if file == self.path:
                self.batches = list(saved.get("batches", []))
            self.seconds = max(self.seconds, float(saved.get("seconds", 0.0)))  # wall time
        self.done = list(done.values())

    def _load(self, file: Path) -> dict:
        try:
            saved = torch.load(file, weights_only=True)
        except Exception:  # noqa: BLE001 - a truncated, foreign or vanished file: start over
            return {}
        return saved if isinstance(saved, dict) and saved.get("key") == self.key else {}

    def save(self, batches: list[dict], seconds: float) -> None:
        self.batches = batches
        save_atomic({"key": self.key, "batches": batches, "seconds": seconds}, self.path)

    def record(self, batch: dict, seconds: float) -> dict:
        """Keep one more batch of this process; returns it."""
        self.save([*self.batches, batch], seconds)
        return batch

    def remove(self) -> None:
        """Remove the files of every process (once they have all finished)."""
        for file in partial_files(self.base):
            file.unlink(missing_ok=True)


def _batch_size(module, x: torch.Tensor, config: EvalConfig) -> int:
    if len(x) == 0:
        raise ValueError("no images to evaluate")
    return config.batch_size or max(1, min(len(x), module.eval_batch_size))


def summarize_evaluation(module, batches: list[dict], seconds: float, config: EvalConfig) -> dict:
    """The summary of :func:`evaluate_images` from the per-batch results of
    :func:`evaluate_batch` (in any order: they are sorted by batch index)."""
    batches = sorted(batches, key=lambda b: b["index"])

    def cat(key: str) -> torch.Tensor | None:
        parts = [b[key] for b in batches if key in b]
        return torch.cat(parts) if parts else None

    offset = module.likelihood.nll_offset()
    num_dims = math.prod(module.image_shape)
    has_latent = batches[-1]["has_latent"]
    nll = -cat("lm").double() + offset
    khat = cat("khat")
    n = len(nll)
    per_image = config.num_samples if config.method == "iw" else config.ais_chains
    result = {
        "nll": nll.mean().item(),
        "nll_stderr": (nll.std().item() / math.sqrt(n)) if n > 1 else float("nan"),
        "elbo": (cat("elbo").double() - offset).mean().item(),
        "bits_per_dim": nll.mean().item() / (num_dims * math.log(2)),
        "method": config.method,
        "num_samples": int(per_image) if has_latent else 1,
        "num_examples": n,
        "psis_khat_mean": _nanmean(khat),
        "psis_khat_max": _nanmax(khat),
        "psis_khat_frac_above_0.7": (khat > 0.7).float().mean().item() if has_latent else 0.0,
        "ess_mean": cat("ess").mean().item(),
        "kl": cat("kl").mean().item() if has_latent else float("nan"),
        "exact": not has_latent,
        "nll_offset": offset,
        "seconds": seconds,
        # with the seed, what fixes each image's random stream (batch b: (seed, b))
        "batch_size": len(batches[0]["lm"]),
        "seed": int(config.seed),
    }
    if config.method == "ais":
        result.update(ais_steps=int(config.ais_steps), ais_chains=int(config.ais_chains),
                      ais_gradient_dtype=config.ais_gradient_dtype or "full")  # fmt: skip
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
        result["prior_num_samples"] = int(config.prior_samples)
    result["per_image_nll"] = nll.tolist()
    return result


def evaluate_images_distributed(
    module,
    x: torch.Tensor,
    config: EvalConfig,
    accelerator: str = "cpu",
    num_nodes: int = 1,
    partial: str | Path | None = None,
) -> dict | None:
    """:func:`evaluate_images` sharded over ``config.devices`` processes (DDP through
    Lightning): process r takes batches r, r + P, ... of those not done yet (``partial``:
    see :class:`PartialEvaluation`); the per-batch results are gathered on rank 0, which
    returns the summary (the other processes return None). Each batch draws from its own
    stream, so every image gets the same estimate as in one process."""
    import lightning.pytorch as pl
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
    from torch.utils.data import DataLoader

    from .infer.distributed import BatchEvaluator
    from .infer.train import lightning_errors, quiet_lightning

    size = _batch_size(module, x, config)
    with quiet_lightning():
        trainer = pl.Trainer(
            accelerator=accelerator, devices=config.devices, num_nodes=num_nodes,
            strategy="ddp", logger=False, enable_checkpointing=False, enable_model_summary=False,
            enable_progress_bar=config.progress, use_distributed_sampler=False,
            inference_mode=False,
        )  # fmt: skip
        # every process reads the files before any writes (they write after Lightning's setup)
        saved = partial and PartialEvaluation(partial, module, x, size, config, trainer.global_rank)
        done = {b["index"] for b in saved.done} if saved else set()
        batches = [(i // size, i, x[i : i + size]) for i in range(0, len(x), size)
                   if i // size not in done]  # fmt: skip
        loader = DataLoader(
            batches, batch_size=None, collate_fn=lambda b: b,
            sampler=UnrepeatedDistributedSampler(batches, trainer.world_size, trainer.global_rank,
                                                 shuffle=False),
        )  # fmt: skip
        start, before = time.perf_counter(), saved.seconds if saved else 0.0

        def evaluate(net, b):
            result = evaluate_batch(net, b[2], b[0], config, example_offset=b[1])
            return saved.record(result, before + time.perf_counter() - start) if saved else result

        evaluator = BatchEvaluator(module, evaluate)
        with lightning_errors(trainer):
            trainer.predict(evaluator, loader, return_predictions=False)
    if trainer.global_rank != 0:
        return None
    results = (saved.done if saved else []) + evaluator.results
    summary = summarize_evaluation(module, results, before + time.perf_counter() - start, config)
    if saved:
        saved.remove()
    return summary


def evaluate_run(
    run_dir: str | Path,
    config: EvalConfig | None = None,
    run: RunOptions | None = None,
    data: DataOptions | None = None,
    partial: str | Path | None = None,
    **overrides,
) -> dict | None:
    """Evaluate a run (or a shipped checkpoint by name) on a split of its data set; see
    :func:`evaluate_images`.

    :param config: how to estimate; ``run``: which checkpoint (default: the best validation
        ELBO, i.e. model selection on the validation split) on which device; ``data``: which
        images. ``overrides`` are fields of any of the three
        (``evaluate_run("vae-paper", num_samples=1000, limit=500)``).
    :param partial: where per-batch results are kept while it runs, so that it continues
        after an interruption (see :func:`evaluate_images`).
    :returns: the summary with the run's model, guide, epoch, checkpoint and data set (and
        ``limit`` and ``subset``, which images of the split); None in every process but the
        first when ``devices > 1``.
    """
    config, run, data = _split_overrides(overrides, config, run, data)
    device, accelerator = run.device, "cpu"
    if config.devices > 1:
        accelerator = {"auto": "gpu" if torch.cuda.is_available() else "cpu", "cpu": "cpu",
                       "cuda": "gpu"}[run.device]  # fmt: skip
        if accelerator == "gpu" and torch.cuda.device_count() < config.devices:
            raise ValueError(f"devices={config.devices} GPUs requested but "
                             f"{torch.cuda.device_count()} available")  # fmt: skip
        device = "cpu"  # Lightning moves the module to each process's device
    loaded = load_run(run_dir, device, run.checkpoint)
    images = data.images(loaded)
    if config.devices > 1:
        result = evaluate_images_distributed(loaded.module, images.fixed(), config, accelerator,
                                             partial=partial)  # fmt: skip
        if result is None:
            return None  # not rank 0
    else:
        result = evaluate_images(loaded.module, images.fixed(), config, partial)
    if config.disentanglement:
        result.update(disentanglement_scores(loaded.module, images, config))
    info = images.describe()
    return {
        "model": loaded.model_name,
        "guide": loaded.metadata["model_config"].get("guide"),
        "epoch": loaded.checkpoint["epoch"],
        "checkpoint": run.checkpoint,
        **{k: info[k] for k in ("dataset", "split", "binarization", "data_format")},
        "limit": data.limit,
        "subset": data.subset,
        **result,
    }


def disentanglement_scores(module, images, config: EvalConfig | None = None) -> dict:
    """The disentanglement metrics of ``module``'s q(z|x) means on ``images`` (an
    :class:`~pyro_genmodels.data.ImageDataset` with known factors): ``mig``, ``sap``,
    ``dci_disentanglement``, ``dci_completeness``, ``dci_informativeness`` and
    ``modularity`` on those images, ``beta_vae_score`` and ``factor_vae_score`` on images
    drawn from chosen factors (``intervention_points`` training points, half as many to
    score; disentanglement_lib uses 10000 and 5000), and the numbers of images used."""
    from . import disentanglement as dis

    config = config or EvalConfig()
    if images.factors is None:
        raise ValueError(
            f"{images.describe()['dataset']} has no known factors; the disentanglement "
            "metrics need sprites, dsprites or shapes3d"
        )
    if not getattr(module, "latent_is_real", False) or not hasattr(module, "encode"):
        raise ValueError("the disentanglement metrics need a model with real-valued codes")

    def encode(x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=torch.float32)
        return torch.cat([module.encode(b.to(module.device)).cpu() for b in x.split(500)])

    codes = encode(images.fixed()).numpy()
    factors = images.factors  # the metrics leave out constant ones (dSprites' colour)
    keep = [k for k in range(factors.shape[1]) if len(np.unique(factors[:, k])) > 1]
    d = dis.dci(codes, factors, seed=config.seed)
    points = config.intervention_points
    # the interventions draw the varying factors only (as the runs on record were scored)
    source = _VaryingFactors(images.factor_source, keep)
    kwargs = dict(num_train=points, num_eval=max(1, points // 2), seed=config.seed)
    return {
        "mig": dis.mig(codes, factors),
        "sap": dis.sap(codes, factors, seed=config.seed),
        "dci_disentanglement": d.disentanglement,
        "dci_completeness": d.completeness,
        "dci_informativeness": d.informativeness,
        "modularity": dis.modularity(codes, factors),
        "beta_vae_score": dis.beta_vae_score(source, encode, **kwargs),
        "factor_vae_score": dis.factor_vae_score(
            source, encode, num_variance_estimate=min(10000, 20 * points), **kwargs
        ),
        "disentanglement_num_images": int(len(codes)),
        "disentanglement_intervention_points": int(points),
        "disentanglement_factors": [images.factor_source.factor_names[k] for k in keep],
    }


class _VaryingFactors:
    """A factor source restricted to the factors ``keep`` (the others held at class 0)."""

    def __init__(self, source, keep: list[int]):
        self.source, self.keep = source, keep
        self.factor_sizes = tuple(source.factor_sizes[k] for k in keep)

    def sample_factors(self, num: int, rng: np.random.Generator) -> np.ndarray:
        return np.stack([rng.integers(s, size=num) for s in self.factor_sizes], axis=1)

    def images_from_factors(self, factors: np.ndarray, rng=None) -> torch.Tensor:
        full = np.zeros((len(factors), len(self.source.factor_sizes)), np.int64)
        full[:, self.keep] = factors
        return self.source.images_from_factors(full)


def _split_overrides(overrides: dict, config, run, data):
    """Sort keyword overrides into the three option dataclasses."""
    groups = {EvalConfig: {}, RunOptions: {}, DataOptions: {}}
    for key, value in overrides.items():
        owner = next((c for c in groups if key in {f.name for f in dataclasses.fields(c)}), None)
        if owner is None:
            valid = sorted(f.name for c in groups for f in dataclasses.fields(c))
            raise ValueError(f"unknown evaluation option {key!r}; valid: {', '.join(valid)}")
        groups[owner][key] = value
    return (
        _config(EvalConfig, config, groups[EvalConfig]),
        _config(RunOptions, run, groups[RunOptions]),
        _config(DataOptions, data, groups[DataOptions]),
    )


def bdmc_run(
    run_dir: str | Path, config: BDMCConfig | None = None, run: RunOptions | None = None,
    **overrides,
) -> dict:  # fmt: skip
    """BDMC on ``num_examples`` images simulated from a run's model: forward and reverse AIS
    bounds on their log p(x) (nats), per image and on average, and the gap between them."""
    config = _config(BDMCConfig, config, overrides)
    run = run or RunOptions()
    loaded = load_run(run_dir, run.device, run.checkpoint)
    module = loaded.module
    if not module.is_generative:
        raise ValueError(f"{loaded.model_name} is not a generative model: nothing to simulate")
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    r = bdmc(module.model, module.guide, config.num_examples, config.ais_steps,
             config.ais_chains, seed=config.seed)  # fmt: skip
    offset = module.likelihood.nll_offset()
    return {
        "model": loaded.model_name,
        "epoch": loaded.checkpoint["epoch"],
        "checkpoint": run.checkpoint,
        "num_examples": int(config.num_examples),
        "ais_steps": int(config.ais_steps),
        "ais_chains": int(config.ais_chains),
        "nll_lower_bound": offset - r.upper.mean().item(),  # from reverse AIS
        "nll_upper_bound": offset - r.lower.mean().item(),  # from forward AIS
        "gap_mean": r.gap.mean().item(),
        "gap_max": r.gap.max().item(),
        "log_px_lower": r.lower.tolist(),
        "log_px_upper": r.upper.tolist(),
        "acceptance_rate": _nanmean(r.forward.acceptance_rate.double()),
        "seconds": time.perf_counter() - start,
    }


def sample_run(run_dir: str | Path, out: str | Path, config: SampleConfig | None = None,
               run: RunOptions | None = None, **overrides) -> Path:  # fmt: skip
    """Draw ``num`` images from a run's model (or a shipped checkpoint's) into a PNG grid."""
    from .plots import plot_images

    config = _config(SampleConfig, config, overrides)
    run = run or RunOptions()
    loaded = load_run(run_dir, run.device, run.checkpoint)
    torch.manual_seed(config.seed)
    images = loaded.module.sample(config.num, **({"mean": True} if config.mean else {}))
    what = "pixel means" if config.mean else "samples"
    title = f"{loaded.path.name} ({loaded.model_name}): {config.num} {what}"
    plot_images(images, out, title=title, value_range=loaded.module.likelihood.value_range)
    return Path(out)


def plot_run(run_dir: str | Path, out: str | Path, config: PlotConfig | None = None,
             run: RunOptions | None = None, data: DataOptions | None = None,
             **overrides) -> Path:  # fmt: skip
    """Draw one figure of a run into a PNG: ``curves`` (training loss and validation ELBO/KL
    per epoch), ``reconstructions`` (inputs next to their reconstructions; the first 16
    images unless ``limit``), ``traversals`` (one latent dimension at a time around an
    image's code; on a data set with known factors each row names the factor its dimension
    has the most mutual information with), ``manifold`` (a grid of decoded z, latent_dim 2
    only), ``embedding`` (q(z|x) means in 2-D, coloured by label) or
    ``mutual-information`` (latents against factors, a heat map). The codes use the first
    2000 images unless ``limit``."""
    from . import plots

    config = _config(PlotConfig, config, overrides)
    run, data = run or RunOptions(), data or DataOptions()
    loaded = load_run(run_dir, run.device, run.checkpoint)
    torch.manual_seed(config.seed)
    module, kind = loaded.module, config.kind
    if kind == "curves":
        metrics_file = loaded.path / "metrics.jsonl"
        if not metrics_file.is_file():
            raise FileNotFoundError(f"no metrics.jsonl in {loaded.path}")
        rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
        plots.plot_training_curves(rows, out, title=f"{loaded.model_name}: training")
        return Path(out)
    if kind == "manifold":
        plots.plot_latent_manifold(module, path=out)
        return Path(out)
    if not hasattr(module, "encode"):
        raise ValueError(f"{loaded.model_name} has no encoder, so no {kind} plot")
    images = data.images(loaded, 16 if kind == "reconstructions" else 2000)
    x = images.fixed()
    if kind == "reconstructions":
        x_rec = module.reconstruct(x.to(module.device)).cpu()
        plots.plot_reconstructions(x, x_rec, out, value_range=module.likelihood.value_range)
        return Path(out)
    z = torch.cat([module.encode(b.to(module.device)).cpu() for b in x.split(500)])
    factors = images.factors
    if factors is not None:  # the factor each latent dimension knows most about
        from .disentanglement import mutual_information

        names = images.factor_source.factor_names
        mi = mutual_information(z.numpy(), factors)
    if kind == "mutual-information":
        if factors is None:
            name = images.describe()["dataset"]
            raise ValueError(f"{name} has no known factors; the mutual-information plot "
                             "needs sprites, dsprites or shapes3d")  # fmt: skip
        title = f"{loaded.model_name}: MI of the q(z|x) means, {len(x)} {data.split} images"
        plots.plot_mutual_information(mi, names, out, title)
        return Path(out)
    if kind == "traversals":
        dims = plots.most_active_dims(z, config.dims)
        labels = None
        if factors is not None:
            labels = [f"{names[mi[d].argmax()]} ({mi[d].max():.2f} nats)" for d in dims]
        plots.plot_traversals(module, x, dims=dims, path=out, row_labels=labels)
        return Path(out)
    if images.labels is None or len(images.labels) != len(x):
        raise ValueError(
            f"{images.describe()['dataset']} has no labels to colour the embedding; "
            "pass dataset= (--dataset) with labels of the same shape (e.g. mnist)"
        )
    how = config.method if z.shape[1] > 2 else "as they are"
    title = f"{loaded.model_name}: q(z|x) means of {len(x)} {data.split} images, {how}"
    plots.plot_embedding(z, images.labels, config.method, out, title)
    return Path(out)
