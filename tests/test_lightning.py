"""Issue 12: training on PyTorch Lightning, DDP on CPU (gloo), distributed evaluation."""

import json
import os
import signal
import subprocess
import sys
import time

import pyro
import pytest
import torch
from pyro import poutine
from test_cli import assert_one_line_error, run

import pyro_genmodels as pg
from pyro_genmodels.infer import TrainConfig, fit, kl_weight, load_checkpoint
from pyro_genmodels.infer.lightning import SVIModule

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
    assert b.stdout.count("stopped: the last epoch (3) was reached") == 1  # rank 0, once
    single, ddp = rows(one), rows(two)
    assert [r["epoch"] for r in ddp] == [1, 2, 3]  # one row per epoch, not one per rank
    # the same global batch (2 x 32 = 64): the validation ELBO follows the same path; the
    # runs differ only in the order of the images and the noise (measured gap < 0.15 nats)
    for s, d in zip(single, ddp, strict=True):
        assert abs(s["valid_elbo"] - d["valid_elbo"]) < 0.3, (s, d)
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


def _ctrl_c_when(ready, *argv, timeout=120):
    """The CLI in a session of its own; once ``ready(proc)``, a Ctrl-C as a terminal sends
    it (SIGINT to every process of the group). Returns the exit status and stderr after
    every process of the group has ended."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "pyro_genmodels.cli", *map(str, argv)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + timeout
        while not ready(proc) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=timeout)
        while time.time() < deadline:  # the group is empty: no process was left behind
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("a process of the run outlived the Ctrl-C")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return proc.returncode, err


def _launched_a_process(proc) -> bool:
    """Whether ``proc`` has a child running the CLI (the second process Lightning launches;
    other children, such as ``ldconfig`` while torch loads, do not count)."""
    try:
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
            children = f.read().split()
        for child in children:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if b"pyro_genmodels.cli" in f.read():
                    return True
    except FileNotFoundError:  # not started yet, or a child already gone
        pass
    return False


@pytest.mark.slow
def test_ctrl_c_stops_a_two_process_run_with_one_line(tmp_path):
    """A Ctrl-C reaches every process of a DDP run (as from a terminal): the run stops with
    the one line, once (not once per process), exit status 130, no process left behind, the
    lock released; also while the second process is still starting."""
    from pyro_genmodels.cli import EXIT_INTERRUPTED

    out = tmp_path / "r"
    assert cli("train", *SMALL, "--epochs", 1, "--out", out).returncode == 0
    # while the second process starts (Lightning has launched it: it is a child of the first)
    evaluate = ("evaluate", out, "--devices", 2, "--device", "cpu", "--method", "ais",
                "--ais-steps", 5000, "--no-progress")  # fmt: skip
    code, err = _ctrl_c_when(_launched_a_process, *evaluate)
    assert (code, err.strip().splitlines()) == (EXIT_INTERRUPTED, ["pyro-genmodels: interrupted"])
    # in the middle of training (the lock is taken once every process has joined)
    more = ("train", "--resume", "--out", out, "--epochs", 500, "--devices", 2, "--strategy",
            "ddp", "--accelerator", "cpu", "--no-progress")  # fmt: skip
    code, err = _ctrl_c_when(lambda _: (out / "train.lock").exists(), *more)
    assert code == EXIT_INTERRUPTED, err
    assert err.strip().splitlines() == [
        f"pyro-genmodels: interrupted; the last complete epoch is checkpointed in {out} "
        "(continue with --resume)"
    ]
    assert not (out / "train.lock").exists()


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
    # metrics.jsonl is written just after checkpoint.pt (the row of an epoch only once its
    # checkpoint is saved): a kill between the two leaves it one row short, which the
    # checkpoint holds and the resume writes back
    assert done >= 2 and len(rows(out)) in (done - 1, done)
    assert load_checkpoint(out / "checkpoint.pt")["metrics"][: len(rows(out))] == rows(out)
    r = cli("train", "--resume", "--out", out, "--epochs", done + 2, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert [m["epoch"] for m in rows(out)] == list(range(1, done + 3))


def _tiny(**config):
    torch.manual_seed(0)
    config = {"image_shape": (1, 4, 4), "latent_dim": 2, "hidden_dims": (8,), **config}
    return pg.create_model("vae", **config), torch.bernoulli(torch.full((48, 1, 4, 4), 0.4))


def _traces(vae, x, seed):
    """The guide's draw and the model replayed on it, as a Trace_ELBO particle sees them."""
    pyro.set_rng_seed(seed)
    guide = poutine.trace(vae.guide).get_trace(x)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x)
    return guide, model


