"""Evaluations that take hours: a fixed random subset of a split (``--subset``), and an
evaluation that continues where it was interrupted (``evaluate --json FILE`` keeps its
batches in ``FILE.partial``)."""

import json

import pytest
import torch
from test_cli import run

from pyro_genmodels import evaluation, pretrained, runs
from pyro_genmodels.cli import EXIT_INTERRUPTED
from pyro_genmodels.data import load_dataset
from pyro_genmodels.evaluation import random_subset

REAL_BATCH = evaluation.evaluate_batch


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("long") / "vae"
    runs.train_run("vae", "digits", out, model_config={"latent_dim": 2, "hidden_dims": (16,)},
                   train_config={"epochs": 1, "batch_size": 128, "progress": False})  # fmt: skip
    return out


@pytest.mark.parametrize(("data_format", "binarization"),
                         [("binary", "dynamic"), ("dequantized", "static"),
                          ("binary", "static"), ("levels", "static")])  # fmt: skip
def test_a_selection_keeps_its_images_as_the_whole_split_realizes_them(data_format, binarization):
    split = load_dataset("digits", "test", data_format, binarization)
    whole = split.fixed()
    index = torch.tensor([5, 0, 17, 3])
    chosen = split.select(index)
    torch.testing.assert_close(chosen.fixed(), whole[index], rtol=0, atol=0)
    assert torch.equal(chosen.labels, split.labels[index]) and len(chosen) == 4
    again = chosen.select(torch.tensor([2, 0]))  # indices into the selection
    torch.testing.assert_close(again.fixed(), whole[index[[2, 0]]], rtol=0, atol=0)
    torch.testing.assert_close(chosen.subset(3).fixed(), whole[index[:3]], rtol=0, atol=0)
    with pytest.raises(ValueError, match="distinct indices"):
        split.select(torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="out of range for a dataset of 300"):
        split.select(torch.tensor([300]))


def test_a_fixed_random_subset_is_the_same_draw_everywhere():
    split = load_dataset("digits", "test")
    first, second = random_subset(split, 40), random_subset(split, 40)
    torch.testing.assert_close(first.fixed(), second.fixed(), rtol=0, atol=0)
    gen = torch.Generator().manual_seed(evaluation.SUBSET_SEED)
    index = torch.randperm(len(split), generator=gen)[:40].sort().values
    torch.testing.assert_close(first.fixed(), split.fixed()[index], rtol=0, atol=0)
    assert index[-1] > 40  # not the first 40
    with pytest.raises(ValueError, match="a subset of 301 images from 300"):
        random_subset(split, 301)


def test_evaluate_on_a_subset_scores_those_images_and_says_so(tmp_path, monkeypatch, capsys):
    """An exact model's per-image NLLs on ``--subset 30`` are those of the whole split at the
    subset's images, and the card of a shipped model repeats the option."""
    monkeypatch.setenv("PYRO_GENMODELS_PRETRAINED", str(tmp_path / "pretrained"))
    out = tmp_path / "pix"
    runs.train_run("pixelcnn", "digits", out, model_config={"hidden_channels": 4, "num_layers": 1},
                   train_config={"epochs": 1, "batch_size": 128, "progress": False})  # fmt: skip
    code, _, err = run(capsys, "evaluate", out, "--subset", 30, "--json", tmp_path / "s.json",
                       "--no-progress")  # fmt: skip
    assert code == 0, err
    part = json.loads((tmp_path / "s.json").read_text())
    whole = evaluation.evaluate_run(out, progress=False)
    gen = torch.Generator().manual_seed(evaluation.SUBSET_SEED)
    index = torch.randperm(300, generator=gen)[:30].sort().values
    expected = torch.tensor(whole["per_image_nll"])[index]
    torch.testing.assert_close(torch.tensor(part["per_image_nll"]), expected, rtol=1e-6, atol=0)
    assert part["subset"] == 30 and part["num_examples"] == 30 and part["limit"] is None
    pretrained.export_pretrained(out, "pix", tmp_path / "s.json", out_dir=tmp_path / "pretrained")
    card = (tmp_path / "pretrained" / "pix" / "README.md").read_text()
    assert "pyro-genmodels evaluate pix --split test --subset 30\n" in card
    assert "(exact, a fixed random subset of 30 test images)" in card
    code, _, err = run(capsys, "evaluate", "pix", "--split", "test", "--subset", 30, "--json",
                       tmp_path / "again.json", "--no-progress")  # fmt: skip
    assert code == 0, err
    assert json.loads((tmp_path / "again.json").read_text())["nll"] == part["nll"]
    code, _, err = run(capsys, "evaluate", out, "--subset", 0)
    assert code != 0 and "subset must be a positive integer" in err


