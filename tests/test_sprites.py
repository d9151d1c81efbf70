"""The sprites generator: dSprites' arrays, a deterministic factor-to-image map, shapes of
the right area, and distinct images where the factors differ."""

import math

import numpy as np
import pytest
import torch

from pyro_genmodels import sprites
from pyro_genmodels.sprites import Sprites, render


def test_the_arrays_have_dsprites_layout():
    data = Sprites()
    assert len(data) == 737_280 and data.factor_sizes == (1, 3, 6, 40, 32, 32)
    index = np.array([0, 1, 32, 1024, 40 * 1024, 737_279])
    classes = data.classes(index)
    assert classes.dtype == np.int64 and classes.shape == (6, 6)
    # the last factor varies fastest, as in dSprites' latents_classes
    assert classes.tolist()[:4] == [[0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 1, 0],
                                    [0, 0, 0, 1, 0, 0]]  # fmt: skip
    assert classes[-1].tolist() == [0, 2, 5, 39, 31, 31]
    assert np.array_equal(data.index(classes), index)
    values = data.values(classes)
    assert values.dtype == np.float64 and values[-1].tolist() == [1.0, 3.0, 1.0, 2 * math.pi,
                                                                  1.0, 1.0]  # fmt: skip
    images = data.images(index)
    assert images.dtype == np.uint8 and images.shape == (6, 64, 64)
    assert set(np.unique(images)) == {0, 1}
    assert Sprites(32).images(index).shape == (6, 32, 32)
    with pytest.raises(IndexError):
        data.classes([len(data)])
    with pytest.raises(ValueError, match="out of range"):
        render(np.array([[0, 3, 0, 0, 0, 0]]))


def test_the_map_from_factors_to_images_is_deterministic():
    rng = np.random.default_rng(0)
    index = rng.integers(737_280, size=64)
    first = Sprites().images(index)
    assert np.array_equal(first, Sprites().images(index[::-1])[::-1])  # not batch-dependent
    assert np.array_equal(first[:5], Sprites().images(index[:5], batch_size=2))


def test_shapes_have_their_areas():
    r = sprites.RADIUS * 64  # pixels, at scale 1

    def mean_area(shape, scale):  # over positions and orientations, where pixel rounding
        grid = [[0, shape, scale, o, x, 16] for o in range(0, 39, 3) for x in range(32)]
        return render(np.array(grid)).sum(dim=(1, 2)).double().mean().item()  # averages out

    for shape, area in ((0, (1.6 * r) ** 2), (1, math.pi * r * 0.5 * r)):
        # within 2 %: the 4 x 4 supersampling keeps edge pixels covered exactly half
        assert mean_area(shape, 5) == pytest.approx(area, rel=0.02), shape
        assert mean_area(shape, 0) == pytest.approx(area / 4, rel=0.04), shape  # scale 0.5
    heart = render(np.array([[0, 2, 5, 0, 16, 16]]))[0].numpy()
    rows = np.nonzero(heart.any(axis=1))[0]
    assert heart[rows[-1]].sum() < heart.sum(axis=1).max() / 3  # its point is at the bottom


def test_every_combination_is_distinct_where_it_should_be():
    def draw(shape, scale=5, orientation=0, x=16, y=16):
        return render(np.array([[0, shape, scale, orientation, x, y]]))[0].numpy()

    for shape in range(3):
        turns = np.stack([draw(shape, orientation=o) for o in range(40)]).reshape(40, -1)
        distinct = len(np.unique(turns[:39], axis=0))
        # 2 pi / 39 steps: no two of the first 39 orientations coincide, even for the square
        # (a quarter turn is not a multiple of the step) and the ellipse (nor a half turn)
        assert distinct == 39, (shape, distinct)
        assert np.array_equal(turns[0], turns[39])  # 0 and 2 pi, as in dSprites
        moves = np.stack([draw(shape, x=x) for x in range(32)]).reshape(32, -1)
        assert len(np.unique(moves, axis=0)) == 32
        sizes = np.stack([draw(shape, scale=s) for s in range(6)]).reshape(6, -1)
        assert len(np.unique(sizes, axis=0)) == 6
    shapes = np.stack([draw(s, orientation=5) for s in range(3)]).reshape(3, -1)
    assert len(np.unique(shapes, axis=0)) == 3


def write_dsprites(path, sizes=(1, 3, 2, 2, 2, 2), shuffle=False):
    """A small file in dSprites' layout: every combination in order; image i holds i."""
    classes = np.stack(np.unravel_index(np.arange(np.prod(sizes)), sizes), 1)
    if shuffle:
        classes = classes[::-1]
    imgs = np.zeros((len(classes), 64, 64), np.uint8)
    imgs[:, 0, :6] = classes  # the classes, readable from the image
    values = classes.astype(np.float64)
    metadata = np.array({"latents_sizes": np.array(sizes)}, dtype=object)  # as the real file
    np.savez(path, imgs=imgs, latents_classes=classes, latents_values=values, metadata=metadata)