def _by_hand(objective, vae, x, seed, weight=1.0, floor=0.0):
    """The negative bound per image from the sites' densities (diagonal Normal q(z|x))."""
    guide, model = _traces(vae, x, seed)
    recon = model.nodes["x"]["fn"].log_prob(x).sum()
    q, z = guide.nodes["z"]["fn"], guide.nodes["z"]["value"]
    if objective == "free-bits":  # sum_j max(floor, batch mean of KL_j), times the batch size
        loc, scale = q.base_dist.loc, q.base_dist.scale
        kl = 0.5 * (loc**2 + scale**2 - 1) - scale.log()
        return (-recon + kl.mean(0).clamp(min=floor).sum() * len(x)) / len(x)
    log_q, log_p = q.log_prob(z).sum(), model.nodes["z"]["fn"].log_prob(z).sum()
    return (-recon + weight * (log_q - log_p)) / len(x)


def _pyro_reference(objective, n):
    return {
        "elbo": lambda: pyro.infer.Trace_ELBO(),
        "meanfield": lambda: pyro.infer.TraceMeanField_ELBO(),
        "iwae": lambda: pyro.infer.RenyiELBO(  # (a guessed plate nesting would draw from the RNG)
            alpha=0, num_particles=n, vectorize_particles=True, max_plate_nesting=1
        ),
        "enum": lambda: pyro.infer.TraceEnum_ELBO(max_plate_nesting=1),
    }[objective]()


@pytest.mark.parametrize(
    "model_config, train_config, objective",
    [
        ({}, {"objective": "elbo"}, "elbo"),
        ({}, {"objective": "meanfield"}, "meanfield"),
        ({}, {"objective": "iwae", "num_particles": 3}, "iwae"),
        ({"guide": "gmvae", "prior_components": 3}, {}, "enum"),
        ({}, {"free_bits": 0.5}, "free-bits"),
        ({}, {"objective": "free-bits", "free_bits": 2.0}, "free-bits"),
        ({}, {"beta": 4.0, "anneal_epochs": 1.0}, "elbo"),
        (
            {
                "guide": "categorical",
                "latent_dim": 3,
                "guide_options": {"num_classes": 4, "temperature": 0.7},
            },
            {},
            "meanfield",
        ),
    ],  # fmt: skip
)
def test_each_objective_is_its_reference_loss_and_training_lowers_it(
    model_config, train_config, objective
):
    """The module's loss equals Pyro's ELBO (or the bound by hand) on the same draws, with
    the KL weight of the step; a few epochs on a fixed batch lower it."""
    vae, _ = _tiny(**model_config)
    data = torch.bernoulli(torch.full((3, 1, 4, 4), 0.5)).repeat(16, 1, 1, 1)  # 3 patterns
    x = data[:16]
    config = TrainConfig(epochs=30, batch_size=16, lr=1e-2, progress=False, **train_config)
    svi = SVIModule(vae, config)
    assert svi.objective == objective

    def loss(weight=1.0):
        pyro.set_rng_seed(7)
        return svi.loss(x, weight).item()

    pyro.set_rng_seed(7)
    if objective == "free-bits":
        expected = _by_hand(objective, vae, x, 7, floor=config.free_bits).item()
    else:
        expected = _pyro_reference(objective, config.num_particles).loss(vae.model, vae.guide, x)
        expected /= len(x)
    assert loss() == pytest.approx(expected, rel=1e-5)
    if config.beta != 1.0:  # the annealed KL weight of step 0 (of 3 in the first epoch)
        weight = kl_weight(config, 0, 3)
        assert weight == pytest.approx(4.0 / 3)
        assert loss(weight) == pytest.approx(_by_hand("elbo", vae, x, 7, weight).item(), rel=1e-5)
    before = loss()
    metrics = fit(vae, data, data[:16], config)
    assert [m["objective"] for m in metrics] == [objective] * 30
    assert metrics[-1]["steps"] == 90 and not vae.training
    assert loss() < before - 1.0, (before, loss())


