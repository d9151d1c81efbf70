"""Training: checkpoints, exact resume, divergence handling, annealing, learning."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import pyro_genmodels as pg
from pyro_genmodels.infer import (
    CheckpointError,
    TrainConfig,
    TrainingDiverged,
    fit,
    kl_weight,
    load_checkpoint,
    log_marginal,
    save_atomic,
)
from pyro_genmodels.runs import load_run, train_run

SMALL = {"latent_dim": 4, "hidden_dims": (32, 16)}


def _cfg(**kw):
    base = dict(epochs=2, batch_size=64, progress=False, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_checkpoint_round_trip(tmp_path):
    module, metrics = train_run("vae", "digits", tmp_path / "run", SMALL, _cfg(epochs=1), limit=200)
    run = load_run(tmp_path / "run")
    for key, value in module.state_dict().items():
        assert torch.equal(value, run.module.state_dict()[key]), key
    x = run.dataset("test", limit=10).fixed()
    torch.manual_seed(1)
    a = log_marginal(module.model, module.guide, x, 50)
    torch.manual_seed(1)
    b = log_marginal(run.module.model, run.module.guide, x, 50)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert rows == metrics and rows[0]["epoch"] == 1
    assert not list((tmp_path / "run").glob("*.tmp"))
    assert run.metadata["data"]["binarization"] == "static"


def test_best_checkpoint_follows_the_validation_elbo(tmp_path):
    _, metrics = train_run("vae", "digits", tmp_path / "r", SMALL, _cfg(epochs=4), limit=200)
    best_epoch = max(metrics, key=lambda r: r["valid_elbo"])["epoch"]
    best = load_run(tmp_path / "r", which="best")
    assert best.checkpoint["epoch"] == best_epoch
    assert load_run(tmp_path / "r", which="last").checkpoint["epoch"] == 4
    with pytest.raises(ValueError, match="unknown checkpoint"):
        load_run(tmp_path / "r", which="first")


@pytest.mark.parametrize("binarization", ["static", "dynamic"])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, binarization):
    kw = dict(limit=300, binarization=binarization)
    dataset = "digits"
    full, full_metrics = train_run("vae", dataset, tmp_path / "a", SMALL, _cfg(epochs=3), **kw)
    train_run("vae", dataset, tmp_path / "b", SMALL, _cfg(epochs=1), **kw)
    resumed, resumed_metrics = train_run(
        None, None, tmp_path / "b", train_config=_cfg(epochs=3), resume=True
    )
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(full_metrics) == drop(resumed_metrics)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["epoch"] == 3


def test_existing_run_needs_resume(tmp_path):
    train_run("vae", "digits", tmp_path / "r", SMALL, _cfg(epochs=1), limit=64)
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        train_run("vae", "digits", tmp_path / "r", SMALL, _cfg(epochs=1), limit=64)


class _Poisoned(torch.nn.Module):
    """A decoder that starts returning NaN after ``after`` calls."""

    def __init__(self, inner, after):
        super().__init__()
        self.inner, self.after, self.calls = inner, after, 0

    def forward(self, z):
        self.calls += 1
        out = self.inner(z)
        return out * float("nan") if self.calls > self.after else out


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, digits_binary):
    vae = pg.create_model("vae", image_shape=(1, 8, 8), **SMALL)
    x = digits_binary[:256]
    steps_per_epoch = 4
    # training steps call the decoder once; validation after each epoch calls it twice
    vae.decoder = _Poisoned(vae.decoder, after=steps_per_epoch + 2 + 1)
    with pytest.raises(
        TrainingDiverged, match="epoch 2, step 5.*last good checkpoint \\(epoch 1\\)"
    ):
        fit(vae, x, x[:32], _cfg(epochs=3), tmp_path)
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["epoch"] == 1
    assert all(
        torch.isfinite(v).all() for v in ckpt["module_state"].values() if v.is_floating_point()
    )


class _NaNGradient(torch.nn.Module):
    """A decoder whose output gradient becomes NaN on call ``at`` (the loss stays finite)."""

    def __init__(self, inner, at):
        super().__init__()
        self.inner, self.at, self.calls = inner, at, 0

    def forward(self, z):
        self.calls += 1
        out = self.inner(z)
        if self.calls == self.at and out.requires_grad:
            out.register_hook(lambda g: g * float("nan"))
        return out


def test_nan_gradient_on_the_last_step_is_never_checkpointed(tmp_path, digits_binary):
    vae = pg.create_model("vae", image_shape=(1, 8, 8), **SMALL)
    vae.decoder = _NaNGradient(vae.decoder, at=5)  # call 1 probes the plates; 5: last step
    with pytest.raises(TrainingDiverged, match="became NaN or infinite in epoch 1"):
        fit(vae, digits_binary[:256], config=_cfg(epochs=2), run_dir=tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "c.pt"
    save_atomic({"a": torch.ones(2)}, path)
    with pytest.raises(Exception):  # noqa: B017 - any pickling error
        save_atomic({"bad": lambda: None}, path)
    assert torch.equal(torch.load(path)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_the_rng_state_comes_back_from_a_weights_only_file(tmp_path):
    import random

    import numpy as np

    from pyro_genmodels.infer.checkpoint import get_rng_state, set_rng_state

    def draws():
        return torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random()  # noqa: NPY002

    torch.manual_seed(7)
    np.random.seed(7)  # noqa: NPY002
    random.seed(7)
    save_atomic({"rng": get_rng_state(torch.device("cpu"))}, tmp_path / "rng.pt")
    expected = draws()
    draws()  # the RNGs move on
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"], torch.device("cpu"))
    assert draws() == expected


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_run(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nothing.pt")
    with pytest.raises(CheckpointError, match="no run directory"):
        load_run(tmp_path / "missing")


def test_kl_annealing_schedule():
    config = _cfg(beta=2.0, anneal_epochs=2)
    weights = [kl_weight(config, s, steps_per_epoch=5) for s in range(12)]
    assert weights[0] == pytest.approx(0.2) and weights[4] == pytest.approx(1.0)
    assert weights[9:] == [2.0, 2.0, 2.0]
    assert all(a < b for a, b in zip(weights[:9], weights[1:10], strict=True))


def test_kl_annealing_per_epoch_holds_beta_e_over_n_through_epoch_e():
    """Tomczak & Welling's schedule: beta * e / anneal_epochs during (1-based) epoch e."""
    config = _cfg(beta=2.0, anneal_epochs=4, anneal_per="epoch")
    weights = [kl_weight(config, s, steps_per_epoch=3) for s in range(18)]
    expected = [0.5] * 3 + [1.0] * 3 + [1.5] * 3 + [2.0] * 9
    assert weights == pytest.approx(expected)
    with pytest.raises(ValueError, match="unknown anneal_per 'batch'; valid: step, epoch"):
        _cfg(anneal_per="batch")


