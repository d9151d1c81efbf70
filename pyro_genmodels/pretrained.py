"""Shipped checkpoints: ``NAME/`` run directories with a model card, inside the package.

Each holds ``best.pt`` (the module at its best validation ELBO, the weights a paper
reports), ``metrics.jsonl`` (the training curve), ``evaluation.json`` (the output of
the evaluation command in the card) and ``README.md`` (the model card). Being run
directories, they work with every command that reads one::

    pyro-genmodels evaluate vae-vampprior-paper --num-samples 5000

and in Python ``load_pretrained("vae-vampprior-paper")`` returns the model. The folder
is ``$PYRO_GENMODELS_PRETRAINED`` if set, else the package's own ``checkpoints/`` (package
data: it is in the wheel).

``python -m pyro_genmodels.export RUN_DIR NAME --evaluation FILE.json --out DIR`` copies a
finished run to ``DIR/NAME`` (default: the current directory) and writes its card.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
from pathlib import Path

import torch

from .infer.checkpoint import load_checkpoint, save_atomic, write_text_atomic
from .infer.train import BEST_NAME, CHECKPOINT_NAME, METRICS_NAME

CARD_NAME = "README.md"
EVALUATION_NAME = "evaluation.json"


def pretrained_dir() -> Path:
    """Where shipped checkpoints live: ``$PYRO_GENMODELS_PRETRAINED``, else the package's
    ``checkpoints/`` folder (package data)."""
    env = os.environ.get("PYRO_GENMODELS_PRETRAINED")
    return Path(env) if env else Path(__file__).resolve().parent / "checkpoints"


def list_pretrained() -> list[str]:
    """Names of the shipped checkpoints (folders of :func:`pretrained_dir` with a ``best.pt``)."""
    root = pretrained_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / BEST_NAME).is_file())


def pretrained_path(name: str) -> Path:
    """The run directory of a shipped checkpoint.

    :raises ValueError: an unknown name, listing the shipped ones.
    """
    path = pretrained_dir() / str(name)
    if not (path / BEST_NAME).is_file():
        names = ", ".join(list_pretrained()) or f"none in {pretrained_dir()}"
        raise ValueError(f"unknown pretrained model {name!r}; valid: {names}")
    return path


def load_pretrained(
    name: str | Path, device: str = "cpu", sha256: str | None = None
) -> torch.nn.Module:
    """A trained model, in eval mode, from a shipped checkpoint's name (see
    :func:`list_pretrained`), a run directory, a checkpoint file, or an ``https://``,
    ``http://`` or ``file://`` URL of a checkpoint file.

    A URL is downloaded once into ``torch.hub``'s cache (``$TORCH_HOME/hub/checkpoints/
    pyro-genmodels/``) with torch's downloader, which writes the file atomically; with
    ``sha256`` the download is verified and a mismatch leaves nothing in the cache. A local
    file given with ``sha256`` is verified too.

    >>> vae = load_pretrained("vae-vampprior-paper")  # doctest: +SKIP
    >>> log_px = log_marginal(vae.model, vae.guide, x, 5000)  # doctest: +SKIP

    :raises ValueError: an unknown name, a failed download or a wrong sha256; a checkpoint
        this version cannot read says why (e.g. written by a newer pyro-genmodels).
    """
    from .runs import load_run, module_from_checkpoint

    text = str(name)
    if text.startswith(("https://", "http://", "file://")):
        path = _download(text, sha256)
    else:
        path = Path(text)
        if not path.exists() and len(path.parts) == 1:
            path = pretrained_path(text)
        if path.is_dir():
            return load_run(path, device, which="best").module
        if sha256 is not None:
            _check_sha256(path, sha256)
    return module_from_checkpoint(load_checkpoint(path, map_location="cpu"), path, device)


def _check_sha256(path: Path, sha256: str) -> None:
    got = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    if got != sha256.lower():
        raise ValueError(f"{path} has sha256 {got}, not the expected {sha256}")


def _download(url: str, sha256: str | None) -> Path:
    """The cached copy of ``url`` (downloaded now if absent)."""
    name = url.rstrip("/").rsplit("/", 1)[-1] or "checkpoint.pt"
    folder = Path(torch.hub.get_dir()) / "checkpoints" / "pyro-genmodels"
    path = folder / (f"{sha256[:16]}-{name}" if sha256 else name)
    if path.is_file():
        if sha256 is not None:
            _check_sha256(path, sha256)
        return path
    folder.mkdir(parents=True, exist_ok=True)
    try:  # a temporary file beside the target, renamed when complete and verified
        torch.hub.download_url_to_file(url, str(path), hash_prefix=sha256, progress=False)
    except Exception as e:  # noqa: BLE001 - urllib, http and torch's hash check raise many types
        raise ValueError(f"could not download {url}: {type(e).__name__}: {e}") from None
    return path


def _card(
    name: str,
    best: dict,
    metrics: list[dict],
    evaluation: dict | None,
    note: str = "",
    train_config: dict | None = None,
    sha256: str | None = None,
) -> str:
    meta = best["metadata"]
    data = meta["data"]
    seconds = sum(row.get("seconds", 0.0) for row in metrics)
    last = metrics[-1] if metrics else {}
    stopped = (
        f"stopped early after epoch {last['epoch']} (patience)"
        if last.get("stopped_early")
        else f"{len(metrics)} epochs"
    )
    best_elbo = max(r.get("valid_elbo", float("-inf")) for r in metrics)
    exact = bool(evaluation and evaluation.get("exact"))  # an exact model's ELBO is -NLL
    lines = [
        f"# {name}",
        "",
        f"- model: `{meta['model']}`"
        + (f", recipe `--preset {meta['preset']}`" if meta.get("preset") else ""),
        f"- data: `{data['dataset']}` ({data['num_train']} training images), "
        f"{data['binarization']} binarization, image shape {tuple(meta['image_shape'])}",
        f"- training: {stopped}; these weights are epoch {best['epoch']}, the best validation "
        + (f"NLL ({-best_elbo:.3f} nats)" if exact else f"ELBO ({best_elbo:.3f} nats)"),
        f"- training time: {seconds / 3600:.2f} h of epochs (sum of `seconds` in metrics.jsonl)",
        *[f"- {line}" for line in _hardware_lines(metrics)],
        f"- written by pyro-genmodels {meta.get('version', '?')}",
        *([f"- sha256 of `best.pt`: `{sha256}`"] if sha256 else []),
        *([f"- {note}"] if note else []),
        "",
        "## Config",
        "",
        "```json",
        json.dumps(meta["model_config"], indent=2, default=str),
        "```",
    ]
    if train_config:
        lines += [
            "",
            "## Training settings",
            "",
            "```json",
            json.dumps(train_config, indent=2, default=str),
            "```",
        ]
    if evaluation is not None:
        e = evaluation
        images = f"{e['num_examples']} {e['split']} images"
        which = "".join(f" --{k} {e[k]}" for k in ("limit", "subset") if e.get(k))
        if e.get("subset"):
            images = f"a fixed random subset of {images}" + (
                f" (of the first {e['limit']})" if e.get("limit") else ""
            )
        if e.get("exact"):  # no K: the figure is the model's log-likelihood itself
            cmd = f"pyro-genmodels evaluate {name} --split {e['split']}{which}"
            figures = f"(exact, {images}), {e['bits_per_dim']:.4f} bits/dim"
        else:
            cmd = f"pyro-genmodels evaluate {name} --num-samples {e['num_samples']}"
            cmd += f" --split {e['split']}{which}"
            # the random stream of each image (recorded since 2026-12-07)
            cmd += "".join(f" --{k.replace('_', '-')} {e[k]}" for k in ("batch_size", "seed")
                           if e.get(k) is not None and (k, e[k]) != ("seed", 0))  # fmt: skip
            figures = (f"(K = {e['num_samples']}, {images}), ELBO {e['elbo']:.2f}, KL "
                       f"{e['kl']:.2f}, PSIS k mean {e['psis_khat_mean']:.2f}")  # fmt: skip
        lines += [
            "", "## Evaluation", "", "```", cmd, "```", "",
            f"NLL {e['nll']:.2f} +- {e['nll_stderr']:.2f} nats {figures}; {e['seconds']:.0f} s. "
            f"Full output: `{EVALUATION_NAME}`.",
        ]  # fmt: skip
    return "\n".join(lines) + "\n"


def _hardware_lines(metrics: list[dict]) -> list[str]:
    """One line per run of consecutive epochs on the same hardware, precision and
    compilation (as their metrics rows record it; rows from before that say so)."""
    lines = []
    for (where, precision, compiled), group in itertools.groupby(
        metrics, key=lambda r: (r.get("hardware"), r.get("precision"), r.get("compiled"))
    ):
        rows = list(group)
        first, last = rows[0]["epoch"], rows[-1]["epoch"]
        span = f"epoch {first}" if first == last else f"epochs {first}-{last}"
        what = "hardware and precision not recorded"
        if where is not None:
            what = f"{where}, precision {precision}" + (", torch.compile" if compiled else "")
        hours = sum(r.get("seconds", 0.0) for r in rows) / 3600
        lines.append(f"{span}: {what}; {hours:.2f} h")
    return lines


def export_pretrained(
    run_dir: str | Path,
    name: str,
    evaluation: str | Path | None = None,
    note: str = "",
    out_dir: str | Path = ".",
) -> Path:
    """Copy a run's ``best.pt`` and ``metrics.jsonl`` to ``out_dir/NAME`` with a model card
    (to ship it: ``out_dir="pyro_genmodels/checkpoints"`` in the source tree).

    :param evaluation: the ``evaluate --json`` output of the run, quoted in the card.
    :param note: a line for the card (the machine, the wall time).

    ``best.pt`` is written weights-only (``module_state`` and the run's metadata, the layout
    every version reads) and its sha256 goes in the card, for ``load_pretrained(URL,
    sha256=...)``.

    The card lists the model config, the data, the training settings (seed, optimizer,
    schedule: from ``best.pt``, or from the run's ``checkpoint.pt`` for runs older than that
    field) and the evaluation command with its figures.
    """
    run_dir = Path(run_dir)
    best = load_checkpoint(run_dir / BEST_NAME)
    metrics = [json.loads(line) for line in (run_dir / METRICS_NAME).read_text().splitlines()]
    result = json.loads(Path(evaluation).read_text()) if evaluation else None
    out = Path(out_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    keep = ("module_state", "metadata", "train_config", "metrics", "epoch", "step")
    weights = {"format": best["format"], "version": 1, **{k: best[k] for k in keep if k in best}}
    save_atomic(weights, out / BEST_NAME)
    sha256 = hashlib.sha256((out / BEST_NAME).read_bytes()).hexdigest()
    shutil.copyfile(run_dir / METRICS_NAME, out / METRICS_NAME)
    if result is not None:
        write_text_atomic(json.dumps(result, indent=2) + "\n", out / EVALUATION_NAME)
    # best.pt carries the training settings since they were added to it; before that, the
    # run's resumable checkpoint.pt is the record (the seed, optimizer and schedule).
    train_config = best.get("train_config")
    if train_config is None and (run_dir / CHECKPOINT_NAME).exists():
        train_config = load_checkpoint(run_dir / CHECKPOINT_NAME).get("train_config")
    card = _card(name, best, metrics, result, note, train_config, sha256)
    write_text_atomic(card, out / CARD_NAME)
    return out