def test_free_bits_is_refused_where_it_cannot_replace_the_objective():
    gmvae, _ = _tiny(guide="gmvae", prior_components=3)
    with pytest.raises(ValueError, match="objective 'free-bits' cannot sum it out"):
        SVIModule(gmvae, TrainConfig(free_bits=0.5))
    with pytest.raises(ValueError, match="free_bits > 0 is the free-bits objective"):
        TrainConfig(objective="meanfield", free_bits=0.5)
    with pytest.raises(ValueError, match="the free-bits objective needs free_bits > 0"):
        TrainConfig(objective="free-bits")


def test_annealing_reaches_beta_at_the_configured_epoch():
    vae, data = _tiny()
    config = TrainConfig(epochs=4, batch_size=16, beta=0.5, anneal_epochs=2, progress=False)
    metrics = fit(vae, data, config=config)
    # 3 steps per epoch: the weight after each epoch's last step
    assert [m["kl_weight"] for m in metrics] == pytest.approx([0.25, 0.5, 0.5, 0.5])
    assert kl_weight(config, 0, 3) == pytest.approx(0.5 / 6)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--devices", 0], "devices must be a positive integer, got 0"),
        (["--strategy", "ddpp"], "unknown strategy 'ddpp'; valid: auto, ddp"),
        (["--accelerator", "gpu"], "--accelerator gpu was requested but CUDA is not available"),
        (["--device", "cuda"], "--accelerator cuda was requested but CUDA is not available"),
        (["--strategy", "ddp_spawn"], "strategy 'ddp_spawn' trains in child processes whose"),
        (["--precision", "8"], "invalid choice '8'"),
        (["--logger", "wandb"], "invalid choice 'wandb'"),
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


def test_bf16_mixed_on_the_cpu_follows_float32():
    """Lightning's bf16 autocast on the CPU: the loss within 1 % of float32 on the same draws,
    and three epochs of training within 0.2 nats of float32's validation ELBO."""
    torch.manual_seed(0)
    data = torch.bernoulli(torch.full((3, 1, 4, 4), 0.5)).repeat(16, 1, 1, 1)
    vae, _ = _tiny()
    svi = SVIModule(vae, TrainConfig())
    pyro.set_rng_seed(1)
    full = svi.loss(data).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pyro.set_rng_seed(1)
        half = svi.loss(data)
    assert half.dtype == torch.float32 and half.item() == pytest.approx(full, rel=1e-2)
    rows = {}
    for precision in ("32", "bf16-mixed"):
        vae, _ = _tiny()
        config = TrainConfig(epochs=3, batch_size=16, lr=1e-2, precision=precision, progress=False)
        rows[precision] = fit(vae, data, data[:16], config)
    for a, b in zip(rows["32"], rows["bf16-mixed"], strict=True):
        assert b["valid_elbo"] == pytest.approx(a["valid_elbo"], abs=0.2), (a, b)


