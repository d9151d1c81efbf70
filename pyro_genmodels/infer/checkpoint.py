"""Checkpoints written atomically (temp file + rename) and read with clear errors."""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_FORMAT = "pyro-genmodels-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or not one of ours."""


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same directory, then rename over ``path``."""
    _atomic_write(Path(path), lambda f: torch.save(obj, f))


def write_text_atomic(text: str, path: str | Path) -> None:
    """Write a text file atomically."""
    _atomic_write(Path(path), lambda f: f.write(text.encode("utf-8")))


def write_jsonl_atomic(rows: list[dict], path: str | Path) -> None:
    """Write one JSON object per line, atomically."""
    write_text_atomic("".join(json.dumps(r) + "\n" for r in rows), path)


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """Load a checkpoint written by :class:`~pyro_genmodels.infer.Trainer`.

    :raises CheckpointError: the file is missing, corrupt, or not a pyro-genmodels checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a pyro-genmodels checkpoint")
    if ckpt.get("version", 0) > CHECKPOINT_VERSION:
        library = (ckpt.get("metadata") or {}).get("version", "a newer version")
        raise CheckpointError(
            f"{path} was written by pyro-genmodels {library} in checkpoint format "
            f"{ckpt['version']}; this version reads formats up to {CHECKPOINT_VERSION}: "
            "upgrade pyro-genmodels"
        )
    return ckpt


def get_rng_state() -> dict:
    """Every RNG the training loop draws from, in a form ``torch.load(weights_only=True)`` reads."""
    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global RNG users seed
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the RNGs saved by :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (name, keys.numpy().astype(np.uint32), *rest)
    )
    random.setstate(_to_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(obj: Any) -> Any:
    if isinstance(obj, list | tuple):
        return tuple(_to_tuple(o) for o in obj)
    return obj
