"""Checkpoints read with clear errors, atomic writes (temp file + rename), the training
RNG state, and the lock that keeps one writer per run directory.

Format 2 is Lightning's checkpoint (``state_dict`` of the ``LightningModule``, whose
``net.`` entries are the model's, loops, optimizer, callbacks) with our keys added:
``format``, ``version``, ``train_config``, ``metadata``, ``rng``. Format 1 (before
training moved onto Lightning's checkpoints) held ``module_state`` and the counters at
the top level; both read the same through :func:`load_checkpoint`.
"""

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
CHECKPOINT_VERSION = 2


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
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the run from other users
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
    """Load a checkpoint of a run directory (``checkpoint.pt``, ``best.pt``), in any format.

    The result always has ``module_state`` (the model's state dict), ``epoch`` (completed
    epochs), ``step``, ``metrics``, ``train_config`` and ``metadata``.

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
    if ckpt["version"] >= 2:  # a Lightning checkpoint: the model is the module's "net."
        state = ckpt["state_dict"]
        ckpt["module_state"] = {k[4:]: v for k, v in state.items() if k.startswith("net.")}
        ckpt["metrics"] = list(state.get("_extra_state", {}).get("metrics", []))
        ckpt["epoch"], ckpt["step"] = len(ckpt["metrics"]), int(ckpt["global_step"])
    return ckpt


def get_rng_state(device: torch.device | None = None) -> dict:
    """The RNGs the training loop draws from (CPU torch, numpy, Python, and ``device``'s
    when it is a GPU), in a form ``torch.load(weights_only=True)`` reads."""
    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global RNG users seed
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    """Restore the RNGs saved by :func:`get_rng_state`; the saved GPU state goes to
    ``device`` when that is a GPU (a run resumed on the CPU has no use for it)."""
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (name, keys.numpy().astype(np.uint32), *rest)
    )
    random.setstate(state["python"])
    cuda = state.get("cuda")
    if device is not None and device.type == "cuda" and isinstance(cuda, torch.Tensor):
        torch.cuda.set_rng_state(cuda.cpu(), device)


class RunLock:
    """``RUN_DIR/train.lock``, held with ``flock`` while one process trains the run: the
    operating system releases it when that process ends, however it ends (SIGKILL too), and
    a second writer is a :class:`CheckpointError` naming the holder's PID."""

    def __init__(self, run_dir: str | Path):
        self.path, self.file = Path(run_dir) / "train.lock", None

    def acquire(self) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")  # noqa: SIM115 - held open while training
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            raise CheckpointError(
                f"{self.path.parent} is being trained by process {holder} ({self.path}); "
                "wait for it to finish or stop it"
            ) from None
        f.truncate(0)
        f.write(str(os.getpid()))
        f.flush()
        self.file = f

    def holder(self) -> str | None:
        """The PID of the process training the run now, or None (without taking the lock
        for longer than the test)."""
        import fcntl

        if not self.path.is_file():
            return None
        with open(self.path) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return f.read().strip() or "?"
            fcntl.flock(f, fcntl.LOCK_UN)
        return None

    def release(self) -> None:
        if self.file is not None:
            self.path.unlink(missing_ok=True)
            self.file.close()  # closing releases the lock
            self.file = None