def _counting(monkeypatch, stop_at: int | None = None) -> list[int]:
    """Record the batches evaluate computes; raise Ctrl-C at batch ``stop_at``."""
    seen = []

    def batch(module, xb, index, *args, **kwargs):
        if index == stop_at:
            raise KeyboardInterrupt
        seen.append(index)
        return REAL_BATCH(module, xb, index, *args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate_batch", batch)
    return seen


def test_an_interrupted_evaluation_continues_where_it_stopped(vae_run, tmp_path, monkeypatch,
                                                              capsys):  # fmt: skip
    args = ["evaluate", vae_run, "--num-samples", 16, "--limit", 50, "--batch-size", 10,
            "--no-progress", "--json"]  # fmt: skip
    code, _, err = run(capsys, *args, tmp_path / "whole.json")
    assert code == 0, err
    assert not (tmp_path / "whole.json.partial").exists()  # removed once complete
    whole = json.loads((tmp_path / "whole.json").read_text())

    report, partial = tmp_path / "r.json", tmp_path / "r.json.partial"
    seen = _counting(monkeypatch, stop_at=3)
    code, _, err = run(capsys, *args, report)
    assert code == EXIT_INTERRUPTED and seen == [0, 1, 2]
    assert f"the batches done are in {partial}: the same command continues" in err
    assert not report.exists() and len(torch.load(partial)["batches"]) == 3

    seen = _counting(monkeypatch)
    code, _, err = run(capsys, *args, report)
    assert code == 0 and seen == [3, 4], err
    assert f"continuing from {partial}" in err and not partial.exists()
    again = json.loads(report.read_text())
    assert again["per_image_nll"] == whole["per_image_nll"]
    assert (again["nll"], again["kl"], again["psis_khat_max"]) == (
        whole["nll"], whole["kl"], whole["psis_khat_max"])  # fmt: skip


def test_a_partial_file_of_another_evaluation_is_replaced(vae_run, tmp_path, monkeypatch, capsys):
    args = ["evaluate", vae_run, "--limit", 50, "--batch-size", 10, "--no-progress", "--json"]
    report = tmp_path / "r.json"
    _counting(monkeypatch, stop_at=2)
    code, _, _ = run(capsys, *args, report, "--num-samples", 16)
    assert code == EXIT_INTERRUPTED
    seen = _counting(monkeypatch)
    code, _, err = run(capsys, *args, report, "--num-samples", 8)  # another estimator
    assert code == 0 and seen == [0, 1, 2, 3, 4], err
    fresh = evaluation.evaluate_run(vae_run, num_samples=8, limit=50, batch_size=10,
                                    progress=False)  # fmt: skip
    assert json.loads(report.read_text())["per_image_nll"] == fresh["per_image_nll"]
    (tmp_path / "junk.json.partial").write_bytes(b"not a checkpoint")  # a truncated file
    seen = _counting(monkeypatch)
    code, _, err = run(capsys, *args, tmp_path / "junk.json", "--num-samples", 8)
    assert code == 0 and seen == [0, 1, 2, 3, 4], err
    assert json.loads((tmp_path / "junk.json").read_text())["nll"] == fresh["nll"]


def _interrupted_after_three_batches(vae_run, report, monkeypatch, capsys, args):
    _counting(monkeypatch, stop_at=3)
    code, _, _ = run(capsys, *args, report)
    assert code == EXIT_INTERRUPTED
    monkeypatch.setattr(evaluation, "evaluate_batch", REAL_BATCH)
    return torch.load(report.with_name(report.name + ".partial"))


def test_a_sharded_evaluation_continues_in_one_process(vae_run, tmp_path, monkeypatch, capsys):
    """Process r of an evaluation over several keeps its batches in FILE.partial.rankR: one
    process continues from all of them (a foreign one is ignored) and removes them."""
    args = ["evaluate", vae_run, "--num-samples", 16, "--limit", 50, "--batch-size", 10,
            "--no-progress", "--json"]  # fmt: skip
    whole = evaluation.evaluate_run(vae_run, num_samples=16, limit=50, batch_size=10,
                                    progress=False)  # fmt: skip
    report = tmp_path / "r.json"
    saved = _interrupted_after_three_batches(vae_run, report, monkeypatch, capsys, args)
    first, second = tmp_path / "r.json.partial", tmp_path / "r.json.partial.rank1"
    batches = saved["batches"]  # as if two processes had done batches 0, 2 and 1
    torch.save({**saved, "batches": [batches[0], batches[2]]}, first)
    torch.save({**saved, "batches": [batches[1]], "seconds": 1.0}, second)
    foreign = tmp_path / "r.json.partial.rank2"
    torch.save({**saved, "key": "another evaluation"}, foreign)
    seen = _counting(monkeypatch)
    code, _, err = run(capsys, *args, report)
    assert code == 0 and seen == [3, 4], err
    assert json.loads(report.read_text())["per_image_nll"] == whole["per_image_nll"]
    assert not any(f.exists() for f in (first, second, foreign))


@pytest.mark.slow
def test_an_evaluation_continues_over_two_processes(vae_run, tmp_path, monkeypatch, capsys):
    """Interrupted in one process, continued with --devices 2: the per-image figures of one
    uninterrupted process, and no partial file of either process left."""
    from test_lightning import cli

    args = ["evaluate", vae_run, "--num-samples", 16, "--limit", 50, "--batch-size", 10,
            "--no-progress", "--json"]  # fmt: skip
    whole = evaluation.evaluate_run(vae_run, num_samples=16, limit=50, batch_size=10,
                                    progress=False)  # fmt: skip
    report = tmp_path / "r.json"
    _interrupted_after_three_batches(vae_run, report, monkeypatch, capsys, args)
    done = cli(*args[:-1], "--devices", 2, "--device", "cpu", "--json", report)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("continuing from") == 1  # once, not once per process
    result = json.loads(report.read_text())
    # the continued batches ran with one thread a process: the last digits of a sum differ
    torch.testing.assert_close(torch.tensor(result["per_image_nll"]),
                               torch.tensor(whole["per_image_nll"]), rtol=1e-5, atol=0)  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