@pytest.mark.slow
def test_training_improves_the_validation_elbo(tmp_path):
    config = {"latent_dim": 4, "hidden_dims": (128, 64)}
    _, metrics = train_run("vae", "digits", tmp_path / "r", config, _cfg(epochs=25, lr=1e-3))
    first, last = metrics[0]["valid_elbo"], metrics[-1]["valid_elbo"]
    assert last > first + 5.0, (first, last)
    assert metrics[-1]["valid_kl"] > 0.3  # the latent is in use (0.45 to 1.4 over seeds)


def _train_process(out, *options):
    cmd = [sys.executable, "-m", "pyro_genmodels.cli", "train", "--model", "vae", "--dataset",
           "digits", "--latent-dim", "4", "--hidden-dims", "256,256", "--batch-size", "16",
           "--no-progress", "--out", str(out), *options]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip


def _wait_for_epochs(out, n, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        metrics = out / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {n} epochs in {out}: {proc.communicate()}")


def test_ctrl_c_stops_training_with_the_checkpoint_named_and_the_lock_released(tmp_path):
    from pyro_genmodels.cli import EXIT_INTERRUPTED

    out = tmp_path / "r"
    proc = _train_process(out, "--epochs", "500")
    try:
        _wait_for_epochs(out, 1, proc)
        assert (out / "train.lock").read_text().split()[0] == str(proc.pid)
        proc.send_signal(signal.SIGINT)  # a real Ctrl-C, through Lightning's handler
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert err.strip().splitlines()[-1] == (
        f"pyro-genmodels: interrupted; the last complete epoch is checkpointed in {out} "
        "(continue with --resume)"
    )
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] >= 1
    assert not (out / "train.lock").exists()