def test_progress_goes_to_stderr_and_the_report_to_stdout(tmp_path, capsys):
    out = tmp_path / "r"
    code, stdout, err = run(capsys, "train", *[a for a in SMALL if a != "--no-progress"],
                            "--epochs", 2, "--out", out)  # fmt: skip
    assert code == 0, err
    assert "epoch 1: 100%" in err and "it/s" in err and "valid_elbo=" in err
    assert "it/s" not in stdout and "epoch 0" not in err + stdout
    lines = stdout.splitlines()
    assert lines[0].startswith("epoch   1  train loss") and lines[1].startswith("epoch   2")
    assert lines[2] == "stopped: the last epoch (2) was reached"
    best = max(rows(out), key=lambda r: r["valid_elbo"])
    assert lines[3].startswith(f"best epoch {best['epoch']}: valid ELBO {best['valid_elbo']:.3f}")
    assert lines[-2:] == [
        f"next: pyro-genmodels evaluate {out} --num-samples 1000",
        f"      pyro-genmodels sample {out} --num 64 --out samples.png",
    ]


def test_posterior_collapse_is_reported(tmp_path, capsys):
    """The obvious first command at 3 epochs leaves the latent unused: a warning with the
    remedies; the digits defaults (100 epochs; 30 here) give active units and no warning."""
    digits = ["train", "--model", "vae", "--dataset", "digits", "--no-progress"]
    code, stdout, err = run(capsys, *digits, "--epochs", 3, "--out", tmp_path / "a")
    assert code == 0 and "posterior collapse" in err and "--free-bits" in err, err
    assert "0 of 8 active units" in stdout
    code, stdout, err = run(capsys, *digits, "--epochs", 30, "--out", tmp_path / "b")
    assert code == 0 and "collapse" not in err, err
    units = int(stdout.split(" of 8 active units")[0].rsplit(" ", 1)[-1])
    assert units >= 3, stdout
    # a model without a latent has nothing to collapse, and is scored exactly
    code, stdout, err = run(capsys, "train", "--model", "gated-pixelcnn", "--dataset", "digits",
                            "--hidden-channels", 8, "--num-layers", 2, "--epochs", 1,
                            "--no-progress", "--out", tmp_path / "c")  # fmt: skip
    report = stdout.split("stopped:")[1]
    assert code == 0 and "collapse" not in err and " KL " not in report, (stdout, err)
    assert f"next: pyro-genmodels evaluate {tmp_path / 'c'}\n" in stdout


def test_a_format_1_run_directory_loads_but_does_not_resume(tmp_path, capsys):
    from pyro_genmodels.infer import save_atomic
    from pyro_genmodels.infer.checkpoint import CHECKPOINT_FORMAT
    from pyro_genmodels.runs import load_run

    out = tmp_path / "r"
    assert run(capsys, "train", *SMALL, "--epochs", 1, "--out", out)[0] == 0
    new = load_checkpoint(out / "checkpoint.pt")
    old = {k: new[k] for k in ("module_state", "metadata", "train_config", "metrics", "epoch")}
    save_atomic(
        {**old, "format": CHECKPOINT_FORMAT, "version": 1, "step": 10}, out / "checkpoint.pt"
    )  # what the Trainer of format 1 wrote
    module = load_run(out).module
    for key, value in new["module_state"].items():
        assert torch.equal(module.state_dict()[key], value), key
    code, _, err = run(capsys, "train", "--resume", "--out", out, "--epochs", 2)
    assert_one_line_error(code, err, "is in checkpoint format 1 (before pyro-genmodels moved")


def test_validation_of_a_bf16_mixed_run_is_in_float32():
    """The validation ELBO of an exact model trained under bf16 autocast is its float32
    log-likelihood: the number that picks best.pt is not computed in bfloat16."""
    torch.manual_seed(0)
    model = pg.create_model("gated-pixelcnn", image_shape=(1, 6, 6), hidden_channels=8,
                            num_layers=2)  # fmt: skip
    data = torch.bernoulli(torch.full((64, 1, 6, 6), 0.3))
    config = TrainConfig(epochs=1, batch_size=32, precision="bf16-mixed", progress=False)
    (row,) = fit(model, data, data[:32], config)
    with torch.no_grad():
        exact = model.log_prob(data[:32]).mean().item()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model.log_prob(data[:32]).mean().item()
    assert row["valid_elbo"] == pytest.approx(exact, rel=1e-6)
    assert abs(half - exact) > 1e-4  # bfloat16 would have shown
