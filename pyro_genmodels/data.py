"""Image data sets by name, their splits, and the representation a likelihood needs.

Data sets: ``digits`` (scikit-learn's 8x8 digits, embedded,
always available offline), ``mnist``, ``binarized-mnist`` (the static
Larochelle & Murray binarization) and ``fashion-mnist`` (grey, 28x28); ``cifar10`` and
``svhn`` (RGB, 32x32); ``photo-patches`` (RGB 16x16 patches of the two colour photographs
scikit-learn ships, embedded, the offline RGB default); with known factors of variation,
``sprites`` (generated, 64x64 or 32x32 binary: :mod:`pyro_genmodels.sprites`), ``dsprites``
and ``shapes3d`` (DeepMind's files, where the user has them).

Files are read from ``data_dir``, else ``$PYRO_GENMODELS_DATA``, else a user
cache directory, in these layouts:

* Keras-style ``mnist.npz`` / ``fashion-mnist.npz`` (``x_train, y_train, x_test, y_test``),
  or torchvision's ``MNIST/raw`` / ``FashionMNIST/raw`` (downloaded by torchvision
  where the network allows);
* ``binarized_mnist.npz`` (``train, valid, test``) or the original
  ``binarized_mnist_{train,valid,test}.amat`` files;
* torchvision's ``cifar-10-batches-py/`` (``data_batch_1`` .. ``data_batch_5``,
  ``test_batch``) and SVHN's ``train_32x32.mat`` / ``test_32x32.mat``, downloaded by
  torchvision where the network allows.

Splits: ``train`` / ``valid`` / ``test``. The validation split serves model
selection (MNIST: the last 10000 of the 60000 training images, as in the
binarized set; CIFAR-10 and SVHN: the last 10 % of the training file(s), 5000 and 7326
images; photo-patches: a band of each photograph, see :func:`photo_patches`); ``test`` is
for final figures only.

Representations (``data_format``, chosen by the likelihood):

* ``binary``: {0, 1}; grey levels are binarized ``static`` (sampled once with a
  fixed seed) or ``dynamic`` (resampled every time a batch is drawn);
* ``dequantized``: ``(level + u) / 256`` with ``u ~ U[0, 1)``, continuous in [0, 1];
* ``levels``: integer grey levels 0..255 stored as float.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

DATASETS = (
    "digits", "mnist", "binarized-mnist", "fashion-mnist", "cifar10", "svhn", "photo-patches",
    "sprites", "dsprites", "shapes3d",
)  # fmt: skip
#: data sets with known factors of variation (``ImageDataset.factors``)
FACTOR_DATASETS = ("sprites", "dsprites", "shapes3d")
#: images of each split of a factor data set kept for validation and test (the rest train)
FACTOR_HELD_OUT = 5000
SPLITS = ("train", "valid", "test")
BINARIZATIONS = ("static", "dynamic")
DATA_FORMATS = ("binary", "dequantized", "levels")
ENV_DATA_DIR = "PYRO_GENMODELS_DATA"
ENV_NO_DOWNLOAD = "PYRO_GENMODELS_NO_DOWNLOAD"
ENV_BINARIZED_MNIST_URL = "PYRO_GENMODELS_BINARIZED_MNIST_URL"

_MNIST_VALID = 10_000  # the last 10000 training images form the validation split
_DIGITS_SPLIT = (1297, 200, 300)  # train / valid / test sizes of a fixed permutation
_RGB_VALID_FRACTION = 0.1  # CIFAR-10, SVHN: the last 10 % of the training images validate
_CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


class DataNotFoundError(FileNotFoundError):
    """A data set's files are not in the data directory and could not be downloaded."""


def default_data_dir() -> Path:
    """``$PYRO_GENMODELS_DATA``, else ``$XDG_CACHE_HOME/pyro-genmodels`` (``~/.cache``)."""
    if os.environ.get(ENV_DATA_DIR):
        return Path(os.environ[ENV_DATA_DIR]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "pyro-genmodels"


@dataclass
class RawImages:
    """One split as stored: ``images`` uint8 ``(N, C, H, W)``, grey levels or 0/1; for a data
    set with known factors, their classes ``(N, K)`` and the source that draws images from
    given factors (:class:`~pyro_genmodels.sprites.FactorImages`)."""

    images: torch.Tensor
    labels: torch.Tensor | None
    binary: bool
    name: str
    split: str
    factors: np.ndarray | None = None
    source: object | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]