def test_one_writer_per_run_directory(tmp_path, capsys):
    from test_cli import assert_one_line_error, run

    out = tmp_path / "r"
    args = ["train", "--model", "vae", "--dataset", "digits", "--latent-dim", "2", "--hidden-dims",
            "8", "--no-progress", "--epochs", 1, "--out", out]  # fmt: skip
    assert run(capsys, *args)[0] == 0
    hold = (f"import fcntl, os, time; f = open({str(out / 'train.lock')!r}, 'a+'); "
            "fcntl.flock(f, fcntl.LOCK_EX); f.write(str(os.getpid())); f.flush(); print(1, "
            "flush=True); time.sleep(60)")  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "1"  # it holds the lock
        code, _, err = run(capsys, "train", "--resume", "--out", out, "--epochs", 2)
        assert_one_line_error(code, err, f"{out} is being trained by process {holder.pid}")
        code, _, err = run(capsys, "evaluate", out, "--num-samples", 5, "--limit", 5,
                           "--no-progress")  # fmt: skip
        assert code == 0 and err.startswith(
            f"pyro-genmodels: warning: {out} is still being trained (process {holder.pid})"
        ), err
    finally:
        holder.kill()  # SIGKILL: the lock goes with the process
        holder.wait()
    # the holder was killed: its lock file remains, its lock does not
    code, _, err = run(capsys, "train", "--resume", "--out", out, "--epochs", 2)
    assert code == 0, err
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 2
    assert not (out / "train.lock").exists()
    # a finished run: nothing to do, and said so
    code, stdout, _ = run(capsys, "train", "--resume", "--out", out, "--epochs", 2)
    assert code == 0 and "has trained 2 of 2 epochs: nothing to do" in stdout


@pytest.mark.parametrize("error", [KeyboardInterrupt, ValueError])
def test_an_error_while_lightning_creates_the_batch_iterator_is_the_one_raised(
    error, tmp_path, monkeypatch
):
    # Lightning's teardown asks the length of a loader whose iterator was never made and
    # raises over the error that stopped it ("Please call `iter(combined_loader)` first."):
    # a Ctrl-C in that moment (CI met one) must still read as an interruption, and any other
    # error as itself
    from torch.utils.data import DataLoader

    def fails(self):
        raise error("while the iterator was being made")

    monkeypatch.setattr(DataLoader, "__iter__", fails)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(error) as raised:
        train_run("vae", "digits", tmp_path / "r", SMALL, _cfg(), limit=200)
    if error is ValueError:
        assert str(raised.value) == "while the iterator was being made"
    assert signal.getsignal(signal.SIGINT) is handler
    assert not (tmp_path / "r" / "train.lock").exists()
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_ctrl_c_before_the_first_epoch_says_nothing_was_saved(tmp_path):
    out = tmp_path / "r"
    proc = _train_process(out, "--epochs", "5", "--batch-size", "1")  # about 1400 steps an epoch
    try:
        deadline = time.time() + 120
        while not (out / "train.lock").exists() and time.time() < deadline:
            time.sleep(0.02)  # training has started
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert not (out / "checkpoint.pt").exists(), "an epoch finished: the test is too slow"
    assert err.strip().splitlines()[-1] == (
        "pyro-genmodels: interrupted; no epoch was complete, nothing was saved"
    )
