"""The ``pyro-genmodels`` command: ``train``, ``evaluate``, ``bdmc``, ``sample``, ``plot``, ``list``

Bad input (unknown names, missing or corrupt files, wrong shapes or values)
exits non-zero with one line on stderr and no traceback; set
``PYRO_GENMODELS_DEBUG=1`` to see the traceback.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from pathlib import Path

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors."""

    def error(self, message: str):
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _key_value(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    return key.strip().replace("-", "_"), parsed


def _writable_output(path: str, suffix: str | None = None) -> Path:
    """Check before any work that ``path`` can be written (its folder is made if missing).

    :raises ValueError: a wrong suffix, a folder at ``path``, or a folder that cannot be
        created or written to.
    """
    import tempfile

    out = Path(path)
    if suffix and out.suffix.lower() != suffix:
        raise ValueError(f"--out must be a {suffix} file, got {path!r}")
    if out.is_dir():
        raise ValueError(f"{path} is a directory, not a file")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError as e:
        raise ValueError(f"cannot write {path}: {e.strerror or e}") from None
    return out


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


MODEL_DEST, GUIDE_DEST, TRAIN_DEST = "model.", "guide.", "train."


def _add_train(sub) -> None:
    from .configargs import add_config_arguments
    from .data import BINARIZATIONS, DATASETS
    from .infer import TrainConfig
    from .models.guides import family_class, list_families
    from .registry import config_classes

    p = sub.add_parser(
        "train",
        help="train a model on a data set; writes RUN_DIR/checkpoint.pt and metrics.jsonl",
        description="Train a model by SVI. Each epoch writes RUN_DIR/checkpoint.pt atomically "
        "(resumable with --resume) and appends to RUN_DIR/metrics.jsonl. The model, guide "
        "and training options are generated from the config dataclasses (pyro-genmodels list "
        "shows each model's keys); --set KEY=VALUE passes any model key, guide.KEY=VALUE any "
        "guide option.",
    )
    recipe = p.add_mutually_exclusive_group()
    recipe.add_argument(
        "--preset",
        metavar="NAME",
        help="start from a named recipe (pyro-genmodels list --presets); options given here "
        "override it",
    )
    recipe.add_argument(
        "--config", metavar="FILE.toml", help="start from a recipe file (the --preset format)"
    )
    p.add_argument(
        "--model", help="model name (pyro-genmodels list); required unless --resume or a recipe"
    )
    p.add_argument(
        "--dataset", choices=DATASETS, help="data set; required unless --resume or a recipe"
    )
    p.add_argument("--data-dir", help="data directory (default: $PYRO_GENMODELS_DATA or cache)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--limit", type=_positive, help="keep the first N training examples")
    p.add_argument(
        "--binarization",
        choices=BINARIZATIONS,
        help="for Bernoulli likelihoods on grey-level data: sample once (static, the "
        "default) or every batch (dynamic); binarized-mnist is static",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--no-download", action="store_true", help="never try to download data")
    add_config_arguments(
        p.add_argument_group("training"),
        {"train": TrainConfig},
        TRAIN_DEST,
        aliases={"epochs": ["--max-epochs"], "accelerator": ["--device"]},
    )
    add_config_arguments(
        p.add_argument_group("model (keys of each model's config)"),
        # the VAE first: its comments document the keys it shares with the others
        dict(sorted(config_classes().items(), key=lambda kv: (kv[0] != "vae", kv[0]))),
        MODEL_DEST,
        skip=("image_shape", "guide_options"),
    )
    add_config_arguments(
        p.add_argument_group("guide options (nested under --guide)"),
        {f"guide {name}": family_class(name).Options for name in list_families()},
        GUIDE_DEST,
    )
    p.add_argument(
        "--set",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any model config key (e.g. --set gaussian_scale=0.1), or guide.KEY for a guide "
        "option (e.g. --set guide.rank=4)",
    )
    p.set_defaults(func=cmd_train)


def _model_config(args) -> dict:
    """The model config keys given on the command line, guide options nested."""
    from .configargs import given

    config, options = given(args, MODEL_DEST), given(args, GUIDE_DEST)
    for key, value in args.set:
        if key.startswith("guide."):
            options[key.removeprefix("guide.")] = value
        else:
            config[key] = value
    if options:
        config["guide_options"] = {**config.get("guide_options", {}), **options}
    return config


def _print_epoch(row: dict) -> None:
    from tqdm import tqdm

    parts = [f"epoch {row['epoch']:>3}", f"train loss {row['train_loss']:.3f}"]
    if "valid_elbo" in row:
        parts.append(f"valid ELBO {row['valid_elbo']:.3f}")
    if row.get("valid_kl") == row.get("valid_kl") and "valid_kl" in row:
        parts.append(f"KL {row['valid_kl']:.2f}")
    parts.append(f"{row['seconds']:.1f}s")
    tqdm.write("  ".join(parts), file=sys.stdout)  # above the progress bar, not through it


#: settings for ``--dataset digits`` where neither the command line nor a recipe gives
#: them: scikit-learn's 1797 8x8 digits need a small latent (with the defaults, latent 50
#: and 10 epochs, the posterior collapses to 0 active units; these are the demo's settings)
DATASET_DEFAULTS = {
    "digits": {
        "model": {"latent_dim": 8, "hidden_dims": (256, 128)},
        "train": {"batch_size": 64, "epochs": 100},
    }
}


def _report(out: str, metrics: list[dict], stop: str) -> None:
    """What the run did: the best epoch, the stop reason, collapse, the next commands."""
    from .infer.program import probe
    from .runs import active_units, load_run

    best = max((r for r in metrics if "valid_elbo" in r), key=lambda r: r["valid_elbo"],
               default=None)  # fmt: skip
    print(f"stopped: {stop}")
    run = load_run(out, which="best")
    x = run.dataset("valid", limit=2).fixed().to(run.module.device)
    latent = probe(run.module.model, run.module.guide, x, check_estimable=False).has_latent
    if best is not None:
        line = f"best epoch {best['epoch']}: valid ELBO {best['valid_elbo']:.3f}"
        kl = best.get("valid_kl", float("nan")) if latent else float("nan")
        units = active_units(run) if latent else None
        if kl == kl:
            line += f", KL {kl:.2f} nats"
        if units is not None:
            line += f", {units[0]} of {units[1]} active units"
        print(line + " (best.pt)")
        if kl == kl and (kl < 0.5 or (units is not None and units[0] == 0)):
            print(
                f"pyro-genmodels: warning: posterior collapse: the latent carries {kl:.2f} "
                f"nats{'' if units is None else f' in {units[0]} active units'}, so samples "
                "ignore it; try --free-bits 0.5, --anneal-epochs 10, a smaller decoder "
                "(--hidden-dims) or a smaller --latent-dim",
                file=sys.stderr,
            )
    k = " --num-samples 1000" if latent else ""  # a model without latent is scored exactly
    print(f"next: pyro-genmodels evaluate {out}{k}\n"
          f"      pyro-genmodels sample {out} --num 64 --out samples.png")  # fmt: skip


def _recipe(args):
    """The recipe of ``--preset`` or ``--config``, or None."""
    from .presets import load_preset

    name = args.preset or args.config
    if name is None:
        return None
    if args.resume:
        raise ValueError("--resume takes every setting from the checkpoint; drop --preset/--config")
    if args.config and not args.config.lower().endswith(".toml"):
        raise ValueError(f"--config must be a .toml file, got {args.config!r}")
    return load_preset(name)


def _rank_zero() -> bool:
    """Whether this is the first process of a (possibly distributed) run."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def cmd_train(args) -> int:
    from .configargs import given
    from .presets import merge
    from .registry import config_keys
    from .runs import train_run

    recipe = _recipe(args)
    model_name = args.model or (recipe.model if recipe else None)
    dataset = args.dataset or (recipe.dataset if recipe else None)
    if not args.resume and (model_name is None or dataset is None):
        raise ValueError(
            "train needs --model and --dataset (or --preset, or --resume with an existing --out)"
        )
    train_config = given(args, TRAIN_DEST)
    model_config = _model_config(args)
    binarization = args.binarization
    if recipe is not None:
        train_config = {**recipe.train, **train_config}
        model_config = merge(recipe.model_config, model_config)
        binarization = binarization or recipe.binarization
    elif not args.resume and dataset in DATASET_DEFAULTS:
        defaults = DATASET_DEFAULTS[dataset]
        keys = config_keys(model_name)
        model_config = {**{k: v for k, v in defaults["model"].items() if k in keys},
                        **model_config}  # fmt: skip
        train_config = {**defaults["train"], **train_config}
    if "guide_options" in model_config and not args.resume:
        if "guide_options" not in config_keys(model_name):
            names = ", ".join(sorted(model_config["guide_options"]))
            raise ValueError(f"{names}: guide options, but model {model_name!r} has no guide")
    if args.resume and _nothing_to_do(args.out, train_config):
        return 0
    _, metrics = train_run(
        model_name,
        dataset,
        args.out,
        model_config=model_config,
        train_config=train_config,
        data_dir=args.data_dir,
        limit=args.limit,
        binarization=binarization,
        download=not args.no_download,
        resume=args.resume,
        on_epoch_end=_print_epoch,
        preset=recipe.name if recipe else None,
    )
    if not _rank_zero():
        return 0  # the other processes of a distributed run print nothing
    last = metrics[-1]
    if last.get("stopped_early"):
        stop = (f"early stopping after epoch {last['epoch']} (no better validation ELBO in "
                f"{last['epochs_since_best']} epochs)")  # fmt: skip
    else:
        stop = f"the last epoch ({last['epoch']}) was reached"
    _report(args.out, metrics, stop)
    return 0


def _nothing_to_do(out: str, train_config: dict) -> bool:
    """With ``--resume`` on a finished run, say so (True) instead of training."""
    from .infer import load_checkpoint
    from .runs import CHECKPOINT_NAME

    ckpt = load_checkpoint(Path(out) / CHECKPOINT_NAME)
    last = ckpt["metrics"][-1] if ckpt["metrics"] else {"epoch": 0}
    epochs = train_config.get("epochs", ckpt["train_config"]["epochs"])
    if last.get("stopped_early"):
        print(f"{out} stopped early after epoch {last['epoch']}: nothing to do")
        return True
    if last["epoch"] >= epochs:
        print(f"{out} has trained {last['epoch']} of {epochs} epochs: nothing to do "
              "(raise --epochs to train further)")  # fmt: skip
        return True
    return False


def _add_evaluate(sub) -> None:
    from .data import DATASETS, SPLITS

    p = sub.add_parser(
        "evaluate",
        help="importance-weighted (or exact) test log p(x) of a run, with PSIS diagnostics",
        description="Estimate log p(x) per example by importance sampling from q(z|x) "
        "(exact for models without latents) and print NLL, ELBO, bits/dim, KL and Pareto k.",
    )
    p.add_argument("run_dir", help="a run directory written by train")
    p.add_argument("--num-samples", type=_positive, default=5000, help="K per image (5000)")
    p.add_argument(
        "--method",
        choices=("iw", "ais"),
        default="iw",
        help="iw: importance sampling from q(z|x) with K = --num-samples (default); ais: "
        "annealed importance sampling from q(z|x) to the posterior with HMC moves",
    )
    _add_ais_options(p, with_gradient_dtype=True)
    p.add_argument("--split", choices=SPLITS, default="test", help="data split (test)")
    p.add_argument("--limit", type=_positive, help="evaluate the first N examples of the split")
    p.add_argument("--json", help="write the results as JSON to this file")
    p.add_argument("--dataset", choices=DATASETS, help="another data set of the same shape")
    p.add_argument("--data-dir", help="data directory (default: the run's, then the usual)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--devices",
        type=_positive,
        default=1,
        help="shard the images over this many processes (GPUs with --device cuda or auto "
        "and CUDA, else CPU processes); the same per-image numbers as one process (1)",
    )
    p.add_argument("--batch-size", type=_positive, help="examples per batch (100)")
    p.add_argument(
        "--prior-samples",
        type=int,
        default=0,
        help="also the naive estimate with this many z ~ p(z) per image (0: off)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument(
        "--checkpoint",
        choices=("best", "last"),
        default="best",
        help="best: the epoch with the best validation ELBO (default); last: the latest",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)


def _summary(r: dict) -> str:
    bin_ = f", {r['binarization']} binarization" if r.get("binarization") else ""
    if r["exact"]:
        k = "exact"
    elif r["method"] == "ais":
        k = f"AIS, T={r['ais_steps']}, {r['ais_chains']} chains"
    else:
        k = f"K={r['num_samples']}"
    if "reconstruction_nll" in r:
        return (
            f"{r['model']} on {r['dataset']} {r['split']} ({r['num_examples']} images): not a "
            f"generative model, no log p(x); reconstruction NLL {r['reconstruction_nll']:.3f} nats"
        )
    lines = [
        f"{r['model']} (epoch {r['epoch']}, {r['checkpoint']} checkpoint) on {r['dataset']} "
        f"{r['split']} ({r['num_examples']} images{bin_}), {k}",
        f"  NLL   {r['nll']:.3f} +- {r['nll_stderr']:.3f} nats  ({r['bits_per_dim']:.4f} bits/dim)",
    ]
    if not r["exact"]:
        active = f", {r['active_units']} active units" if "active_units" in r else ""
        lines.append(f"  ELBO  {r['elbo']:.3f} nats   KL(q||p) {r['kl']:.3f} nats{active}")
        if r["method"] == "ais":
            lines.append(
                f"  HMC acceptance {r['acceptance_rate']:.3f}; mean ESS over chains "
                f"{r['ess_mean']:.1f}"
            )
        else:
            lines.append(
                f"  PSIS k: mean {r['psis_khat_mean']:.3f}, max {r['psis_khat_max']:.3f}, "
                f"{100 * r['psis_khat_frac_above_0.7']:.1f}% of images above 0.7; "
                f"mean ESS {r['ess_mean']:.1f}"
            )
    if "prior_nll" in r:
        lines.append(
            f"  naive prior-sampling NLL ({r['prior_num_samples']} z ~ p(z)): "
            f"{r['prior_nll']:.3f} nats"
        )
    lines.append(f"  ({r['seconds']:.1f}s)")
    return "\n".join(lines)


def cmd_evaluate(args) -> int:
    from .runs import evaluate_run

    json_path = _writable_output(args.json) if args.json else None  # fail before the work
    _warn_if_training(args.run_dir)
    result = evaluate_run(
        args.run_dir,
        num_samples=args.num_samples,
        split=args.split,
        limit=args.limit,
        dataset=args.dataset,
        data_dir=args.data_dir,
        device=args.device,
        batch_size=args.batch_size,
        prior_samples=args.prior_samples,
        seed=args.seed,
        progress=not args.no_progress,
        which=args.checkpoint,
        method=args.method,
        ais_steps=args.ais_steps,
        ais_chains=args.ais_chains,
        devices=args.devices,
        ais_gradient_dtype=args.ais_gradient_dtype,
    )
    if result is None:
        return 0  # another process of a distributed evaluation: rank 0 reports
    print(_summary(result))
    _write_json(result, json_path)
    return 0


def _warn_if_training(run_dir: str) -> None:
    """A run still being trained is scored as it stands: say so, on stderr."""
    from .infer.checkpoint import RunLock

    holder = RunLock(run_dir).holder() if Path(run_dir).is_dir() else None
    if holder is not None:
        print(f"pyro-genmodels: warning: {run_dir} is still being trained (process {holder}); "
              "scoring its checkpoints as they are now", file=sys.stderr)  # fmt: skip


def _add_ais_options(p, with_gradient_dtype: bool = False) -> None:
    p.add_argument("--ais-steps", type=_positive, default=1000, help="AIS temperatures T (1000)")
    p.add_argument("--ais-chains", type=_positive, default=16, help="AIS chains per image (16)")
    if with_gradient_dtype:
        p.add_argument(
            "--ais-gradient-dtype", choices=("bfloat16", "float16"), default=None,
            help="compute AIS's leapfrog gradients in this dtype (densities and acceptance stay "
            "in full precision, so the estimate is as exact; bfloat16 is 2x faster on CPUs with "
            "AVX512-BF16 and on GPUs); default: full precision",
        )  # fmt: skip


def _write_json(result: dict, path: Path | None) -> None:
    from .infer.checkpoint import write_text_atomic

    if path is not None:
        write_text_atomic(json.dumps(result, indent=2) + "\n", path)


def _add_bdmc(sub) -> None:
    p = sub.add_parser(
        "bdmc",
        help="BDMC: AIS bounds on log p(x) from both sides, on images simulated from the model",
        description="Simulate (z, x) from a run's model; forward AIS from q(z|x) gives a "
        "stochastic lower bound on log p(x), reverse AIS from the true z an upper bound. "
        "Their gap bounds the error of AIS (and of any estimate between them) on such data.",
    )
    p.add_argument("run_dir", help="a run directory written by train")
    p.add_argument("--num-examples", type=_positive, default=100, help="images to simulate (100)")
    _add_ais_options(p)
    p.add_argument("--json", help="write the results as JSON to this file")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.set_defaults(func=cmd_bdmc)


def cmd_bdmc(args) -> int:
    from .runs import bdmc_run

    json_path = _writable_output(args.json) if args.json else None
    r = bdmc_run(args.run_dir, args.num_examples, args.ais_steps, args.ais_chains,
                 args.device, args.seed, args.checkpoint)  # fmt: skip
    print(
        f"{r['model']} (epoch {r['epoch']}): BDMC on {r['num_examples']} simulated images, "
        f"AIS T={r['ais_steps']}, {r['ais_chains']} chains\n"
        f"  NLL between {r['nll_lower_bound']:.3f} (reverse AIS) and {r['nll_upper_bound']:.3f} "
        f"(forward AIS) nats; gap mean {r['gap_mean']:.3f}, max {r['gap_max']:.3f}\n"
        f"  HMC acceptance {r['acceptance_rate']:.3f}  ({r['seconds']:.1f}s)"
    )
    _write_json(r, json_path)
    return 0


def _add_sample(sub) -> None:
    p = sub.add_parser(
        "sample",
        help="draw images from a trained model into a PNG grid",
        description="Sample from the model of a run (its best checkpoint, or --checkpoint last) "
        "or of a shipped checkpoint by name into a PNG grid.",
    )
    p.add_argument("run_dir", help="a run directory written by train")
    p.add_argument("--num", type=_positive, required=True, help="number of images")
    p.add_argument("--out", required=True, help="output PNG file")
    p.add_argument(
        "--mean",
        action="store_true",
        help="show the likelihood's mean (pixel probabilities) instead of a sample",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument(
        "--checkpoint",
        choices=("best", "last"),
        default="best",
        help="the best validation epoch (default, as evaluate) or the last",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.set_defaults(func=cmd_sample)


def cmd_sample(args) -> int:
    import torch

    from .plots import plot_images
    from .runs import load_run

    _writable_output(args.out, ".png")
    run = load_run(args.run_dir, args.device, args.checkpoint)
    torch.manual_seed(args.seed)
    kwargs = {"mean": True} if args.mean else {}
    images = run.module.sample(args.num, **kwargs)
    title = f"{run.model_name}: {args.num} {'means' if args.mean else 'samples'}"
    plot_images(images, args.out, title=title, value_range=run.module.likelihood.value_range)
    print(f"wrote {args.out}")
    return 0


PLOT_KINDS = ("curves", "reconstructions", "traversals", "manifold", "embedding")


def _add_plot(sub) -> None:
    from .data import DATASETS, SPLITS

    p = sub.add_parser(
        "plot",
        help="figures of a trained run: curves, reconstructions, traversals, manifold, embedding",
        description="Draw one figure of a run into a PNG. curves: training loss and validation "
        "ELBO/KL per epoch; reconstructions: inputs next to their reconstructions; traversals: "
        "vary one latent dimension at a time around an image's code; manifold: decode a grid "
        "of z (latent_dim 2 only); embedding: q(z|x) means of a split in 2-D (PCA or t-SNE), "
        "coloured by label.",
    )
    p.add_argument("run_dir", help="a run directory written by train")
    p.add_argument("--kind", choices=PLOT_KINDS, required=True, help="which figure")
    p.add_argument("--out", required=True, help="output PNG file")
    p.add_argument("--split", choices=SPLITS, default="test", help="data split (test)")
    p.add_argument(
        "--limit", type=_positive, help="use the first N images (reconstructions 16, else 2000)"
    )
    p.add_argument(
        "--dataset",
        choices=DATASETS,
        help="another data set of the same shape (e.g. mnist for labels with binarized-mnist)",
    )
    p.add_argument("--data-dir", help="data directory (default: the run's, then the usual)")
    p.add_argument("--method", choices=("pca", "tsne"), default="pca", help="embedding (pca)")
    p.add_argument(
        "--dims",
        type=_positive,
        default=10,
        help="traverse this many latent dims, the most active first (variance of the q(z|x) "
        "means over the images; 10)",
    )
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.set_defaults(func=cmd_plot)


def cmd_plot(args) -> int:
    import torch

    from . import plots
    from .runs import load_run

    _writable_output(args.out, ".png")
    run = load_run(args.run_dir, args.device, args.checkpoint)
    torch.manual_seed(args.seed)
    module, kind = run.module, args.kind
    if kind == "curves":
        metrics_file = run.path / "metrics.jsonl"
        if not metrics_file.is_file():
            raise FileNotFoundError(f"no metrics.jsonl in {run.path}")
        lines = metrics_file.read_text().splitlines()
        plots.plot_training_curves([json.loads(line) for line in lines if line.strip()], args.out)
    elif kind == "manifold":
        plots.plot_latent_manifold(module, path=args.out)
    else:
        if not hasattr(module, "encode"):
            raise ValueError(f"{run.model_name} has no encoder, so no {kind} plot")
        limit = args.limit or (16 if kind == "reconstructions" else 2000)
        data = run.dataset(args.split, args.dataset, args.data_dir, limit)
        x = data.fixed()
        if kind == "reconstructions":
            x_rec = module.reconstruct(x.to(module.device)).cpu()
            plots.plot_reconstructions(
                x, x_rec, args.out, value_range=module.likelihood.value_range
            )
            print(f"wrote {args.out}")
            return 0
        z = torch.cat([module.encode(b.to(module.device)).cpu() for b in x.split(500)])
        if kind == "traversals":
            dims = plots.most_active_dims(z, args.dims)
            plots.plot_traversals(module, x, dims=dims, path=args.out)
        else:
            if data.labels is None or len(data.labels) != len(x):
                raise ValueError(
                    f"{data.describe()['dataset']} has no labels to colour the embedding; "
                    "pass --dataset with labels of the same shape (e.g. mnist)"
                )
            how = args.method if z.shape[1] > 2 else "as they are"
            title = f"{run.model_name}: q(z|x) means of {len(x)} {args.split} images, {how}"
            plots.plot_embedding(z, data.labels, args.method, args.out, title)
    print(f"wrote {args.out}")
    return 0


def _add_list(sub) -> None:
    p = sub.add_parser(
        "list", help="list models, guide families, data sets (or recipes, shipped checkpoints)"
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--presets", action="store_true", help="the training recipes for train --preset"
    )
    what.add_argument(
        "--pretrained", action="store_true", help="the shipped checkpoints in pretrained/"
    )
    p.set_defaults(func=cmd_list)


def _list_presets() -> None:
    from .presets import list_presets, load_preset

    for name in list_presets():
        preset = load_preset(name)
        print(f"{name}: {preset.description}")
        print(f"    train --preset {name}  (model {preset.model}, dataset {preset.dataset})")
        settings = {**preset.model_config, **preset.train}
        print("    " + ", ".join(f"{k}={v}" for k, v in settings.items()))


def _list_pretrained() -> None:
    import json

    from .pretrained import EVALUATION_NAME, list_pretrained, pretrained_dir

    names = list_pretrained()
    if not names:
        print(f"no shipped checkpoints in {pretrained_dir()}")
    for name in names:
        path = pretrained_dir() / name
        line = f"{name}: {path}"
        if (path / EVALUATION_NAME).is_file():
            r = json.loads((path / EVALUATION_NAME).read_text())
            line += (
                f"  (test NLL {r['nll']:.2f} +- {r['nll_stderr']:.2f} nats, "
                f"K={r['num_samples']}, {r['num_examples']} images)"
            )
        print(line)


def cmd_list(args) -> int:
    from . import list_models
    from .data import DATASETS
    from .models import family_options, list_families
    from .registry import config_keys

    if args.presets:
        _list_presets()
        return 0
    if args.pretrained:
        _list_pretrained()
        return 0
    for name in list_models():
        print(f"model {name}: config keys {', '.join(config_keys(name))}")
    families = []
    for name in list_families():
        options = list(family_options(name).__dataclass_fields__)
        families.append(f"{name} ({', '.join(options)})" if options else name)
    print(f"guide families (options nested under the guide): {', '.join(families)}")
    print(f"datasets: {', '.join(DATASETS)}")
    print("recipes: pyro-genmodels list --presets; shipped checkpoints: list --pretrained")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pyro-genmodels",
        description="Deep generative models for images as Pyro programs: train, evaluate "
        "log p(x), sample.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"pyro-genmodels {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train(sub)
    _add_evaluate(sub)
    _add_bdmc(sub)
    _add_sample(sub)
    _add_plot(sub)
    _add_list(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    import matplotlib
    import pyro

    matplotlib.use("Agg")
    args = build_parser().parse_args(argv)
    try:
        with pyro.settings.context(module_local_params=True):  # parameters live in modules
            return args.func(args)
    except KeyboardInterrupt:
        hint = ""
        if args.command == "train":  # only train's --out is a run directory with a checkpoint
            hint = (
                f"; the last complete epoch is checkpointed in {args.out} (continue with --resume)"
                if (Path(args.out) / "checkpoint.pt").is_file()
                else "; no epoch was complete, nothing was saved"
            )
        print(f"pyro-genmodels: interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - every failure becomes one line
        if os.environ.get("PYRO_GENMODELS_DEBUG"):
            raise
        expected = isinstance(e, ValueError | OSError | RuntimeError)
        kind = "error" if expected else f"unexpected {type(e).__name__}"
        print(f"pyro-genmodels: {kind}: {_one_line(e)}", file=sys.stderr)
        return EXIT_ERROR if expected else 1


if __name__ == "__main__":
    sys.exit(main())