def test_the_dsprites_file_is_read_by_factors(tmp_path):
    write_dsprites(tmp_path / sprites.DSPRITES_FILE)
    data = sprites.DSprites(tmp_path)  # a folder holding the file, or the file
    assert data.factor_sizes == (1, 3, 2, 2, 2, 2) and len(data) == 48
    rng = np.random.default_rng(0)
    factors = data.sample_factors(20, rng)
    x = data.images_from_factors(factors)
    assert x.shape == (20, 1, 64, 64) and x.dtype == torch.float32
    assert np.array_equal(x[:, 0, 0, :6].numpy().astype(np.int64), factors)
    write_dsprites(tmp_path / "shuffled.npz", shuffle=True)
    with pytest.raises(ValueError, match="not every combination of the factors"):
        sprites.DSprites(tmp_path / "shuffled.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a dSprites file"):
        sprites.DSprites(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError, match="dsprites_ndarray_co1sh3sc6or40x32y32_64x64"):
        sprites.DSprites(tmp_path / "nowhere")


def test_the_3d_shapes_file_is_read_by_factors(tmp_path):
    import h5py  # the shapes3d extra

    sizes = (2, 2, 2, 2, 2, 3)
    grids = [np.linspace(0, 0.9, 2), np.linspace(0, 0.9, 2), np.linspace(0, 0.9, 2),
             np.linspace(0.75, 1.25, 2), np.arange(2.0), np.linspace(-30, 30, 3)]  # fmt: skip
    classes = np.stack(np.unravel_index(np.arange(np.prod(sizes)), sizes), 1)
    labels = np.stack([grids[k][classes[:, k]] for k in range(6)], 1)
    images = np.zeros((len(classes), 64, 64, 3), np.uint8)
    images[:, 0, :6, 0] = classes
    with h5py.File(tmp_path / sprites.SHAPES3D_FILE, "w") as f:
        f["images"], f["labels"] = images, labels
    data = sprites.Shapes3D(tmp_path)
    assert data.factor_sizes == sizes and data.factor_names[0] == "floor_hue"
    factors = np.array([[1, 0, 1, 1, 0, 2], [0, 0, 0, 0, 0, 0], [1, 0, 1, 1, 0, 2]])
    x = data.images_from_factors(factors)  # repeated and unsorted indices too
    assert x.shape == (3, 3, 64, 64)
    assert np.array_equal(x[:, 0, 0, :6].numpy().astype(np.int64), factors)


def test_sprites_as_a_data_set_with_factors(tmp_path, capsys):
    import json

    from test_cli import run

    from pyro_genmodels.data import load_dataset

    test = load_dataset("sprites", "test", image_size=32, limit=20)
    x = test.fixed()
    assert x.shape == (20, 1, 32, 32) and set(x.unique().tolist()) == {0.0, 1.0}
    assert test.factors.shape == (20, 6)
    # the images are those of their factors, and the splits are disjoint
    again = test.factor_source.images_from_factors(test.factors)
    assert torch.equal(again, x)
    source = test.factor_source
    splits = {s: set(source.index(load_dataset("sprites", s, limit=300).factors).tolist())
              for s in ("train", "valid", "test")}  # fmt: skip
    assert not (splits["train"] & splits["valid"] or splits["train"] & splits["test"]
                or splits["valid"] & splits["test"])  # fmt: skip
    code, _, err = run(capsys, "train", "--model", "vae", "--dataset", "sprites", "--image-size",
                       32, "--limit", 64, "--epochs", 1, "--latent-dim", 4, "--hidden-dims",
                       "16", "--no-progress", "--out", tmp_path / "r")  # fmt: skip
    assert code == 0, err
    code, out, err = run(capsys, "evaluate", tmp_path / "r", "--num-samples", 4, "--limit", 8,
                         "--no-progress", "--json", tmp_path / "e.json")  # fmt: skip
    assert code == 0, err
    result = json.loads((tmp_path / "e.json").read_text())
    assert (result["dataset"], result["num_examples"]) == ("sprites", 8)
    code, out, err = run(capsys, "evaluate", tmp_path / "r", "--num-samples", 2, "--limit", 200,
                         "--disentanglement", "--intervention-points", 20, "--no-progress",
                         "--json", tmp_path / "d.json")  # fmt: skip
    assert code == 0, err
    scores = json.loads((tmp_path / "d.json").read_text())
    keys = ("mig", "sap", "dci_disentanglement", "dci_completeness", "dci_informativeness",
            "modularity", "beta_vae_score", "factor_vae_score")  # fmt: skip
    assert all(0.0 <= scores[k] <= 1.0 for k in keys), scores
    assert scores["disentanglement_num_images"] == 200 and "MIG" in out
    assert scores["disentanglement_factors"] == ["shape", "scale", "orientation", "pos_x",
                                                 "pos_y"]  # colour is constant  # fmt: skip
    for kind in ("traversals", "mutual-information"):
        png = tmp_path / f"{kind}.png"
        code, _, err = run(capsys, "plot", tmp_path / "r", "--kind", kind, "--limit", 300,
                           "--dims", 3, "--out", png)  # fmt: skip
        assert code == 0 and png.read_bytes()[:4] == b"\x89PNG", err
    from pyro_genmodels.evaluation import disentanglement_scores
    from pyro_genmodels.runs import load_run

    module = load_run(tmp_path / "r").module
    with pytest.raises(ValueError, match="digits has no known factors"):
        disentanglement_scores(module, load_dataset("digits", "test", limit=10))
    with pytest.raises(ValueError, match="image_size applies to sprites only"):
        load_dataset("digits", "test", image_size=32)


