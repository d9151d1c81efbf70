"""RGB data sets: CIFAR-10 and SVHN in their real layouts (small files written here), the
embedded photo patches, and RGB data meeting grey models."""

import json
import pickle

import numpy as np
import pytest
import torch
from scipy.io import savemat
from test_cli import assert_one_line_error, run

import pyro_genmodels as pg
from pyro_genmodels.data import DataNotFoundError, load_dataset, load_raw, photo_patches
from pyro_genmodels.infer import TrainConfig, fit
from pyro_genmodels.runs import load_run


def write_cifar10(root, per_batch=4, test=6, seed=0):
    """torchvision's cifar-10-batches-py/ layout: pickled dicts of (N, 3072) uint8 rows
    (1024 red, 1024 green, 1024 blue levels, each 32x32 row-major) and a label list."""
    rng = np.random.RandomState(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rows = {}
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", test)]:
        data = rng.randint(0, 256, size=(n, 3072)).astype(np.uint8)
        labels = rng.randint(0, 10, size=n).tolist()
        with (folder / name).open("wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, f)
        rows[name] = (data, labels)
    return rows


def write_svhn(root, train=30, test=7, seed=1):
    """SVHN's train_32x32.mat / test_32x32.mat: X (32, 32, 3, N) uint8, y (N, 1), 10 = digit 0."""
    rng = np.random.RandomState(seed)
    out = {}
    for name, n in (("train_32x32.mat", train), ("test_32x32.mat", test)):
        x = rng.randint(0, 256, size=(32, 32, 3, n)).astype(np.uint8)
        y = rng.randint(1, 11, size=(n, 1)).astype(np.uint8)
        savemat(root / name, {"X": x, "y": y})
        out[name] = (x, y)
    return out


def test_cifar10_reads_torchvisions_layout_with_a_validation_tail(tmp_path):
    rows = write_cifar10(tmp_path)
    train = load_raw("cifar10", "train", tmp_path, download=False)
    valid = load_raw("cifar10", "valid", tmp_path, download=False)
    test = load_raw("cifar10", "test", tmp_path, download=False)
    assert train.images.shape == (18, 3, 32, 32) and train.images.dtype == torch.uint8
    assert valid.images.shape == (2, 3, 32, 32)  # the last 10 % of the 20 training images
    assert test.images.shape == (6, 3, 32, 32)
    data, labels = rows["data_batch_1"]
    # image 0, green channel, row 2, column 3 is byte 1024 + 2 * 32 + 3 of its row
    assert train.images[0, 1, 2, 3].item() == data[0, 1024 + 2 * 32 + 3]
    assert train.labels[:4].tolist() == labels
    last, last_labels = rows["data_batch_5"]
    assert torch.equal(valid.images, torch.from_numpy(last[2:].reshape(2, 3, 32, 32)))
    assert valid.labels.tolist() == last_labels[2:]
    levels = load_dataset("cifar10", "test", "levels", data_dir=tmp_path, download=False).fixed()
    assert levels.dtype == torch.float32 and levels.shape == (6, 3, 32, 32)
    expected = torch.from_numpy(rows["test_batch"][0].reshape(6, 3, 32, 32).astype(np.float32))
    assert torch.equal(levels, expected)
    assert levels.min() >= 0 and levels.max() <= 255 and torch.equal(levels, levels.round())


def test_svhn_reads_the_mat_files_channels_first_and_zero_labels(tmp_path):
    files = write_svhn(tmp_path)
    train = load_raw("svhn", "train", tmp_path, download=False)
    valid = load_raw("svhn", "valid", tmp_path, download=False)
    test = load_raw("svhn", "test", tmp_path, download=False)
    assert (len(train.images), len(valid.images), len(test.images)) == (27, 3, 7)
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (3, 32, 32)
    x, y = files["train_32x32.mat"]
    # X[row, column, channel, n] -> images[n, channel, row, column]
    assert train.images[5, 2, 7, 11].item() == x[7, 11, 2, 5]
    assert valid.images[0, 0, 31, 0].item() == x[31, 0, 0, 27]
    assert train.labels.tolist() == (y[:27, 0] % 10).tolist()
    assert 10 not in train.labels.tolist() and (train.labels.min() >= 0)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("cifar10", "cifar-10-batches-py/data_batch_1"), ("svhn", "test_32x32.mat")],
)
def test_a_missing_file_is_a_one_line_error_naming_the_expected_path(
    tmp_path, capsys, name, expected
):
    split = "test" if name == "svhn" else "train"
    with pytest.raises(DataNotFoundError) as info:
        load_raw(name, split, tmp_path, download=False)
    assert str(tmp_path / expected) in str(info.value) and "\n" not in str(info.value)
    code, _, err = run(capsys, "train", "--model", "gated-pixelcnn", "--dataset", name,
                       "--data-dir", tmp_path, "--no-download", "--epochs", 1,
                       "--out", tmp_path / "run")  # fmt: skip
    train_file = "cifar-10-batches-py/data_batch_1" if name == "cifar10" else "train_32x32.mat"
    assert_one_line_error(code, err, str(tmp_path / train_file))


