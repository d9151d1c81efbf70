"""The pyro-genmodels command end to end, and its handling of bad input."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from pyro_genmodels.cli import main
from pyro_genmodels.evaluation import evaluate_run
from pyro_genmodels.infer import kl_divergence
from pyro_genmodels.models.guides import family_class
from pyro_genmodels.runs import load_run

TRAIN = ["train", "--model", "vae", "--dataset", "digits", "--no-progress", "--latent-dim", "4",
         "--hidden-dims", "32,16", "--batch-size", "64"]  # fmt: skip


def run(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse errors exit directly
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, pattern):
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert pattern in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(TRAIN + ["--epochs", "2", "--out", str(out), "--limit", "300"]) == 0
    return out


def test_train_evaluate_sample(trained_run, tmp_path, capsys):
    assert (trained_run / "checkpoint.pt").is_file()
    rows = [json.loads(r) for r in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    report = tmp_path / "eval.json"
    code, out, _ = run(capsys, "evaluate", trained_run, "--num-samples", 64, "--limit", 40,
                       "--json", report, "--no-progress", "--prior-samples", 64)  # fmt: skip
    assert code == 0 and "NLL" in out and "PSIS k" in out
    r = json.loads(report.read_text())
    for key in ("nll", "elbo", "bits_per_dim", "num_samples", "num_examples", "psis_khat_mean",
                "psis_khat_max", "kl"):  # fmt: skip
        assert key in r, key
    assert r["num_samples"] == 64 and r["num_examples"] == 40
    # the command's figures are the library's on the same images and seed: the IW estimate
    # from the best checkpoint, and the analytic KL of its q(z|x)
    best = load_run(trained_run, which="best")
    x = best.dataset("test", limit=40).fixed()
    api = evaluate_run(trained_run, num_samples=64, limit=40, prior_samples=64, progress=False)
    assert (r["nll"], r["elbo"], r["psis_khat_max"]) == (api["nll"], api["elbo"],
                                                        api["psis_khat_max"])  # fmt: skip
    kl = kl_divergence(best.module.model, best.module.guide, x).mean().item()
    assert r["kl"] == pytest.approx(kl, rel=1e-6)
    assert r["bits_per_dim"] == pytest.approx(r["nll"] / (64 * math.log(2)))
    assert r["binarization"] == "static" and r["dataset"] == "digits" and "prior_nll" in r
    png = tmp_path / "s.png"
    code, out, _ = run(capsys, "sample", trained_run, "--num", 9, "--out", png)
    assert code == 0 and png.read_bytes()[:4] == b"\x89PNG"


def test_plot_every_kind(trained_run, tmp_path, capsys):
    for kind in ("curves", "reconstructions", "traversals", "embedding"):
        png = tmp_path / f"{kind}.png"
        code, out, err = run(capsys, "plot", trained_run, "--kind", kind, "--out", png,
                             "--limit", 50, "--dims", 3)  # fmt: skip
        assert code == 0 and png.read_bytes()[:4] == b"\x89PNG", err
    code, _, err = run(
        capsys, "plot", trained_run, "--kind", "manifold", "--out", tmp_path / "m.png"
    )
    assert_one_line_error(code, err, "needs a model with latent_dim == 2")
    code, _, err = run(capsys, "plot", trained_run, "--kind", "galaxy", "--out", tmp_path / "g.png")
    assert_one_line_error(code, err, "invalid choice 'galaxy'; valid: curves, reconstructions")


def test_resume_extends_a_run(trained_run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    code, out, _ = run(capsys, "train", "--resume", "--out", copy, "--epochs", 3, "--no-progress")
    assert code == 0 and "epoch   3" in out
    rows = (copy / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2, 3]
    code, _, err = run(capsys, *TRAIN, "--epochs", 1, "--out", copy)
    assert_one_line_error(code, err, "already holds a checkpoint")


@pytest.mark.parametrize(
    "extra",
    [
        ["--guide", "iaf", "--flow-steps", "1", "--objective", "iwae", "--num-particles", "3"],
        ["--guide", "gmvae", "--prior-components", "3", "--beta", "0.5"],
        ["--guide", "categorical", "--num-classes", "4", "--temperature", "0.7",
         "--straight-through"],
        ["--guide", "mixture", "--num-components", "2", "--anneal-epochs", "1"],
    ],
    ids=["iaf-iwae", "gmvae", "categorical", "mixture"],
)  # fmt: skip
def test_guide_families_from_the_command_line(extra, tmp_path, capsys):
    out = tmp_path / "r"
    code, _, err = run(capsys, *TRAIN, "--epochs", 1, "--limit", 128, "--out", out, *extra)
    assert code == 0, err
    code, _, err = run(capsys, "evaluate", out, "--num-samples", 30, "--limit", 10,
                       "--json", out / "e.json", "--no-progress")  # fmt: skip
    r = json.loads((out / "e.json").read_text())
    assert code == 0 and r["guide"] == extra[1] and math.isfinite(r["nll"])
    assert isinstance(load_run(out).module.posterior, family_class(extra[1]))
    row = json.loads((out / "metrics.jsonl").read_text())
    assert row["objective"] == {"iaf": "iwae", "gmvae": "enum", "categorical": "meanfield",
                                "mixture": "elbo"}[extra[1]]  # fmt: skip


@pytest.mark.parametrize(
    "name,likelihood",
    [
        ("gated-pixelcnn", "bernoulli"),
        ("pixelcnn", "logistic-mixture"),
        ("pixelrnn", "categorical"),
    ],
)
def test_pixel_models_from_the_command_line(name, likelihood, tmp_path, capsys):
    out = tmp_path / "r"
    code, _, err = run(capsys, "train", "--model", name, "--dataset", "digits", "--likelihood",
                       likelihood, "--hidden-channels", 6, "--num-layers", 2, "--epochs", 1,
                       "--limit", 64, "--out", out, "--no-progress")  # fmt: skip
    assert code == 0, err
    code, out_text, err = run(capsys, "evaluate", out, "--limit", 8, "--json", out / "e.json",
                              "--no-progress")  # fmt: skip
    r = json.loads((out / "e.json").read_text())
    assert code == 0 and r["exact"] and r["num_samples"] == 1, err
    assert r["elbo"] == pytest.approx(-r["nll"]) and r["nll"] > 0
    assert r["data_format"] == ("binary" if likelihood == "bernoulli" else "levels")
    assert math.isnan(r["psis_khat_mean"]) and "exact" in out_text
    code, _, err = run(capsys, "sample", out, "--num", 2, "--out", tmp_path / "s.png")
    assert code == 0 and (tmp_path / "s.png").is_file(), err


def test_pixelvae_and_autoencoder_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "pv"
    code, _, err = run(capsys, "train", "--model", "pixelvae", "--dataset", "digits",
                       "--latent-dim", 4, "--hidden-dims", "32", "--hidden-channels", 6,
                       "--num-layers", 1, "--free-bits", 0.1, "--anneal-epochs", 1, "--epochs", 1,
                       "--limit", 64, "--out", out, "--no-progress")  # fmt: skip
    assert code == 0, err
    code, _, err = run(capsys, "evaluate", out, "--num-samples", 8, "--limit", 4,
                       "--json", out / "e.json", "--no-progress")  # fmt: skip
    r = json.loads((out / "e.json").read_text())
    assert code == 0 and r["model"] == "pixelvae" and r["kl"] >= 0 and r["nll"] > 0, err
    ae = tmp_path / "ae"
    code, _, err = run(capsys, "train", "--model", "autoencoder", "--dataset", "digits",
                       "--latent-dim", 4, "--hidden-dims", "32", "--epochs", 1, "--limit", 64,
                       "--out", ae, "--no-progress")  # fmt: skip
    assert code == 0, err
    code, text, _ = run(capsys, "evaluate", ae, "--limit", 4, "--no-progress")
    assert code == 0 and "not a generative model" in text
    code, _, err = run(capsys, "sample", ae, "--num", 2, "--out", tmp_path / "a.png")
    assert_one_line_error(code, err, "cannot generate")


def test_unknown_names(tmp_path, capsys):
    code, _, err = run(
        capsys, "train", "--model", "vae", "--dataset", "cifar", "--out", tmp_path / "r"
    )
    assert_one_line_error(code, err, "invalid choice 'cifar' (did you mean 'cifar10'?)")
    code, _, err = run(
        capsys, "train", "--model", "gan", "--dataset", "digits", "--out", tmp_path / "r"
    )
    assert_one_line_error(code, err, "--model: invalid choice 'gan'; valid: autoencoder, ")
    code, _, err = run(capsys, *TRAIN, "--guide", "flowy", "--out", tmp_path / "r", "--epochs", 1)
    assert_one_line_error(code, err, "--guide: invalid choice 'flowy'; valid: diagonal, ")
    code, _, err = run(capsys, *TRAIN, "--set", "guide=flowy", "--out", tmp_path / "r")
    assert_one_line_error(code, err, "unknown guide family 'flowy'; valid: diagonal")
    code, _, err = run(capsys, *TRAIN, "--set", "colour=1", "--out", tmp_path / "r", "--epochs", 1)
    assert_one_line_error(code, err, "unknown config key(s) ['colour']")


def test_missing_and_corrupt_checkpoints(tmp_path, capsys):
    code, _, err = run(capsys, "evaluate", tmp_path / "nowhere")
    assert_one_line_error(code, err, "no run directory")
    (tmp_path / "checkpoint.pt").write_bytes(b"\x00garbage")
    code, _, err = run(capsys, "evaluate", tmp_path)
    assert_one_line_error(code, err, "not a readable checkpoint")
    code, _, err = run(capsys, "sample", tmp_path, "--num", 4, "--out", tmp_path / "x.png")
    assert_one_line_error(code, err, "not a readable checkpoint")


def test_missing_data_and_bad_files(tmp_path, trained_run, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, *TRAIN, "--dataset", "mnist", "--data-dir", empty, "--no-download",
                       "--out", tmp_path / "r", "--epochs", 1)  # fmt: skip
    assert_one_line_error(code, err, "mnist not found in")
    bad = tmp_path / "bad"
    bad.mkdir()
    np.savez(
        bad / "binarized_mnist.npz",
        **{s: np.full((3, 28, 28), 7, np.uint8) for s in ("train", "valid", "test")},
    )
    code, _, err = run(capsys, *TRAIN, "--dataset", "binarized-mnist", "--data-dir", bad,
                       "--out", tmp_path / "r2", "--epochs", 1)  # fmt: skip
    assert_one_line_error(code, err, "binary values {0, 1}")
    # a model trained on 8x8 digits evaluated on 28x28 images
    np.savez(bad / "mnist.npz", x_train=np.zeros((3, 28, 28), np.uint8), y_train=np.zeros(3),
             x_test=np.zeros((3, 28, 28), np.uint8), y_test=np.zeros(3))  # fmt: skip
    code, _, err = run(capsys, "evaluate", trained_run, "--dataset", "mnist", "--data-dir", bad)
    assert_one_line_error(
        code, err, "images have shape (1, 28, 28) but the model was trained on (1, 8, 8)"
    )


def test_bad_arguments(tmp_path, trained_run, capsys, monkeypatch):
    code, _, err = run(
        capsys, "train", "--model", "vae", "--dataset", "digits", "--out", tmp_path, "--epochs", "0"
    )
    assert_one_line_error(code, err, "epochs must be a positive integer, got 0")
    code, _, err = run(capsys, "sample", trained_run, "--num", 4, "--out", tmp_path / "x.jpg")
    assert_one_line_error(code, err, "must be a .png")
    code, _, err = run(capsys, "train", "--out", tmp_path / "r")
    assert_one_line_error(code, err, "needs --model and --dataset")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as here, on any machine
    code, _, err = run(capsys, *TRAIN, "--epochs", 1, "--out", tmp_path / "c", "--device", "cuda")
    assert_one_line_error(code, err, "--accelerator cuda was requested but CUDA is not available")
    code, _, err = run(capsys, "sample", trained_run, "--num", 4, "--out", tmp_path / "x.png",
                       "--device", "cuda")  # fmt: skip
    assert_one_line_error(code, err, "--device cuda was requested but no CUDA device")


def test_console_script_runs(tmp_path):
    exe = [sys.executable, "-m", "pyro_genmodels.cli"]
    ok = subprocess.run(exe + ["list"], capture_output=True, text=True)
    assert ok.returncode == 0 and "model vae" in ok.stdout
    assert "low-rank (rank), mixture (num_components)" in ok.stdout  # options per family
    bad = subprocess.run(exe + ["evaluate", str(tmp_path / "none")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_a_diverging_run_ends_in_one_line_from_the_first_process_only(tmp_path, capsys,
                                                                     monkeypatch):  # fmt: skip
    """The loss turning NaN is one line on stderr (no per-step warning from Pyro before it);
    a process other than the first of a multi-process run, where every process raises it at
    once, leaves the line to the first."""
    argv = [*TRAIN, "--lr", "1e8", "--epochs", "2", "--limit", "300", "--out"]
    exe = [sys.executable, "-m", "pyro_genmodels.cli"]
    done = subprocess.run(exe + argv + [str(tmp_path / "a")], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert "pyro-genmodels: error: the loss became NaN or infinite in epoch 1" in done.stderr
    monkeypatch.setattr("pyro_genmodels.cli._first_process", lambda: False)
    code, _, err = run(capsys, *argv, tmp_path / "b")
    assert (code, err) == (2, "")


def test_evaluate_by_ais_and_bdmc(trained_run, tmp_path, capsys):
    report = tmp_path / "ais.json"
    ais = ["--method", "ais", "--ais-steps", 20, "--ais-chains", 3]
    code, out, err = run(capsys, "evaluate", trained_run, *ais, "--limit", 6, "--json", report,
                         "--no-progress")  # fmt: skip
    assert code == 0, err
    r = json.loads(report.read_text())
    assert r["method"] == "ais" and r["ais_steps"] == 20 and r["ais_chains"] == 3
    assert 0 < r["acceptance_rate"] <= 1 and r["nll"] > 0 and "AIS, T=20" in out
    assert r["ais_gradient_dtype"] == "full"
    low = tmp_path / "ais-bf16.json"
    code, out, err = run(capsys, "evaluate", trained_run, *ais, "--limit", 6, "--json", low,
                         "--no-progress", "--ais-gradient-dtype", "bfloat16")  # fmt: skip
    assert code == 0, err
    assert json.loads(low.read_text())["ais_gradient_dtype"] == "bfloat16"
    iw = tmp_path / "iw.json"
    assert run(capsys, "evaluate", trained_run, "--limit", 6, "--num-samples", 50,
               "--json", iw, "--no-progress")[0] == 0  # fmt: skip
    assert json.loads(iw.read_text())["method"] == "iw"
    report = tmp_path / "bdmc.json"
    code, out, err = run(capsys, "bdmc", trained_run, "--num-examples", 4, "--ais-steps", 10,
                         "--ais-chains", 2, "--json", report)  # fmt: skip
    assert code == 0, err
    b = json.loads(report.read_text())
    assert len(b["log_px_lower"]) == len(b["log_px_upper"]) == 4
    assert b["nll_lower_bound"] == pytest.approx(-np.mean(b["log_px_upper"]))
    code, _, err = run(capsys, "evaluate", trained_run, "--method", "ais", "--ais-steps", 0)
    assert_one_line_error(code, err, "--ais-steps must be a positive integer, got 0")


def test_ais_of_a_discrete_guide_is_a_one_line_error(tmp_path, capsys):
    out = tmp_path / "cat"
    assert run(capsys, *TRAIN, "--epochs", 1, "--limit", 64, "--out", out,
               "--guide", "categorical", "--num-classes", 3)[0] == 0  # fmt: skip
    code, _, err = run(capsys, "evaluate", out, "--method", "ais", "--ais-steps", 5, "--limit", 2,
                       "--no-progress")  # fmt: skip
    assert_one_line_error(code, err, "the guide samples the discrete site 'z'")


def test_nan_images_are_a_one_line_error(tmp_path, capsys):
    images = np.zeros((4, 28, 28), dtype=np.float32)
    images[1, 3, 3] = np.nan
    np.savez(tmp_path / "binarized_mnist.npz", train=images, valid=images, test=images)
    data = ["--dataset", "binarized-mnist", "--data-dir", tmp_path]
    code, _, err = run(capsys, "train", "--model", "vae", *data, "--out", tmp_path / "r")
    assert_one_line_error(code, err, "should hold binary values {0, 1}, found values in [nan")


def test_every_command_takes_a_shipped_name(tmp_path, capsys, monkeypatch):
    from pyro_genmodels.pretrained import pretrained_path

    images = (np.random.default_rng(0).random((6, 28, 28)) < 0.2).astype(np.uint8)
    np.savez(tmp_path / "binarized_mnist.npz", train=images, valid=images, test=images)
    monkeypatch.setenv("PYRO_GENMODELS_DATA", str(tmp_path))
    by_name, by_path = tmp_path / "name.json", tmp_path / "path.json"
    for target, out in (("vae-paper", by_name), (pretrained_path("vae-paper"), by_path)):
        code, _, err = run(capsys, "evaluate", target, "--num-samples", 8, "--no-progress",
                           "--json", out)  # fmt: skip
        assert code == 0, err
    a, b = json.loads(by_name.read_text()), json.loads(by_path.read_text())
    assert a["per_image_nll"] == b["per_image_nll"] and a["checkpoint"] == "best"
    code, out, err = run(capsys, "sample", "vae-paper", "--num", 16, "--out", tmp_path / "s.png")
    assert code == 0 and (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG", err
    for kind in ("traversals", "curves", "reconstructions"):
        png = tmp_path / f"{kind}.png"
        code, _, err = run(capsys, "plot", "vae-paper", "--kind", kind, "--dims", 3, "--out", png)
        assert code == 0 and png.read_bytes()[:4] == b"\x89PNG", (kind, err)