def test_the_dsprites_file_as_a_data_set(tmp_path):
    from pyro_genmodels.data import DataNotFoundError, load_dataset

    write_dsprites(tmp_path / sprites.DSPRITES_FILE)
    train = load_dataset("dsprites", "train", data_dir=tmp_path)
    test = load_dataset("dsprites", "test", data_dir=tmp_path)
    assert len(train) + 2 * len(test) == 48 and len(test) == 4
    x = train.fixed()
    assert np.array_equal(x[:, 0, 0, :6].numpy().astype(np.int64), train.factors)
    with pytest.raises(DataNotFoundError, match="pass data_dir= or set"):
        load_dataset("dsprites", "test", data_dir=tmp_path / "empty")


def test_render_is_the_one_the_cache_version_names():
    """A change to what render draws must raise sprites.CACHE_VERSION (old cache files would
    otherwise be read as if they held the new images); then update these digests."""
    import hashlib

    digests = {
        32: "2cb5899329693828d8fdf3196ad180a324a406a370953501af706070d623ebc5",
        64: "fea01373c7a998d6404d1cfb51cc0a6e998c61a4d0200a668a08c2905cf1d514",
    }
    assert sprites.CACHE_VERSION == 1
    index = np.arange(0, 737_280, 7919)
    for size, digest in digests.items():
        assert hashlib.sha256(Sprites(size).images(index).tobytes()).hexdigest() == digest


def _coded(classes, size=64):
    """A fast stand-in for render: each factor class written in binary on its own row."""
    classes = torch.as_tensor(np.asarray(classes), dtype=torch.long)
    bits = (classes.unsqueeze(-1) >> torch.arange(size)) & 1  # (N, 6, size)
    out = torch.zeros(len(classes), size, size, dtype=torch.uint8)
    out[:, :6] = bits.to(torch.uint8)
    return out


def test_the_cache_file_is_filled_once_and_read_back(tmp_path, monkeypatch):
    monkeypatch.setattr(sprites, "render", _coded)
    monkeypatch.setattr(sprites, "CACHE_THRESHOLD", 1000)
    data = Sprites(32, cache_dir=tmp_path)
    index = np.random.default_rng(0).integers(737_280, size=500)
    small = data.images(index)  # under the threshold: drawn in memory, no file
    assert not data.cache_path.exists() and np.array_equal(small, _coded(data.classes(index), 32))
    big = np.random.default_rng(1).integers(737_280, size=1000)
    assert np.array_equal(data.images(big), _coded(data.classes(big), 32).numpy())
    assert data.cache_path.name == "sprites-32px-v1.npy"
    assert data.cache_path.stat().st_size < 737_280 * 32 * 32 / 8 + 4096  # one bit a pixel
    assert not data.cache_path.with_suffix(".partial").exists()

    def no_drawing(*args):
        raise AssertionError("drawn again, not read from the cache")

    monkeypatch.setattr(sprites, "render", no_drawing)
    again = Sprites(32, cache_dir=tmp_path)  # a new process: the file is there
    assert np.array_equal(again.images(index), small)
    assert np.array_equal(again.images(index[::-1])[::-1], small)
    assert again.fill_cache() == again.cache_path  # nothing to do


def test_an_interrupted_fill_leaves_no_cache(tmp_path, monkeypatch):
    calls = []

    def dies_on_the_third_batch(classes, size=64):
        calls.append(len(classes))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return _coded(classes, size)

    monkeypatch.setattr(sprites, "render", dies_on_the_third_batch)
    data = Sprites(32, cache_dir=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        data.fill_cache(batch_size=4096)
    assert not data.cache_path.exists()  # only the partial file, which the next fill rewrites
    monkeypatch.setattr(sprites, "render", _coded)
    assert data.fill_cache() == data.cache_path  # starts over
    assert not data.cache_path.with_suffix(".partial").exists()
    index = np.array([0, 4096 * 2 + 5, 737_279])
    assert np.array_equal(data.images(index), _coded(data.classes(index), 32).numpy())


def test_a_foreign_cache_file_is_refused(tmp_path):
    data = Sprites(32, cache_dir=tmp_path)
    np.save(data.cache_path, np.zeros((10, 128), np.uint8))
    with pytest.raises(ValueError, match="delete it to draw it again"):
        data.images([0])
