"""Issue 12: training on PyTorch Lightning, DDP on CPU (gloo), distributed evaluation."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from test_cli import assert_one_line_error, run

import pyro_genmodels as pg
from pyro_genmodels.infer import TrainConfig, Trainer, load_checkpoint

SMALL = ["--model", "vae", "--dataset", "digits", "--latent-dim", "4", "--hidden-dims", "32,16",
         "--no-progress", "--limit", "600"]  # fmt: skip


def cli(*argv, timeout=600):
    """The CLI in a subprocess (DDP launches its other processes by re-running it)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "pyro_genmodels.cli", *map(str, argv)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def rows(run_dir):
    return [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    a = cli("train", *SMALL, "--epochs", 3, "--batch-size", 64, "--out", one)
    assert a.returncode == 0, a.stderr
    b = cli("train", *SMALL, "--epochs", 3, "--batch-size", 32, "--devices", 2, "--strategy",
            "ddp", "--accelerator", "cpu", "--out", two)  # fmt: skip
    assert b.returncode == 0, b.stderr
    assert b.stdout.count("trained 3 epochs") == 1  # rank 0 reports, once
    single, ddp = rows(one), rows(two)
    assert [r["epoch"] for r in ddp] == [1, 2, 3]  # one row per epoch, not one per rank
    # the same global batch (2 x 32 = 64): the validation ELBO follows the same path; the
    # runs differ only in the order of the images and the noise (measured gap < 0.15 nats)
    for s, d in zip(single, ddp, strict=True):
        assert abs(s["valid_elbo"] - d["valid_elbo"]) < 1.0, (s, d)
    assert ddp[-1]["valid_elbo"] > ddp[0]["valid_elbo"] + 1  # and it trains
    # a DDP checkpoint is an ordinary one: a single-process evaluate reads it
    ev = cli("evaluate", two, "--num-samples", 20, "--json", tmp_path / "e.json", "--no-progress")
    assert ev.returncode == 0, ev.stderr
    assert json.loads((tmp_path / "e.json").read_text())["epoch"] == 3


@pytest.mark.slow
def test_distributed_evaluate_equals_single_process_image_by_image(tmp_path):
    out = tmp_path / "r"
    assert cli("train", *SMALL, "--epochs", 2, "--out", out).returncode == 0
    results = []
    for devices in (1, 2):
        path = tmp_path / f"e{devices}.json"
        r = cli("evaluate", out, "--num-samples", 50, "--batch-size", 40, "--devices", devices,
                "--json", path, "--no-progress")  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("NLL") == 1
        results.append(json.loads(path.read_text()))
    single, dist = results
    assert dist["num_examples"] == single["num_examples"] == len(single["per_image_nll"])
    assert dist["per_image_nll"] == single["per_image_nll"]
    for key in ("nll", "elbo", "kl", "psis_khat_mean", "ess_mean"):
        assert dist[key] == pytest.approx(single[key], rel=1e-12), key


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_and_loses_at_most_that_epoch(tmp_path):
    out = tmp_path / "r"
    cmd = [sys.executable, "-m", "pyro_genmodels.cli", "train", *SMALL, "--hidden-dims",
           "256,256", "--epochs", "40", "--batch-size", "16", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            metrics = out / "metrics.jsonl"
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
                break
            time.sleep(0.05)
        time.sleep(0.3)  # into the middle of the next epoch
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done = load_checkpoint(out / "checkpoint.pt")["epoch"]  # not corrupt: atomic writes
    assert done >= 2 and len(rows(out)) == done
    r = cli("train", "--resume", "--out", out, "--epochs", done + 2, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert [m["epoch"] for m in rows(out)] == list(range(1, done + 3))


def _tiny(**config):
    torch.manual_seed(0)
    config = {"image_shape": (1, 4, 4), "latent_dim": 2, "hidden_dims": (8,), **config}
    return pg.create_model("vae", **config), torch.bernoulli(torch.full((48, 1, 4, 4), 0.4))


@pytest.mark.parametrize(
    "model_config, train_config",
    [
        ({}, {"objective": "elbo"}),
        ({}, {"objective": "meanfield"}),
        ({}, {"objective": "iwae", "num_particles": 3}),
        ({"guide": "gmvae", "prior_components": 3}, {"objective": "enum"}),
        ({}, {"free_bits": 0.5}),
        ({}, {"beta": 4.0, "anneal_epochs": 1.0}),
        (
            {
                "guide": "categorical",
                "latent_dim": 3,
                "guide_options": {"num_classes": 4, "temperature": 0.7},
            },
            {},
        ),
    ],  # fmt: skip
)
def test_every_objective_trains_through_the_lightning_module(model_config, train_config):
    vae, data = _tiny(**model_config)
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    config = TrainConfig(epochs=1, batch_size=16, progress=False, **train_config)
    trainer = Trainer(vae, config)
    metrics = trainer.fit(data, data[:16])
    assert trainer.step == 3 and len(metrics) == 1
    assert torch.isfinite(torch.tensor([metrics[0]["train_loss"], metrics[0]["valid_elbo"]])).all()
    changed = [k for k, v in vae.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and not vae.training


def test_annealing_reaches_beta_at_the_configured_epoch():
    vae, data = _tiny()
    config = TrainConfig(epochs=4, batch_size=16, beta=0.5, anneal_epochs=2, progress=False)
    trainer = Trainer(vae, config)
    metrics = trainer.fit(data)
    # 3 steps per epoch: the weight after each epoch's last step
    assert [m["kl_weight"] for m in metrics] == pytest.approx([0.25, 0.5, 0.5, 0.5])
    assert trainer.kl_weight(0, 3) == pytest.approx(0.5 / 6)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--devices", 0], "devices must be a positive integer, got 0"),
        (["--strategy", "ddpp"], "unknown strategy 'ddpp'; valid: auto, ddp"),
        (["--accelerator", "gpu"], "--accelerator gpu was requested but no CUDA device"),
        (["--precision", "8"], "invalid choice: '8'"),
        (["--logger", "wandb"], "invalid choice: 'wandb'"),
        (
            ["--device", "cpu", "--accelerator", "gpu"],
            "--device cpu and --accelerator gpu disagree",
        ),
    ],
)
def test_bad_distributed_options_are_one_line_errors(
    options, message, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as here, on a GPU machine
    code, _, err = run(capsys, "train", *SMALL, "--epochs", 1, *options, "--out", tmp_path / "r")
    assert_one_line_error(code, err, message)
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_the_csv_logger_writes_lightning_logs_in_the_run_directory(tmp_path, capsys):
    out = tmp_path / "r"
    code, _, err = run(capsys, "train", *SMALL, "--epochs", 2, "--logger", "csv", "--out", out)
    assert code == 0, err
    logs = list((out / "lightning_logs").glob("version_*/metrics.csv"))
    assert len(logs) == 1
    header, *lines = logs[0].read_text().splitlines()
    assert "valid_elbo" in header and "train_loss" in header
    column = header.split(",").index("valid_elbo")
    logged = [float(v.split(",")[column]) for v in lines if v.split(",")[column]]
    assert logged == pytest.approx([r["valid_elbo"] for r in rows(out)])