def _check_name(name: str, split: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")


def _check_array(arr: np.ndarray, what: str, binary: bool) -> np.ndarray:
    if arr.ndim != 3 or arr.shape[1:] != (28, 28):
        raise ValueError(f"{what} should hold 28x28 images, found an array of shape {arr.shape}")
    hi = 1 if binary else 255
    if arr.size and (arr.min() < 0 or arr.max() > hi or not np.all(np.mod(arr, 1) == 0)):
        kind = "binary values {0, 1}" if binary else "integer grey levels 0..255"
        raise ValueError(f"{what} should hold {kind}, found values in [{arr.min()}, {arr.max()}]")
    return arr.astype(np.uint8)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} is not a readable .npz file ({_first_line(e)})") from e


def _first_line(e: BaseException) -> str:
    return str(e).split(".")[0]


def _load_npz(path: Path, key: str, binary: bool) -> np.ndarray:
    arrays = _read_npz(path)
    if key not in arrays:
        raise ValueError(f"{path} has no array {key!r} (found {', '.join(arrays)})")
    return _check_array(arrays[key], f"{path}[{key!r}]", binary)


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _mnist_like(name: str, split: str, root: Path, download: bool) -> RawImages:
    """MNIST or Fashion-MNIST: a Keras-style .npz, else torchvision's layout/downloader."""
    npz = root / f"{name}.npz"
    train_part = split != "test"
    if npz.is_file():
        x = _load_npz(npz, "x_train" if train_part else "x_test", binary=False)
        y = _load_npz_labels(npz, "y_train" if train_part else "y_test")
    else:
        from torchvision import datasets

        cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
        folder = root / cls.__name__
        root_existed, existed = root.exists(), folder.exists()
        try:
            with _socket_timeout(20):
                ds = cls(str(root), train=train_part, download=download)
        except (RuntimeError, OSError) as e:
            if not existed:
                _remove_empty_dirs(folder)
            if not root_existed and root.is_dir() and not any(root.iterdir()):
                root.rmdir()
            how = "and downloading it failed" if download else "(downloads are disabled)"
            raise DataNotFoundError(
                f"{name} not found in {root} (looked for {npz.name} and "
                f"{cls.__name__}/raw) {how}; pass data_dir= or set ${ENV_DATA_DIR} to a "
                f"directory holding {npz.name}"
            ) from e
        x = _check_array(ds.data.numpy(), f"{root}/{cls.__name__}", binary=False)
        y = ds.targets.numpy()
    if train_part:
        cut = len(x) - _MNIST_VALID
        x, y = (x[:cut], y[:cut]) if split == "train" else (x[cut:], y[cut:])
    return RawImages(torch.from_numpy(x)[:, None], torch.from_numpy(y).long(), False, name, split)


def _remove_empty_dirs(folder: Path) -> None:
    """Undo the empty folders a failed torchvision download leaves behind."""
    if not folder.is_dir():
        return
    for sub in sorted(folder.rglob("*"), reverse=True):
        if sub.is_dir() and not any(sub.iterdir()):
            sub.rmdir()
    if not any(folder.iterdir()):
        folder.rmdir()


def _load_npz_labels(path: Path, key: str) -> np.ndarray:
    arrays = _read_npz(path)
    return arrays[key].astype(np.int64) if key in arrays else np.zeros(0, np.int64)


#: where ``binarized-mnist`` downloads from: Larochelle & Murray's files, those the IWAE,
#: PixelRNN and VampPrior code read (``$PYRO_GENMODELS_BINARIZED_MNIST_URL`` for a mirror)
BINARIZED_MNIST_URL = (
    "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
    "binarized_mnist_{split}.amat"
)
#: sha256 of each split's images as uint8 0/1, (N, 784) row-major: the files' content, which
#: a reformatted mirror keeps (the bytes of a text file need not)
BINARIZED_MNIST_SHA256 = {
    "train": "43490d4d6ac9002727af4426d8748609fdb7e4094fa65ad8d681ea60082a7a5a",
    "valid": "069b4f0beb389b776478c3e872b4df71c95ac4be64d7cbe6d32e24ebac8e6d5e",
    "test": "ca0294c3b8d984c7a1dc891015a8eea6f37bae59a34e35ea0fc8c47110a8dd86",
}


def _read_amat(path: Path) -> np.ndarray:
    try:
        arr = np.loadtxt(path, dtype=np.float32).reshape(-1, 28, 28)
    except ValueError as e:
        raise ValueError(f"{path} is not a readable .amat file ({e})") from e
    return _check_array(arr, str(path), binary=True)


