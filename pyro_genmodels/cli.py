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
    """argparse with one-line errors, and "did you mean" for a misspelt choice."""

    def error(self, message: str):
        import difflib
        import re

        wrong = re.match(r"argument (\S+): invalid choice: '(.*)' \(choose from (.*)\)$", message)
        if wrong:
            flag, value, valid = wrong[1], wrong[2], re.findall(r"'([^']*)'", wrong[3])
            close = difflib.get_close_matches(value, valid, n=1)
            mean = f" (did you mean {close[0]!r}?)" if close else ""
            message = f"argument {flag}: invalid choice {value!r}{mean}; valid: {', '.join(valid)}"
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


#: Python arguments that library messages name, and the flags that set them here
PYTHON_TO_FLAG = {"data_dir=": "--data-dir"}


def _one_line(e: BaseException) -> str:
    """The message on one line, naming the command's flags instead of Python arguments."""
    text = " ".join(str(e).split()) or type(e).__name__
    for argument, flag in PYTHON_TO_FLAG.items():
        text = text.replace(argument, flag)
    return text


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


#: TrainConfig fields that say where and how the steps run, not what is optimized
ENGINE_FIELDS = ("accelerator", "devices", "num_nodes", "strategy", "precision", "compile",
                 "logger", "validate", "progress")  # fmt: skip
#: model config fields shown with the guide options
GUIDE_FIELDS = ("guide", "prior")

TRAIN_EXAMPLES = """examples:
  # a VAE on the embedded digits (offline, about a minute on a laptop CPU)
  pyro-genmodels train --model vae --dataset digits --out runs/digits
  # a published recipe, then its figures
  pyro-genmodels train --preset vae-paper --out runs/vae-paper
  pyro-genmodels evaluate runs/vae-paper --num-samples 5000
  # another posterior family with one of its options, on a GPU in mixed precision
  pyro-genmodels train --model vae --dataset binarized-mnist --guide low-rank --rank 4 \\
      --accelerator gpu --precision bf16-mixed --out runs/low-rank
"""