def test_a_corrupt_cifar_batch_is_named(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="data_batch_3 is not a CIFAR-10 batch"):
        load_raw("cifar10", "train", tmp_path, download=False)


def test_photo_patches_are_deterministic_and_split_by_region():
    from sklearn.datasets import load_sample_images

    splits = {s: load_raw("photo-patches", s).images for s in ("train", "valid", "test")}
    assert {s: tuple(x.shape) for s, x in splits.items()} == {
        "train": (5720, 3, 16, 16), "valid": (1144, 3, 16, 16), "test": (1144, 3, 16, 16),
    }  # fmt: skip
    assert torch.equal(photo_patches("valid"), splits["valid"])  # deterministic
    china = torch.from_numpy(np.array(load_sample_images().images[0])).permute(2, 0, 1)
    # the first test patch is the top-left corner of the right 15 % band of the first photo
    left = round(0.85 * 640)
    assert torch.equal(splits["test"][0], china[:, 0:16, left : left + 16])
    assert torch.equal(splits["train"][1], china[:, 0:16, 8:24])  # stride 8 within a band
    # no patch of one split reappears in another
    keys = {s: {x.numpy().tobytes() for x in xs} for s, xs in splits.items()}
    assert not (keys["train"] & keys["test"]) and not (keys["train"] & keys["valid"])


def test_rgb_images_for_a_grey_model_fail_before_training(tmp_path):
    model = pg.create_model("gated-pixelcnn", image_shape=(1, 16, 16), likelihood="categorical",
                            hidden_channels=4, num_layers=1)  # fmt: skip
    rgb = load_dataset("photo-patches", "valid", "levels").fixed()[:8]
    with pytest.raises(ValueError, match=r"RGB images for a grey model"):
        fit(model, rgb, config=TrainConfig(epochs=1), run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # nothing started


def test_resume_refuses_another_data_set(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "--model", "gated-pixelcnn", "--dataset", "digits",
                       "--epochs", 1, "--hidden-channels", 4, "--num-layers", 1,
                       "--likelihood", "categorical", "--limit", 64, "--out", out,
                       "--no-progress")  # fmt: skip
    assert code == 0, err
    code, _, err = run(capsys, "train", "--resume", "--out", out, "--dataset", "photo-patches",
                       "--epochs", 2)  # fmt: skip
    assert_one_line_error(code, err, "was trained on digits")


def test_a_logistic_mixture_pixelcnn_trains_on_cifar10_through_the_cli(tmp_path, capsys):
    write_cifar10(tmp_path / "data", per_batch=8, test=4)
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "--model", "gated-pixelcnn", "--likelihood",
                       "logistic-mixture", "--dataset", "cifar10", "--data-dir", tmp_path / "data",
                       "--no-download", "--epochs", 2, "--hidden-channels", 8, "--num-layers", 2,
                       "--batch-size", 12, "--out", out, "--no-progress")  # fmt: skip
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    assert [row["epoch"] for row in rows] == [1, 2]
    result = tmp_path / "eval.json"
    code, stdout, err = run(capsys, "evaluate", out, "--json", result)
    assert code == 0, err
    ev = json.loads(result.read_text())
    assert ev["num_examples"] == 4 and ev["dataset"] == "cifar10"
    # exact: bits/dim is the NLL over 3 * 32 * 32 dimensions in bits
    assert ev["bits_per_dim"] == pytest.approx(ev["nll"] / (3 * 32 * 32 * np.log(2)), rel=1e-9)
    # and the NLL is the exact log p(x) of the trained network on the 4 test images
    module = load_run(out, which="best").module
    x = load_dataset("cifar10", "test", "levels", data_dir=tmp_path / "data").fixed()
    assert ev["nll"] == pytest.approx(-module.log_prob(x).mean().item(), rel=1e-5)
    assert "bits/dim" in stdout
