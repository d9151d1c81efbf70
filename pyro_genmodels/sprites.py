"""Images with known factors of variation: :class:`Sprites` (generated), :class:`DSprites`
(DeepMind's file) and :class:`Shapes3D` (DeepMind's 3D Shapes file), behind one interface,
:class:`FactorImages`: ``factor_names``, ``factor_sizes``, the factor classes of each image,
the images of given factors, and uniform sampling of factors (what the interventional
disentanglement metrics need).

Sprites are binary images of a shape drawn from known factors, in the layout of
dSprites (Matthey et al. 2017).

Factors, with the values dSprites uses: colour (1 value), shape (square, ellipse, heart),
scale (6 values in [0.5, 1]), orientation (40 values in [0, 2 pi]), position x and y (32
values each in [0, 1]); 737,280 combinations, in the order of dSprites' arrays (the last
factor varies fastest). :class:`Sprites` rasterizes any of them on demand, deterministically,
by supersampling each pixel 4 x 4 and keeping the pixels at least half covered.

The images are not pixel-identical to dSprites (whose generator was never published): the
shapes, their sizes and the range of positions are ours (below). As in dSprites,
orientations 0 and 2 pi draw the same image, and so do the square's rotations by a quarter
turn and the ellipse's by a half turn when such a rotation is one of the 40 values (it is
not: the step is 2 pi / 39).
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch

FACTOR_NAMES = ("color", "shape", "scale", "orientation", "pos_x", "pos_y")
FACTOR_SIZES = (1, 3, 6, 40, 32, 32)
SHAPES = ("square", "ellipse", "heart")

#: the extent of a shape at scale 1, as a fraction of the image width (its "radius")
RADIUS = 0.14
#: shape centres span [MARGIN, 1 - MARGIN] of the image as the position goes from 0 to 1
MARGIN = 0.17
SUPERSAMPLE = 4


def factor_values() -> list[np.ndarray]:
    """The value of each class of each factor (dSprites' ``latents_values`` columns)."""
    return [
        np.ones(1),
        np.arange(1.0, 4.0),
        np.linspace(0.5, 1.0, 6),
        np.linspace(0.0, 2 * math.pi, 40),
        np.linspace(0.0, 1.0, 32),
        np.linspace(0.0, 1.0, 32),
    ]


def _inside(shape: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Whether the points ``(u, v)`` (in units of the shape's radius, y down) are inside."""
    square = torch.maximum(u.abs(), v.abs()) <= 0.8
    ellipse = u**2 + (v / 0.5) ** 2 <= 1.0
    x, y = 1.25 * u, 0.1 - 1.25 * v  # the heart curve (x^2 + y^2 - 1)^3 <= x^2 y^3, point down
    heart = (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0
    return torch.where(shape == 0, square, torch.where(shape == 1, ellipse, heart))


def render(classes: np.ndarray | torch.Tensor, size: int = 64) -> torch.Tensor:
    """Images ``(N, size, size)`` of dtype uint8 (0 or 1) for factor classes ``(N, 6)``.

    Only a window of ``0.4 * size`` pixels around each shape's centre is supersampled: the
    shape never reaches further (its extent is at most ``1.14 * RADIUS`` of the width).
    """
    classes = torch.as_tensor(np.asarray(classes), dtype=torch.long)
    if classes.dim() != 2 or classes.shape[1] != len(FACTOR_SIZES):
        raise ValueError(f"classes must be (N, 6), got shape {tuple(classes.shape)}")
    if ((classes < 0) | (classes >= torch.tensor(FACTOR_SIZES))).any():
        raise ValueError(f"factor classes out of range; sizes are {FACTOR_SIZES}")
    values = [torch.as_tensor(v, dtype=torch.float64) for v in factor_values()]
    num = len(classes)
    shape = classes[:, 1].view(-1, 1, 1)
    scale = values[2][classes[:, 2]].view(-1, 1, 1)
    angle = torch.remainder(values[3][classes[:, 3]], 2 * math.pi).view(-1, 1, 1)
    cx = MARGIN + (1 - 2 * MARGIN) * values[4][classes[:, 4]]
    cy = MARGIN + (1 - 2 * MARGIN) * values[5][classes[:, 5]]
    window = math.ceil(0.4 * size)
    left = ((cx * size).round().long() - window // 2).clamp(0, size - window)
    top = ((cy * size).round().long() - window // 2).clamp(0, size - window)
    n = window * SUPERSAMPLE
    sub = (torch.arange(n, dtype=torch.float64) + 0.5) / SUPERSAMPLE  # in pixels
    dx = (left.view(-1, 1, 1) + sub.view(1, 1, n)) / size - cx.view(-1, 1, 1)
    dy = (top.view(-1, 1, 1) + sub.view(1, n, 1)) / size - cy.view(-1, 1, 1)  # y down
    r = RADIUS * scale
    cos, sin = torch.cos(angle), torch.sin(angle)
    u, v = (cos * dx + sin * dy) / r, (-sin * dx + cos * dy) / r
    cover = _inside(shape, u, v).to(torch.float32)
    cover = cover.view(num, window, SUPERSAMPLE, window, SUPERSAMPLE).mean(dim=(2, 4))
    out = torch.zeros(num, size, size, dtype=torch.uint8)
    rows = (top.view(-1, 1) + torch.arange(window)).view(num, window, 1)
    cols = (left.view(-1, 1) + torch.arange(window)).view(num, 1, window)
    out[torch.arange(num).view(-1, 1, 1), rows, cols] = (cover >= 0.5).to(torch.uint8)
    return out


class FactorImages:
    """Images indexed by the combinations of their factors, in C order (the last factor
    varies fastest), as dSprites and 3D Shapes store them."""

    factor_names: tuple[str, ...]
    factor_sizes: tuple[int, ...]

    def __len__(self) -> int:
        return int(np.prod(self.factor_sizes))

    def classes(self, index) -> np.ndarray:
        """The factor classes ``(N, K)`` of images ``index`` (dSprites' ``latents_classes``)."""
        index = np.asarray(index, dtype=np.int64)
        if ((index < 0) | (index >= len(self))).any():
            raise IndexError(f"image index out of range [0, {len(self)})")
        return np.stack(np.unravel_index(index, self.factor_sizes), axis=-1).astype(np.int64)

    def index(self, classes) -> np.ndarray:
        """The inverse of :meth:`classes`."""
        classes = np.asarray(classes, dtype=np.int64)
        if classes.ndim != 2 or classes.shape[1] != len(self.factor_sizes):
            raise ValueError(f"factor classes must be (N, {len(self.factor_sizes)}), got "
                             f"shape {classes.shape}")  # fmt: skip
        if ((classes < 0) | (classes >= np.array(self.factor_sizes))).any():
            raise ValueError(f"factor classes out of range; sizes are {self.factor_sizes}")
        return np.ravel_multi_index(tuple(classes.T), self.factor_sizes).astype(np.int64)

    def sample_factors(self, num: int, rng: np.random.Generator) -> np.ndarray:
        """``(num, K)`` factor classes drawn uniformly."""
        return np.stack([rng.integers(s, size=num) for s in self.factor_sizes], axis=1)

    def images(self, index) -> np.ndarray:
        """The stored images ``index``: ``(N, H, W)`` or ``(N, H, W, C)`` uint8."""
        raise NotImplementedError

    def images_from_factors(self, factors: np.ndarray, rng: np.random.Generator | None = None):
        """Images ``(N, C, H, W)`` as float tensors (binary: 0 or 1; colour: levels 0..255)
        with the given factor classes."""
        x = torch.from_numpy(np.ascontiguousarray(self.images(self.index(factors))))
        return x.unsqueeze(1).float() if x.dim() == 3 else x.permute(0, 3, 1, 2).float()


#: a request for at least this many sprites draws all 737,280 once into the cache file
#: and reads them from there (smaller requests are drawn in memory unless the file exists)
CACHE_THRESHOLD = 50_000
#: in the cache file's name: raise it whenever :func:`render` draws other pixels
CACHE_VERSION = 1


class Sprites(FactorImages):
    """The 737,280 sprites, drawn on demand; the arrays of dSprites' file.

    :param size: image width and height (64 as dSprites; 32 for fast runs, where
        neighbouring positions may draw the same image).
    :param cache_dir: a folder for the cache file (:attr:`cache_path`): all the images of
        this size, one bit a pixel (94 MB at 32x32, 377 MB at 64x64), drawn once when a
        request of at least :data:`CACHE_THRESHOLD` images comes (drawing them took 2 min 41 s
        at 32x32 on two CPU cores; 64x64 takes about 6 times as long), then read from
        there. None: always draw.
    """

    factor_names = FACTOR_NAMES
    factor_sizes = FACTOR_SIZES

    def __init__(self, size: int = 64, cache_dir: str | Path | None = None):
        if size not in (32, 64):
            raise ValueError(f"size must be 32 or 64, got {size}")
        self.size = size
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._bits: np.ndarray | None = None

    @property
    def cache_path(self) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"sprites-{self.size}px-v{CACHE_VERSION}.npy"

    def values(self, classes) -> np.ndarray:
        """The factor values ``(N, 6)`` of classes (dSprites' ``latents_values``)."""
        classes = np.asarray(classes, dtype=np.int64)
        columns = factor_values()
        return np.stack([columns[k][classes[:, k]] for k in range(len(columns))], axis=1)

    def images(self, index, batch_size: int = 512) -> np.ndarray:
        """Images ``index`` as dSprites' ``imgs``: ``(N, size, size)`` uint8 in {0, 1}."""
        index = np.atleast_1d(np.asarray(index, dtype=np.int64))
        classes = self.classes(index)  # checks the range
        bits = self._cached(len(index))
        if bits is not None:
            pixels = np.unpackbits(bits[index], axis=1, count=self.size * self.size)
            return pixels.reshape(-1, self.size, self.size)
        return self.draw(classes, batch_size)

    def draw(self, classes, batch_size: int = 512) -> np.ndarray:
        """:func:`render` in batches, as a numpy array."""
        parts = [render(classes[i : i + batch_size], self.size).numpy()
                 for i in range(0, len(classes), batch_size)]  # fmt: skip
        return np.concatenate(parts) if parts else np.zeros((0, self.size, self.size), np.uint8)

    def _cached(self, num: int) -> np.ndarray | None:
        """The cache file, memory-mapped (filled first when ``num`` is large), or None."""
        path = self.cache_path
        if self._bits is not None or path is None:
            return self._bits
        if not path.is_file():
            if num < CACHE_THRESHOLD:
                return None
            try:
                self.fill_cache()
            except OSError as e:
                warnings.warn(f"cannot write the sprites cache {path} ({e}); drawing the "
                              "images in memory instead", stacklevel=3)  # fmt: skip
                return None
        bits = np.load(path, mmap_mode="r", allow_pickle=False)
        if bits.shape != (len(self), self.size * self.size // 8) or bits.dtype != np.uint8:
            raise ValueError(f"{path} is not a cache of {self.size}x{self.size} sprites "
                             f"(shape {bits.shape}); delete it to draw it again")  # fmt: skip
        self._bits = bits
        return bits

    def fill_cache(self, batch_size: int = 4096) -> Path:
        """Draw every image into :attr:`cache_path` unless it exists; returns the path.

        The images go to ``NAME.partial``, renamed over the path once complete (an
        interrupted fill leaves no cache); a lock file makes a second process wait for
        the first's file instead of drawing its own.
        """
        import fcntl
        import sys

        from tqdm.auto import tqdm

        path = self.cache_path
        if path is None:
            raise ValueError("fill_cache needs a cache_dir")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if path.is_file():
                return path
            partial = path.with_suffix(".partial")
            bits = np.lib.format.open_memmap(
                partial, mode="w+", dtype=np.uint8, shape=(len(self), self.size**2 // 8)
            )
            desc = f"drawing the {self.size}x{self.size} sprites into {path} (once)"
            with tqdm(total=len(self), desc=desc, unit="images", file=sys.stderr) as bar:
                for start in range(0, len(self), batch_size):
                    stop = min(start + batch_size, len(self))
                    drawn = self.draw(self.classes(np.arange(start, stop)), batch_size)
                    bits[start:stop] = np.packbits(drawn.reshape(stop - start, -1), axis=1)
                    bar.update(stop - start)
            bits.flush()
            del bits
            with open(partial, "rb") as f:
                os.fsync(f.fileno())
            os.replace(partial, path)
        return path


DSPRITES_FILE = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
SHAPES3D_FILE = "3dshapes.h5"
SHAPES3D_FACTORS = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")


def _classes_from_values(values: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """Factor classes from factor values: each column's sorted distinct values, indexed."""
    columns = [np.unique(values[:, k], return_inverse=True) for k in range(values.shape[1])]
    classes = np.stack([inverse.reshape(-1) for _, inverse in columns], axis=1)
    return classes.astype(np.int64), tuple(len(u) for u, _ in columns)


def _check_order(classes: np.ndarray, sizes: tuple[int, ...], path) -> None:
    """The file must hold every combination once, in C order (so index = combination)."""
    if len(classes) != int(np.prod(sizes)) or not np.array_equal(
        np.ravel_multi_index(tuple(classes.T), sizes), np.arange(len(classes))
    ):
        raise ValueError(f"{path}: the images are not every combination of the factors "
                         f"{sizes} in order, as the original file stores them")  # fmt: skip


class DSprites(FactorImages):
    """DeepMind's ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`` (``imgs``,
    ``latents_values``, ``latents_classes``), read whole (737,280 images, 2.9 GB as uint8).

    :param path: the file, or a folder holding it.
    """

    factor_names = FACTOR_NAMES

    def __init__(self, path):
        from pathlib import Path

        path = Path(path)
        if path.is_dir():
            path = path / DSPRITES_FILE
        if not path.is_file():
            raise FileNotFoundError(f"dsprites: {path} not found (DeepMind's {DSPRITES_FILE})")
        with np.load(path, allow_pickle=False) as f:
            missing = {"imgs", "latents_classes"} - set(f.files)
            if missing:
                raise ValueError(f"{path}: not a dSprites file (no {', '.join(sorted(missing))})")
            self._imgs = f["imgs"]
            classes = f["latents_classes"].astype(np.int64)
        if self._imgs.ndim != 3 or classes.shape != (len(self._imgs), 6):
            raise ValueError(f"{path}: imgs must be (N, H, W) and latents_classes (N, 6), got "
                             f"{self._imgs.shape} and {classes.shape}")  # fmt: skip
        self.factor_sizes = tuple(int(m) + 1 for m in classes.max(axis=0))
        _check_order(classes, self.factor_sizes, path)

    def images(self, index) -> np.ndarray:
        index = np.atleast_1d(np.asarray(index, dtype=np.int64))
        self.classes(index)  # checks the range
        return self._imgs[index]


class Shapes3D(FactorImages):
    """DeepMind's 3D Shapes ``3dshapes.h5`` (``images`` ``(480000, 64, 64, 3)`` uint8,
    ``labels`` ``(480000, 6)`` factor values), read image by image with h5py.

    :param path: the file, or a folder holding it.
    """

    factor_names = SHAPES3D_FACTORS

    def __init__(self, path):
        from pathlib import Path

        try:
            import h5py
        except ImportError:
            raise ImportError("shapes3d needs h5py: pip install h5py") from None
        path = Path(path)
        if path.is_dir():
            path = path / SHAPES3D_FILE
        if not path.is_file():
            raise FileNotFoundError(f"shapes3d: {path} not found (DeepMind's {SHAPES3D_FILE})")
        self._file = h5py.File(path, "r")
        if {"images", "labels"} - set(self._file):
            raise ValueError(f"{path}: not a 3D Shapes file (needs datasets images and labels)")
        classes, self.factor_sizes = _classes_from_values(self._file["labels"][()])
        if classes.shape[1] != len(SHAPES3D_FACTORS):
            raise ValueError(f"{path}: labels must have 6 factors, got {classes.shape[1]}")
        _check_order(classes, self.factor_sizes, path)

    def images(self, index) -> np.ndarray:
        index = np.atleast_1d(np.asarray(index, dtype=np.int64))
        self.classes(index)  # checks the range
        order = np.argsort(index)  # h5py reads increasing, unique indices
        unique, inverse = np.unique(index[order], return_inverse=True)
        rows = self._file["images"][unique.tolist()]
        out = np.empty((len(index), *rows.shape[1:]), rows.dtype)
        out[order] = rows[inverse]
        return out
