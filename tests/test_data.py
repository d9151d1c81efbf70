"""Data sets by name, file layouts, splits, representations and their errors."""

import numpy as np
import pytest
import torch
from conftest import shared_data_dir

from pyro_genmodels.data import DataNotFoundError, load_dataset, load_raw


def test_digits_splits_are_disjoint_and_complete():
    raws = {s: load_raw("digits", s) for s in ("train", "valid", "test")}
    assert [len(r.images) for r in raws.values()] == [1297, 200, 300]
    flat = torch.cat([r.images.reshape(len(r.images), -1) for r in raws.values()])
    assert torch.unique(flat, dim=0).shape[0] >= 1790  # (sklearn's digits hold a few duplicates)
    assert raws["train"].images.dtype == torch.uint8 and raws["train"].images.max() == 255


def test_representations():
    levels = load_dataset("digits", "valid", "levels").fixed()
    assert torch.equal(levels, levels.round()) and levels.max() == 255
    deq = load_dataset("digits", "valid", "dequantized")
    a, b = deq.fixed(), deq[list(range(len(deq)))]
    assert torch.equal(torch.floor(a * 256), levels) and torch.equal(torch.floor(b * 256), levels)
    assert not torch.equal(a, b)  # fresh noise per access, fixed() is seeded
    static = load_dataset("digits", "valid", "binary", "static")
    assert torch.equal(static.fixed(), static[list(range(len(static)))])
    assert torch.equal(static.fixed(), load_dataset("digits", "valid", "binary").fixed())
    dynamic = load_dataset("digits", "valid", "binary", "dynamic")
    first, second = dynamic[[0, 1, 2]], dynamic[[0, 1, 2]]
    assert set(first.unique().tolist()) <= {0.0, 1.0} and not torch.equal(first, second)
    # mean of many dynamic binarizations approaches the grey level
    mean = torch.stack([dynamic[[0]] for _ in range(4000)]).mean(0)
    assert (mean - levels[:1] / 255).abs().max() < 0.05


def _fake_mnist(path, n_train=10_010, n_test=7, high=255):
    rng = np.random.default_rng(0)
    np.savez(
        path / "mnist.npz",
        x_train=rng.integers(0, high + 1, (n_train, 28, 28)).astype(np.uint8),
        y_train=rng.integers(0, 10, n_train),
        x_test=rng.integers(0, high + 1, (n_test, 28, 28)).astype(np.uint8),
        y_test=rng.integers(0, 10, n_test),
    )


def test_keras_npz_layout_and_validation_split(tmp_path):
    _fake_mnist(tmp_path)
    train = load_raw("mnist", "train", tmp_path)
    valid = load_raw("mnist", "valid", tmp_path)
    test = load_raw("mnist", "test", tmp_path)
    assert (len(train.images), len(valid.images), len(test.images)) == (10, 10_000, 7)
    assert train.images.shape[1:] == (1, 28, 28) and len(train.labels) == 10
    assert load_dataset("mnist", "train", data_dir=tmp_path, limit=4).fixed().shape == (
        4,
        1,
        28,
        28,
    )