def _add_train(sub) -> None:
    from .configargs import add_config_arguments
    from .data import BINARIZATIONS, DATASETS
    from .distributions import LIKELIHOODS
    from .infer import TrainConfig
    from .models.guides import family_class, list_families
    from .models.priors import PRIORS
    from .registry import config_classes, list_models

    p = sub.add_parser(
        "train",
        help="train a model on a data set; writes RUN_DIR/checkpoint.pt and metrics.jsonl",
        description="Train a model by SVI. Each epoch writes RUN_DIR/checkpoint.pt atomically "
        "(resumable with --resume) and appends to RUN_DIR/metrics.jsonl. The model, guide "
        "and training options are generated from the config dataclasses (pyro-genmodels list "
        "shows each model's keys); --set KEY=VALUE passes any model key, guide.KEY=VALUE any "
        "guide option.",
        epilog=TRAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run = p.add_argument_group("run")
    run.add_argument("--out", required=True, help="run directory")
    recipe = run.add_mutually_exclusive_group()
    recipe.add_argument(
        "--preset",
        metavar="NAME",
        help="start from a named recipe (pyro-genmodels list --presets); options given here "
        "override it",
    )
    recipe.add_argument(
        "--config", metavar="FILE.toml", help="start from a recipe file (the --preset format)"
    )
    run.add_argument("--resume", action="store_true", help="continue the run in --out")
    run.add_argument(
        "--set",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any model config key (e.g. --set gaussian_scale=0.1), or guide.KEY for a guide "
        "option (e.g. --set guide.rank=4)",
    )
    models = dict(sorted(config_classes().items(), key=lambda kv: (kv[0] != "vae", kv[0])))
    model = p.add_argument_group("model (keys of each model's config)")
    model.add_argument(
        "--model",
        choices=list_models(),
        help="model name (pyro-genmodels list); required unless --resume or a recipe",
    )
    add_config_arguments(
        model,
        models,  # the VAE first: its comments document the keys it shares with the others
        MODEL_DEST,
        skip=("image_shape", "guide_options", *GUIDE_FIELDS),
        choices={"likelihood": LIKELIHOODS},
    )
    guide = p.add_argument_group("guide: q(z|x) and the prior (each family's options nested)")
    add_config_arguments(
        guide,
        {name: cls for name, cls in models.items() if "guide" in cls.__dataclass_fields__},
        MODEL_DEST,
        only=GUIDE_FIELDS,
        choices={"guide": list_families(), "prior": ("auto", *PRIORS)},
    )
    add_config_arguments(
        guide, {f"guide {name}": family_class(name).Options for name in list_families()},
        GUIDE_DEST,
    )  # fmt: skip
    data = p.add_argument_group("data")
    data.add_argument(
        "--dataset", choices=DATASETS, help="data set; required unless --resume or a recipe"
    )
    data.add_argument("--data-dir", help="data directory (default: $PYRO_GENMODELS_DATA or cache)")
    data.add_argument("--limit", type=_positive, help="keep the first N training examples")
    data.add_argument(
        "--binarization",
        choices=BINARIZATIONS,
        help="for Bernoulli likelihoods on grey-level data: sample once (static, the "
        "default) or every batch (dynamic); binarized-mnist is static",
    )
    data.add_argument("--no-download", action="store_true", help="never try to download data")
    data.add_argument(
        "--image-size", type=int, choices=(32, 64), help="sprites: 32x32 for fast runs (64)"
    )
    add_config_arguments(
        p.add_argument_group("training"), {"train": TrainConfig}, TRAIN_DEST,
        skip=ENGINE_FIELDS, aliases={"epochs": ["--max-epochs"]},
    )  # fmt: skip
    add_config_arguments(
        p.add_argument_group("engine (Lightning: where and how the steps run)"),
        {"train": TrainConfig}, TRAIN_DEST, only=ENGINE_FIELDS,
        aliases={"accelerator": ["--device"]},
    )  # fmt: skip
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
        image_size=args.image_size,
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


EVAL_DEST, RUN_DEST, DATA_DEST = "eval.", "run.", "data."


def _add_command_options(p, config_cls, with_data: bool) -> None:
    """The options of ``config_cls``, then which run and (``with_data``) which images."""
    from .configargs import add_config_arguments
    from .evaluation import DataOptions, RunOptions

    add_config_arguments(p.add_argument_group("settings"), {"": config_cls}, EVAL_DEST)
    add_config_arguments(p.add_argument_group("run"), {"": RunOptions}, RUN_DEST)
    if with_data:
        add_config_arguments(p.add_argument_group("images"), {"": DataOptions}, DATA_DEST)


def _options(args, config_cls):
    """The command's config, run options and data options from what the user gave; a bad
    value is a ValueError that names the flag (``--ais-steps``), not the field."""
    import re

    from .configargs import given
    from .evaluation import DataOptions, RunOptions

    built = []
    for cls, dest in ((config_cls, EVAL_DEST), (RunOptions, RUN_DEST), (DataOptions, DATA_DEST)):
        try:
            built.append(cls(**given(args, dest)))
        except ValueError as e:
            names = "|".join(cls.__dataclass_fields__)
            flags = re.sub(rf"\b({names})\b", lambda m: "--" + m[1].replace("_", "-"), str(e))
            raise ValueError(flags) from None
    return tuple(built)


def _add_evaluate(sub) -> None:
    from .evaluation import EvalConfig

    p = sub.add_parser(
        "evaluate",
        help="importance-weighted (or exact) test log p(x) of a run, with PSIS diagnostics",
        description="Estimate log p(x) per example by importance sampling from q(z|x) "
        "(exact for models without latents) and print NLL, ELBO, bits/dim, KL and Pareto k.",
        epilog="examples:\n  pyro-genmodels evaluate vae-paper --num-samples 1000 --limit 500\n"
        "  pyro-genmodels evaluate runs/vae --method ais --ais-steps 500 --limit 100\n"
        "  pyro-genmodels evaluate runs/vae --json results.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", help="a run directory written by train, or a shipped name")
    p.add_argument("--json", help="write the results as JSON to this file; while it runs, "
                   "FILE.partial keeps the batches done, and the same command continues from "
                   "them after an interruption")  # fmt: skip
    _add_command_options(p, EvalConfig, with_data=True)
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
    if "mig" in r:
        lines.append(
            f"  disentanglement on {r['disentanglement_num_images']} images: MIG {r['mig']:.3f}, "
            f"SAP {r['sap']:.3f}, DCI {r['dci_disentanglement']:.3f} / "
            f"{r['dci_completeness']:.3f} / {r['dci_informativeness']:.3f}, modularity "
            f"{r['modularity']:.3f}; beta-VAE score {r['beta_vae_score']:.3f}, FactorVAE score "
            f"{r['factor_vae_score']:.3f}"
        )
    lines.append(f"  ({r['seconds']:.1f}s)")
    return "\n".join(lines)


def cmd_evaluate(args) -> int:
    from .evaluation import EvalConfig, evaluate_run, partial_files

    json_path = _writable_output(args.json) if args.json else None  # fail before the work
    config, run, data = _options(args, EvalConfig)
    _warn_if_training(args.run_dir)
    partial = _partial_path(json_path) if json_path else None
    if partial is not None and _first_process() and partial_files(partial):
        print(f"pyro-genmodels: continuing from {partial} (the batches it holds of this same "
              "evaluation; a file from another is replaced)", file=sys.stderr)  # fmt: skip
    result = evaluate_run(args.run_dir, config, run, data, partial=partial)
    if result is None:
        return 0  # another process of a distributed evaluation: rank 0 reports
    print(_summary(result))
    _write_json(result, json_path)
    return 0


def _first_process() -> bool:
    """Whether this is the first process of a multi-process run on this machine (or no such
    run): the one that reports."""
    return os.environ.get("LOCAL_RANK", "0") == "0"


def _partial_path(json_path: Path) -> Path:
    """Where ``evaluate --json FILE`` keeps its per-batch results while it runs."""
    return json_path.with_name(json_path.name + ".partial")


def _warn_if_training(run_dir: str) -> None:
    """A run still being trained is scored as it stands: say so, on stderr."""
    from .infer.checkpoint import RunLock

    holder = RunLock(run_dir).holder() if Path(run_dir).is_dir() else None
    if holder is not None:
        print(f"pyro-genmodels: warning: {run_dir} is still being trained (process {holder}); "
              "scoring its checkpoints as they are now", file=sys.stderr)  # fmt: skip


def _write_json(result: dict, path: Path | None) -> None:
    from .infer.checkpoint import write_text_atomic

    if path is not None:
        write_text_atomic(json.dumps(result, indent=2) + "\n", path)


def _add_bdmc(sub) -> None:
    from .evaluation import BDMCConfig

    p = sub.add_parser(
        "bdmc",
        help="BDMC: AIS bounds on log p(x) from both sides, on images simulated from the model",
        description="Simulate (z, x) from a run's model; forward AIS from q(z|x) gives a "
        "stochastic lower bound on log p(x), reverse AIS from the true z an upper bound. "
        "Their gap bounds the error of AIS (and of any estimate between them) on such data.",
    )
    p.add_argument("run_dir", help="a run directory written by train, or a shipped name")
    p.add_argument("--json", help="write the results as JSON to this file")
    _add_command_options(p, BDMCConfig, with_data=False)
    p.set_defaults(func=cmd_bdmc)


def cmd_bdmc(args) -> int:
    from .evaluation import BDMCConfig, bdmc_run

    json_path = _writable_output(args.json) if args.json else None
    config, run, _ = _options(args, BDMCConfig)
    r = bdmc_run(args.run_dir, config, run)
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
    from .evaluation import SampleConfig

    p = sub.add_parser(
        "sample",
        help="draw images from a trained model into a PNG grid",
        description="Sample from the model of a run (its best checkpoint, or --checkpoint last) "
        "or of a shipped checkpoint by name into a PNG grid.",
        epilog="example:\n  pyro-genmodels sample vae-paper --num 64 --out samples.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", help="a run directory written by train, or a shipped name")
    p.add_argument("--out", required=True, help="output PNG file")
    _add_command_options(p, SampleConfig, with_data=False)
    p.set_defaults(func=cmd_sample)


def cmd_sample(args) -> int:
    from .evaluation import SampleConfig, sample_run

    _writable_output(args.out, ".png")
    config, run, _ = _options(args, SampleConfig)
    print(f"wrote {sample_run(args.run_dir, args.out, config, run)}")
    return 0


def _add_plot(sub) -> None:
    from .evaluation import PlotConfig

    p = sub.add_parser(
        "plot",
        help="figures of a trained run: curves, reconstructions, traversals, manifold, embedding",
        description="Draw one figure of a run into a PNG. curves: training loss and validation "
        "ELBO/KL per epoch; reconstructions: inputs next to their reconstructions; traversals: "
        "vary one latent dimension at a time around an image's code; manifold: decode a grid "
        "of z (latent_dim 2 only); embedding: q(z|x) means of a split in 2-D (PCA or t-SNE), "
        "coloured by label. Reconstructions use the first 16 images, traversals and "
        "embeddings the first 2000, unless --limit.",
        epilog="examples:\n  pyro-genmodels plot vae-paper --kind traversals --out traversals.png"
        "\n  pyro-genmodels plot vae-paper --kind embedding --dataset mnist --method tsne "
        "--out tsne.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", help="a run directory written by train, or a shipped name")
    p.add_argument("--out", required=True, help="output PNG file")
    _add_command_options(p, PlotConfig, with_data=True)
    p.set_defaults(func=cmd_plot)


def cmd_plot(args) -> int:
    from .evaluation import PlotConfig, plot_run

    _writable_output(args.out, ".png")
    config, run, data = _options(args, PlotConfig)
    print(f"wrote {plot_run(args.run_dir, args.out, config, run, data)}")
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
            how = "exact" if r.get("exact") else f"K={r['num_samples']}"
            line += (
                f"  (test NLL {r['nll']:.2f} +- {r['nll_stderr']:.2f} nats, "
                f"{how}, {r['num_examples']} images)"
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
        elif args.command == "evaluate" and args.json:
            from .evaluation import partial_files

            partial = _partial_path(Path(args.json))
            if partial_files(partial):
                hint = f"; the batches done are in {partial}: the same command continues from them"
        if _first_process():  # one line, not one per DDP process
            print(f"pyro-genmodels: interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - every failure becomes one line
        if os.environ.get("PYRO_GENMODELS_DEBUG"):
            raise
        from .infer import TrainingDiverged

        if isinstance(e, TrainingDiverged) and not _first_process():
            return EXIT_ERROR  # raised on every process at once: the first one reports it
        expected = isinstance(e, ValueError | OSError | RuntimeError)
        kind = "error" if expected else f"unexpected {type(e).__name__}"
        print(f"pyro-genmodels: {kind}: {_one_line(e)}", file=sys.stderr)
        return EXIT_ERROR if expected else 1


if __name__ == "__main__":
    sys.exit(main())