def _download_amat(split: str, root: Path) -> Path:
    """Download ``binarized_mnist_{split}.amat`` into ``root``, check its content, and move
    it into place only then (a failed or wrong download leaves no file)."""
    import hashlib
    import tempfile
    import urllib.request

    url = os.environ.get(ENV_BINARIZED_MNIST_URL, BINARIZED_MNIST_URL).format(split=split)
    target = root / f"binarized_mnist_{split}.amat"
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=root)
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, f)
        arr = _read_amat(Path(tmp))
        digest = hashlib.sha256(arr.reshape(len(arr), -1).astype(np.uint8).tobytes()).hexdigest()
        if digest != BINARIZED_MNIST_SHA256[split]:
            raise ValueError(f"the images of {url} have sha256 {digest}, not the expected "
                             f"{BINARIZED_MNIST_SHA256[split]}")  # fmt: skip
        os.replace(tmp, target)
    except Exception as e:  # noqa: BLE001 - urllib, parsing and the checksum raise many types
        raise DataNotFoundError(f"binarized-mnist: downloading {url} failed: {e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _binarized_mnist(split: str, root: Path, download: bool = False) -> RawImages:
    npz = root / "binarized_mnist.npz"
    if npz.is_file():
        x = _load_npz(npz, split, binary=True)
    else:
        found = [b / f"binarized_mnist_{split}.amat" for b in (root, root / "binarized_mnist")]
        found = [a for a in found if a.is_file()]
        if not found and download:
            found = [_download_amat(split, root)]
        if not found:
            how = "" if download else " (downloads are disabled)"
            raise DataNotFoundError(
                f"binarized-mnist not found in {root} (looked for binarized_mnist.npz and "
                f"binarized_mnist_{split}.amat){how}; pass data_dir= or "
                f"set ${ENV_DATA_DIR} to a directory holding binarized_mnist.npz"
            )
        x = _read_amat(found[0])
    return RawImages(torch.from_numpy(x)[:, None], None, True, "binarized-mnist", split)


def _digits(split: str) -> RawImages:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    levels = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    order = np.random.RandomState(0).permutation(len(levels))
    n_train, n_valid, _ = _DIGITS_SPLIT
    bounds = {"train": (0, n_train), "valid": (n_train, n_train + n_valid)}
    lo, hi = bounds.get(split, (n_train + n_valid, len(levels)))
    idx = order[lo:hi]
    images = torch.from_numpy(levels[idx])[:, None]
    return RawImages(images, torch.from_numpy(bunch.target[idx]).long(), False, "digits", split)


def _check_rgb(arr: np.ndarray, what: str, size: int = 32) -> np.ndarray:
    if arr.ndim != 4 or arr.shape[1:] != (3, size, size):
        raise ValueError(
            f"{what} should hold {size}x{size} RGB images, found an array of shape {arr.shape}"
        )
    if arr.dtype != np.uint8:
        raise ValueError(f"{what} should hold uint8 levels 0..255, found dtype {arr.dtype}")
    return arr


def _train_valid(x: np.ndarray, y: np.ndarray, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The training part or the validation part (the last 10 %) of a training file."""
    if split == "test":
        return x, y
    cut = len(x) - int(round(len(x) * _RGB_VALID_FRACTION))
    return (x[:cut], y[:cut]) if split == "train" else (x[cut:], y[cut:])


def _torchvision_download(name: str, cls_name: str, root: Path, expected: Path, **kwargs) -> None:
    """Let torchvision download a missing data set into ``root`` (where the network allows)."""
    from torchvision import datasets

    if not kwargs.pop("download"):
        raise DataNotFoundError(
            f"{name} not found: {expected} is missing (downloads are disabled); pass data_dir= "
            f"or set ${ENV_DATA_DIR} to the directory holding it"
        )
    existed = root.exists()
    try:
        with _socket_timeout(20):
            getattr(datasets, cls_name)(str(root), download=True, **kwargs)
    except (RuntimeError, OSError) as e:
        if not existed and root.is_dir() and not any(root.iterdir()):
            root.rmdir()
        raise DataNotFoundError(
            f"{name} not found: {expected} is missing and downloading it failed; pass "
            f"data_dir= or set ${ENV_DATA_DIR} to the directory holding it"
        ) from e


def _cifar10(split: str, root: Path, download: bool) -> RawImages:
    """CIFAR-10 from torchvision's ``cifar-10-batches-py/`` layout.

    The pickled batches are read here rather than through ``torchvision.datasets.CIFAR10``,
    which refuses any file whose MD5 differs from the official one (a subset, a re-pickled
    copy, the tests' small files); only the download goes through torchvision. Like
    torchvision, this unpickles the files: use data from a source you trust.
    """
    import pickle

    folder = root / "cifar-10-batches-py"
    names = _CIFAR_FILES["test" if split == "test" else "train"]
    missing = [folder / n for n in names if not (folder / n).is_file()]
    if missing:
        _torchvision_download(
            "cifar10", "CIFAR10", root, missing[0], train=split != "test", download=download
        )
    xs, ys = [], []
    for n in names:
        path = folder / n
        try:
            with path.open("rb") as f:
                batch = pickle.load(f, encoding="bytes")
            data, labels = batch[b"data"], batch[b"labels"]
        except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is not a CIFAR-10 batch ({_first_line(e)})") from e
        data = np.asarray(data)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{path} should hold rows of 3072 levels, found shape {data.shape}")
        xs.append(_check_rgb(data.reshape(-1, 3, 32, 32), str(path)))
        ys.append(np.asarray(labels, dtype=np.int64))
    x, y = _train_valid(np.concatenate(xs), np.concatenate(ys), split)
    return RawImages(torch.from_numpy(x.copy()), torch.from_numpy(y), False, "cifar10", split)


def _svhn(split: str, root: Path, download: bool) -> RawImages:
    """SVHN (cropped digits) from ``train_32x32.mat`` / ``test_32x32.mat`` in ``root``, read
    with SciPy for the same reason as CIFAR-10 (torchvision checks the official MD5); label
    10 is the digit 0, as in the files."""
    from scipy.io import loadmat

    path = root / ("test_32x32.mat" if split == "test" else "train_32x32.mat")
    if not path.is_file():
        _torchvision_download(
            "svhn", "SVHN", root, path, split="test" if split == "test" else "train",
            download=download,
        )  # fmt: skip
    try:
        mat = loadmat(path)
        x, y = mat["X"], mat["y"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not an SVHN .mat file ({_first_line(e)})") from e
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise ValueError(f"{path}['X'] should have shape (32, 32, 3, N), found {x.shape}")
    x = _check_rgb(np.ascontiguousarray(x.transpose(3, 2, 0, 1)), f"{path}['X']")
    y = np.asarray(y, dtype=np.int64).reshape(-1) % 10
    x, y = _train_valid(x, y, split)
    return RawImages(torch.from_numpy(x.copy()), torch.from_numpy(y), False, "svhn", split)


#: photo-patches: patch size, stride, and the column bands of each photograph per split
PHOTO_PATCH_SIZE, PHOTO_PATCH_STRIDE = 16, 8
PHOTO_BANDS = {"train": (0.0, 0.7), "valid": (0.7, 0.85), "test": (0.85, 1.0)}


def photo_patches(split: str) -> torch.Tensor:
    """16x16 RGB patches, stride 8, of the two photographs scikit-learn ships (``china.jpg``
    and ``flower.jpg``, 427 x 640, ``sklearn.datasets.load_sample_images``), uint8
    ``(N, 3, 16, 16)``. Split by region: in each photograph the left 70 % of the columns
    give the training patches, the next 15 % the validation patches and the right 15 % the
    test patches; no patch crosses a band, so no pixel is shared between splits.
    Deterministic: photo by photo, row by row."""
    from sklearn.datasets import load_sample_images

    size, stride = PHOTO_PATCH_SIZE, PHOTO_PATCH_STRIDE
    lo, hi = PHOTO_BANDS[split]
    patches = []
    for image in load_sample_images().images:
        height, width, _ = image.shape
        left, right = int(round(lo * width)), int(round(hi * width))
        photo = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # (3, H, W), a copy
        band = photo[:, :, left:right]
        windows = band.unfold(1, size, stride).unfold(2, size, stride)  # (3, nr, nc, s, s)
        patches.append(windows.permute(1, 2, 0, 3, 4).reshape(-1, 3, size, size))
    return torch.cat(patches).contiguous()


def _factor_split(name: str, split: str, root: Path, limit: int | None,
                  image_size: int | None) -> RawImages:  # fmt: skip
    """A split of a data set with known factors: a fixed random permutation of all the
    combinations (seed 0) gives 5000 test images (a tenth of a smaller file), then as many
    for validation, then the rest to train; only the first ``limit`` of the split are read
    or drawn."""
    from . import sprites

    if name == "sprites":
        source = sprites.Sprites(image_size or 64, cache_dir=root)
    elif image_size not in (None, 64):
        raise ValueError(f"{name} images are 64x64; image_size applies to sprites only")
    else:
        reader = sprites.DSprites if name == "dsprites" else sprites.Shapes3D
        try:
            source = reader(root)
        except FileNotFoundError as e:
            raise DataNotFoundError(f"{e}; pass data_dir= or set ${ENV_DATA_DIR} to the "
                                    "directory holding it") from None  # fmt: skip
    order = np.random.default_rng(0).permutation(len(source))
    held = min(FACTOR_HELD_OUT, len(source) // 10)  # a tenth each of a small file
    index = {"test": order[:held], "valid": order[held : 2 * held], "train": order[2 * held :]}
    index = index[split][:limit] if limit is not None else index[split]
    images = torch.from_numpy(np.ascontiguousarray(source.images(index)))
    images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
    binary = name != "shapes3d"
    return RawImages(images.contiguous(), None, binary, name, split, source.classes(index), source)


def load_raw(
    name: str,
    split: str = "train",
    data_dir: str | Path | None = None,
    download: bool = True,
    limit: int | None = None,
    image_size: int | None = None,
) -> RawImages:
    """Read one split of a data set as stored (uint8 grey levels, or 0/1 for binarized-mnist
    and the sprites).

    :param limit: read only the first ``limit`` images (the data sets with factors draw or
        read only those; the others are read whole and cut by :meth:`ImageDataset.subset`).
    :param image_size: 32 for the 32x32 sprites (default 64).
    :raises ValueError: unknown name or split, or a file with the wrong shape or values.
    :raises DataNotFoundError: the files are missing and could not be downloaded.
    """
    _check_name(name, split)
    if image_size is not None and name not in FACTOR_DATASETS:
        raise ValueError(f"image_size applies to sprites only, not {name}")
    if name == "digits":
        return _digits(split)
    if name == "photo-patches":
        return RawImages(photo_patches(split), None, False, name, split)
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    if name in FACTOR_DATASETS:
        return _factor_split(name, split, root, limit, image_size)
    download = download and not os.environ.get(ENV_NO_DOWNLOAD)
    if name == "binarized-mnist":
        return _binarized_mnist(split, root, download)
    if name == "cifar10":
        return _cifar10(split, root, download)
    if name == "svhn":
        return _svhn(split, root, download)
    return _mnist_like(name, split, root, download)


def binarize(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample binary images with pixel-on probabilities ``probs`` in [0, 1]."""
    return torch.bernoulli(probs, generator=generator)


class ImageDataset(Dataset):
    """One split in the representation a likelihood models, indexed by batches.

    ``dataset[indices]`` returns a float batch ``(B, C, H, W)``; the stochastic
    representations (dynamic binarization, dequantization) draw fresh noise from
    torch's global RNG at each access, which the trainer saves and restores.
    :meth:`fixed` returns one seeded realization for evaluation.

    :param raw: the split as stored.
    :param data_format: ``"binary"``, ``"dequantized"`` or ``"levels"``.
    :param binarization: ``"static"`` or ``"dynamic"`` (binary format only).
    :param seed: seed of the static binarization and of :meth:`fixed`.
    """

    def __init__(
        self, raw: RawImages, data_format: str, binarization: str = "static", seed: int = 0
    ):
        if data_format not in DATA_FORMATS:
            raise ValueError(f"unknown data format {data_format!r}; valid: {DATA_FORMATS}")
        if binarization not in BINARIZATIONS:
            raise ValueError(
                f"unknown binarization {binarization!r}; valid: {', '.join(BINARIZATIONS)}"
            )
        if raw.binary and data_format != "binary":
            raise ValueError(
                f"{raw.name} holds binary images; a likelihood for grey levels needs a grey-level "
                "data set (mnist, fashion-mnist, digits)"
            )
        if raw.binary and binarization == "dynamic":
            raise ValueError(
                f"{raw.name} is already binary (a static binarization); dynamic binarization "
                "needs grey levels, e.g. --dataset mnist --binarization dynamic"
            )
        self.raw, self.data_format, self.seed = raw, data_format, int(seed)
        # a selection (select) keeps the whole split's base to realize it as the whole split
        self._whole: torch.Tensor | None = None
        self._index: torch.Tensor | None = None
        self.binarization = binarization if data_format == "binary" else None
        split_seed = self.seed * 7 + SPLITS.index(raw.split)
        self._gen = lambda: torch.Generator().manual_seed(split_seed)
        # binary images stay uint8 (a quarter of the memory) and become float per batch
        self.base = raw.images if raw.binary else raw.images.float()
        if data_format == "binary" and not raw.binary:
            self.base = self.base / 255.0  # probabilities
            if binarization == "static":
                self.base = binarize(self.base, self._gen())

    def __len__(self) -> int:
        return len(self.base)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.raw.image_shape

    @property
    def labels(self) -> torch.Tensor | None:
        return self.raw.labels

    def describe(self) -> dict:
        """What a run records about its data."""
        return {
            "dataset": self.raw.name,
            "split": self.raw.split,
            "num_examples": len(self),
            "data_format": self.data_format,
            "binarization": self.binarization,
        }

    @property
    def factors(self) -> np.ndarray | None:
        """The factor classes ``(N, K)`` of each image, for a data set with known factors."""
        return self.raw.factors

    @property
    def factor_source(self):
        """What draws images from given factors (``factor_sizes``, ``images_from_factors``),
        for a data set with known factors; else None."""
        return self.raw.source

    def _realize(self, batch: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        batch = batch.float()
        if self.data_format == "binary" and self.binarization == "dynamic":
            return binarize(batch, generator)
        if self.data_format == "dequantized":
            u = torch.rand(batch.shape, generator=generator)
            return (batch + u) / 256.0
        return batch

    def __getitem__(self, index) -> torch.Tensor:
        return self._realize(self.base[index], None)

    def fixed(self) -> torch.Tensor:
        """The whole split as one fixed (seeded) realization, for evaluation; for a
        selection (:meth:`select`), its images as in the whole split's realization."""
        if self._index is not None and self._random_realization:
            return self._realize(self._whole, self._gen())[self._index]
        return self._realize(self.base, self._gen())

    @property
    def _random_realization(self) -> bool:
        """Whether :meth:`fixed` draws noise (dynamic binarization, dequantization)."""
        return self.binarization == "dynamic" or self.data_format == "dequantized"

    def subset(self, limit: int | None) -> ImageDataset:
        """The first ``limit`` examples (all if None)."""
        if limit is None:
            return self
        if int(limit) < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        if self._index is not None:
            return self.select(torch.arange(min(int(limit), len(self))))
        return self._taken(slice(0, int(limit)))

    def select(self, index: torch.Tensor) -> ImageDataset:
        """The examples at ``index`` (distinct indices into this dataset), in that order;
        their :meth:`fixed` images are the ones they have in the whole split's."""
        index = torch.as_tensor(index, dtype=torch.long)
        if index.dim() != 1 or len(index.unique()) != len(index):
            raise ValueError("select takes a 1-D tensor of distinct indices")
        if len(index) and not (0 <= int(index.min()) and int(index.max()) < len(self)):
            raise ValueError(f"indices out of range for a dataset of {len(self)} examples")
        out = self._taken(index)
        if self._index is None:  # indices into the whole split, whose realization is kept
            out._whole, out._index = self.base, index
        else:
            out._index = self._index[index]
        return out

    def _taken(self, index) -> ImageDataset:
        """A copy holding the examples at ``index`` (a slice, or a tensor of indices)."""
        out = object.__new__(ImageDataset)
        out.__dict__.update(self.__dict__)
        rows = index.numpy() if isinstance(index, torch.Tensor) else index
        labels = self.raw.labels[index] if self.raw.labels is not None else None
        factors = self.raw.factors[rows] if self.raw.factors is not None else None
        out.raw = RawImages(self.raw.images[index], labels, self.raw.binary, *self._names(),
                            factors, self.raw.source)  # fmt: skip
        out.base = self.base[index]
        return out

    def _names(self) -> tuple[str, str]:
        return self.raw.name, self.raw.split


def load_dataset(
    name: str,
    split: str = "train",
    data_format: str = "binary",
    binarization: str = "static",
    data_dir: str | Path | None = None,
    limit: int | None = None,
    download: bool = True,
    seed: int = 0,
    image_size: int | None = None,
) -> ImageDataset:
    """Load a split in the representation ``data_format`` (see the module docstring).

    >>> train = load_dataset("digits", "train", "binary")  # doctest: +SKIP
    >>> x = train.fixed()  # (1297, 1, 8, 8) in {0, 1}
    """
    raw = load_raw(name, split, data_dir, download, limit, image_size)
    return ImageDataset(raw, data_format, binarization, seed).subset(limit)