def test_binarized_layouts_npz_and_amat(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {
        s: rng.integers(0, 2, (n, 28, 28)).astype(np.uint8)
        for s, n in [("train", 5), ("valid", 3), ("test", 4)]
    }
    np.savez(tmp_path / "binarized_mnist.npz", **arrays)
    x = load_dataset("binarized-mnist", "test", data_dir=tmp_path).fixed()
    assert torch.equal(x[:, 0], torch.from_numpy(arrays["test"]).float())
    amat_dir = tmp_path / "amat"
    amat_dir.mkdir()
    np.savetxt(amat_dir / "binarized_mnist_valid.amat", arrays["valid"].reshape(3, -1), fmt="%d")
    y = load_dataset("binarized-mnist", "valid", data_dir=amat_dir).fixed()
    assert torch.equal(y[:, 0], torch.from_numpy(arrays["valid"]).float())


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'cifar'; valid: digits, mnist"):
        load_raw("cifar")
    with pytest.raises(ValueError, match="unknown split"):
        load_raw("digits", "dev")
    with pytest.raises(DataNotFoundError, match="binarized_mnist.npz"):
        load_raw("binarized-mnist", "train", tmp_path)
    with pytest.raises(DataNotFoundError, match="mnist not found.*downloads are disabled"):
        load_raw("mnist", "train", tmp_path, download=False)
    assert list(tmp_path.iterdir()) == []  # a failed lookup leaves nothing behind
    np.savez(tmp_path / "binarized_mnist.npz", train=np.full((2, 28, 28), 2, np.uint8))
    with pytest.raises(ValueError, match=r"binary values \{0, 1\}, found values in \[2, 2\]"):
        load_raw("binarized-mnist", "train", tmp_path)
    np.savez(tmp_path / "binarized_mnist.npz", train=np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="28x28"):
        load_raw("binarized-mnist", "train", tmp_path)
    (tmp_path / "mnist.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_raw("mnist", "train", tmp_path)
    ok = np.zeros((2, 28, 28), np.uint8)
    np.savez(tmp_path / "binarized_mnist.npz", train=ok, valid=ok, test=ok)
    with pytest.raises(ValueError, match="already binary"):
        load_dataset("binarized-mnist", "valid", "binary", "dynamic", data_dir=tmp_path)


@pytest.mark.skipif(shared_data_dir() is None, reason="needs ../shared/data (the real MNIST files)")
def test_shared_mnist_files():
    root = shared_data_dir()
    b = {s: load_raw("binarized-mnist", s, root) for s in ("train", "valid", "test")}
    assert [len(r.images) for r in b.values()] == [50_000, 10_000, 10_000]
    assert abs(b["test"].images.float().mean().item() - 0.1325) < 1e-3
    m = load_raw("mnist", "test", root)
    assert m.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert len(load_raw("mnist", "train", root).images) == 50_000


def test_binarized_mnist_downloads_checks_and_never_leaves_a_bad_file(tmp_path, monkeypatch):
    """Larochelle & Murray's .amat layout served by a loopback server: the download is read,
    its images' sha256 checked, and only then written into the data directory; a wrong
    checksum or a dead server is a one-line error that leaves no file."""
    import hashlib
    import http.server
    import threading

    from pyro_genmodels import data

    gen = np.random.default_rng(0)
    splits = {s: (gen.random((n, 784)) < 0.3).astype(np.uint8)
              for s, n in (("train", 5), ("valid", 3), ("test", 4))}  # fmt: skip
    served = tmp_path / "served"
    served.mkdir()
    for split, arr in splits.items():
        text = "\n".join(" ".join(str(v) for v in row) for row in arr) + "\n"
        (served / f"binarized_mnist_{split}.amat").write_text(text)
    sums = {s: hashlib.sha256(a.tobytes()).hexdigest() for s, a in splits.items()}

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.delenv("PYRO_GENMODELS_NO_DOWNLOAD")
    url = f"http://127.0.0.1:{server.server_port}/binarized_mnist_{{split}}.amat"
    monkeypatch.setenv("PYRO_GENMODELS_BINARIZED_MNIST_URL", url)
    root = tmp_path / "data"
    try:
        monkeypatch.setattr(data, "BINARIZED_MNIST_SHA256", {**sums, "valid": "0" * 64})
        with pytest.raises(data.DataNotFoundError, match="have sha256 .*not the expected 0000"):
            data.load_raw("binarized-mnist", "valid", root)
        assert not root.exists() or list(root.iterdir()) == []  # nothing half-right is kept
        monkeypatch.setattr(data, "BINARIZED_MNIST_SHA256", sums)
        for split, arr in splits.items():
            raw = data.load_raw("binarized-mnist", split, root)
            assert raw.binary and torch.equal(raw.images.reshape(len(arr), 784),
                                              torch.from_numpy(arr))  # fmt: skip
        assert sorted(p.name for p in root.iterdir()) == [
            f"binarized_mnist_{s}.amat" for s in ("test", "train", "valid")
        ]  # fmt: skip
    finally:
        server.shutdown()
    server.server_close()
    monkeypatch.setenv("PYRO_GENMODELS_BINARIZED_MNIST_URL", url)  # nothing listens now
    with pytest.raises(data.DataNotFoundError, match="binarized-mnist: downloading .* failed"):
        data.load_raw("binarized-mnist", "test", tmp_path / "empty")
    monkeypatch.setenv("PYRO_GENMODELS_NO_DOWNLOAD", "1")
    with pytest.raises(data.DataNotFoundError, match="downloads are disabled.*pass data_dir= or"):
        data.load_raw("binarized-mnist", "test", tmp_path / "empty")


def test_a_missing_data_set_names_the_argument_in_python_and_the_flag_on_the_command_line(
    tmp_path, monkeypatch, capsys
):
    from test_cli import assert_one_line_error, run

    from pyro_genmodels import data

    monkeypatch.setenv("PYRO_GENMODELS_NO_DOWNLOAD", "1")
    for name in ("mnist", "binarized-mnist"):
        with pytest.raises(data.DataNotFoundError, match="pass data_dir= or set"):
            load_dataset(name, "test", data_dir=tmp_path)
        code, _, err = run(capsys, "train", "--model", "vae", "--dataset", name, "--data-dir",
                           tmp_path, "--out", tmp_path / "run")  # fmt: skip
        assert_one_line_error(code, err, "pass --data-dir or set $PYRO_GENMODELS_DATA")
        assert "data_dir=" not in err
