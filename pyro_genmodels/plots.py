"""Matplotlib figures: sample grids, reconstructions, training curves, the 2-D
latent manifold, latent traversals and log p(x) estimates against K.

Every function returns the :class:`~matplotlib.figure.Figure` and, given
``path``, also writes it as PNG (and closes it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from torchvision.utils import make_grid


def image_grid(
    images: torch.Tensor,
    nrow: int | None = None,
    pad: int = 1,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    """Tile images ``(N, C, H, W)`` into one array with ``torchvision.utils.make_grid``.

    :param nrow: images per row (default: :func:`grid_columns`, so every row is full).
    :param value_range: the values shown black and white: ``(0, 1)`` for binary images and
        probabilities, ``(0, 255)`` for grey levels (a model's ``likelihood.value_range``).
    :returns: ``(rows*H', cols*W')`` in [0, 1] for one channel, ``(..., 3)`` for RGB.
    """
    if images.dim() != 4:
        raise ValueError(f"expected images (N, C, H, W), got shape {tuple(images.shape)}")
    low, high = (float(v) for v in value_range)
    if not high > low:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    x = ((images.detach().float().cpu() - low) / (high - low)).clamp(0, 1)
    nrow = nrow or grid_columns(len(x))
    grid = make_grid(x, nrow=nrow, padding=pad, pad_value=1.0)  # (3, H', W') for grey too
    return grid[0].numpy() if x.shape[1] == 1 else grid.permute(1, 2, 0).numpy()


def grid_columns(n: int) -> int:
    """Images per row for ``n`` images: the smallest divisor of ``n`` at or above its square
    root, so that every row is full (64 -> 8, 10 -> 5), unless that row would be more than
    twice as long as a square grid's (a prime ``n``), then ``ceil(sqrt(n))``."""
    square = math.ceil(math.sqrt(n))
    divisor = next(d for d in range(square, n + 1) if n % d == 0) if n else 1
    return divisor if divisor <= 2 * square else square


#: inches per image in a grid: images stay readable, the figure at most 12 inches wide
_TILE_INCHES, _MAX_INCHES = 0.8, 12.0


def _grid_size(grid: np.ndarray, cols: int, extra_height: float = 0.4) -> tuple[float, float]:
    """Figure size for a grid of ``cols`` images per row, ``extra_height`` for a title."""
    tile = min(_TILE_INCHES, _MAX_INCHES / cols)
    width = tile * cols
    return width, width * grid.shape[0] / grid.shape[1] + extra_height


def _finish(fig, path: str | Path | None):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
    return fig


def _show(ax, grid: np.ndarray, title: str | None = None) -> None:
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=1)
    ax.set_axis_off()
    if title:
        ax.set_title(title)


def plot_images(
    images: torch.Tensor,
    path=None,
    title: str | None = None,
    nrow: int | None = None,
    value_range: tuple[float, float] = (0.0, 1.0),
):
    """A grid of images (samples, data); see :func:`image_grid` for ``value_range``."""
    nrow = nrow or grid_columns(len(images))
    grid = image_grid(images, nrow, value_range=value_range)
    fig, ax = plt.subplots(figsize=_grid_size(grid, nrow))
    _show(ax, grid, title)
    return _finish(fig, path)


def plot_reconstructions(
    x: torch.Tensor,
    x_rec: torch.Tensor,
    path=None,
    nrow: int | None = None,
    value_range: tuple[float, float] = (0.0, 1.0),
):
    """Inputs (left) next to their reconstructions (right), in the same places."""
    nrow = nrow or grid_columns(len(x))
    inputs = image_grid(x, nrow, value_range=value_range)
    width, height = _grid_size(inputs, 2 * nrow)
    fig, axes = plt.subplots(1, 2, figsize=(width + 0.3, height))
    _show(axes[0], inputs, "inputs")
    _show(axes[1], image_grid(x_rec, nrow, value_range=value_range), "reconstructions")
    return _finish(fig, path)


def plot_training_curves(metrics: Sequence[dict], path=None, title: str | None = None):
    """Training loss and validation -ELBO per epoch, with the validation KL beside them.

    Every point is drawn: when the curves span more than a factor 1.5 (the first epochs of a
    long run), the nats axis is logarithmic instead of cut. Long runs are drawn as lines;
    the KL warm-up is shaded (the training loss there is the down-weighted objective, not
    the ELBO) and the best validation epoch (``best.pt``) is marked in the legend.
    """
    epochs = [m["epoch"] for m in metrics]
    style = "-" if len(metrics) > 50 else "o-"
    fig, (ax, ax_kl) = plt.subplots(1, 2, figsize=(11, 4))
    curves = [[m["train_loss"] for m in metrics]]
    ax.plot(epochs, curves[0], style, label="train loss (-ELBO, KL weighted)")
    if metrics and "valid_elbo" in metrics[0]:
        curves.append([-m["valid_elbo"] for m in metrics])
        ax.plot(epochs, curves[-1], style.replace("o", "s"), label="valid -ELBO")
        best = max(metrics, key=lambda m: m["valid_elbo"])
        ax.axvline(best["epoch"], color="k", lw=0.8, ls=":",
                   label=f"best: {-best['valid_elbo']:.2f} at epoch {best['epoch']}")  # fmt: skip
    warm = [m["epoch"] for m in metrics if m.get("kl_weight", 1.0) < 1.0]
    if warm:
        for a in (ax, ax_kl):
            a.axvspan(0, max(warm), color="0.9", zorder=0, label="KL warm-up" if a is ax else None)
    values = [v for curve in curves for v in curve if v == v]
    if values and min(values) > 0 and max(values) > 1.5 * min(values):
        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(
            plt.matplotlib.ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 1))
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per image")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3, which="both")
    if metrics and "valid_kl" in metrics[0]:
        ax_kl.plot(epochs, [m["valid_kl"] for m in metrics], style, color="C2")
    ax_kl.set_xlabel("epoch")
    ax_kl.set_ylabel("valid KL(q || p), nats per image")
    ax_kl.grid(alpha=0.3)
    ax.set_title("objective")
    ax_kl.set_title("KL term")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _finish(fig, path)


@torch.no_grad()
def plot_latent_manifold(module, n: int = 20, path=None, bound: float = 0.95):
    """Decode a grid of z through the inverse normal CDF (``latent_dim == 2``), as in the lecture.

    Each axis spans the quantiles ``1 - bound .. bound`` of N(0, 1).
    """
    if getattr(module, "latent_dim", None) != 2:
        raise ValueError("the latent manifold plot needs a model with latent_dim == 2")
    ref = module._ref()
    p = torch.linspace(1 - bound, bound, n, dtype=ref.dtype, device=ref.device)
    q = torch.distributions.Normal(ref.new_zeros(()), ref.new_ones(())).icdf(p)
    z = torch.stack(torch.meshgrid(q.flip(0), q, indexing="ij"), -1).reshape(-1, 2)[:, [1, 0]]
    images = module.decode(z)
    fig, ax = plt.subplots(figsize=(7, 7))
    grid = image_grid(images, n, pad=0, value_range=module.likelihood.value_range)
    _show(ax, grid, "decoded grid of z (inverse normal CDF)")
    return _finish(fig, path)


def most_active_dims(codes: torch.Tensor, n: int) -> list[int]:
    """The ``n`` latent dimensions whose q(z|x) means vary most over images ``codes`` ``(N, D)``.

    The variance of E_q[z_d] across the data is the "active units" statistic of Burda et al.
    (a dimension with variance below about 0.01 is ignored by the decoder).
    """
    if codes.dim() != 2:
        raise ValueError(f"codes must be (N, D), got shape {tuple(codes.shape)}")
    if len(codes) < 2:
        return list(range(min(n, codes.shape[1])))
    return codes.var(0).argsort(descending=True)[:n].tolist()


@torch.no_grad()
def plot_traversals(
    module, x: torch.Tensor | None = None, dims=None, span: float = 3.0, steps=9, path=None,
    row_labels: Sequence[str] | None = None,
):  # fmt: skip
    """Vary one latent dimension at a time (others fixed at the encoding of ``x``, or 0).

    Needs real-valued latents (not the one-hot codes of ``guide="categorical"``).
    :param row_labels: a label per row after its dimension (e.g. the factor it captures).
    """
    if not module.latent_is_real:
        raise ValueError("latent traversals need real-valued latents, not one-hot codes")
    d = module.latent_dim
    dims = list(range(min(d, 10))) if dims is None else list(dims)
    ref = module._ref()
    base = module.encode(x[:1].to(ref.device))[0] if x is not None else ref.new_zeros(d)
    values = torch.linspace(-span, span, steps, dtype=ref.dtype, device=ref.device)
    z = base.repeat(len(dims), steps, 1)
    for row, dim in enumerate(dims):
        z[row, :, dim] = values
    images = module.decode(z.reshape(-1, d))
    grid = image_grid(images, steps, value_range=module.likelihood.value_range)
    width, height = _grid_size(grid, steps, extra_height=0.9)
    fig, ax = plt.subplots(figsize=(width + 0.8, height))
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=1)
    cell_h, cell_w = grid.shape[0] / len(dims), grid.shape[1] / steps
    names = [f"z[{k}]" for k in dims]
    if row_labels is not None:
        if len(row_labels) != len(dims):
            raise ValueError(f"{len(row_labels)} row labels for {len(dims)} rows")
        names = [f"{n}: {label}" for n, label in zip(names, row_labels, strict=True)]
    ax.set_yticks([(i + 0.5) * cell_h for i in range(len(dims))], names)
    ax.set_xticks([(i + 0.5) * cell_w for i in range(steps)],
                  [f"{v:+.1f}" for v in values.tolist()])  # fmt: skip
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    others = "the code of the image" if x is not None else "0"
    ax.set_xlabel(f"value of the row's latent dimension (the others: {others})")
    ax.set_title("latent traversals, one dimension per row")
    return _finish(fig, path)


def plot_log_marginal_vs_k(ks: Sequence[int], estimates: dict[str, np.ndarray], path=None):
    """Estimates of the mean log p(x) against K (log axis), each with its spread over repeats.

    :param estimates: label -> array ``(repeats, len(ks))`` of mean log p(x) estimates.
    """
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, values in estimates.items():
        values = np.asarray(values)
        mean, std = values.mean(0), values.std(0)
        ax.errorbar(ks, mean, yerr=std, marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("K (samples per image)")
    ax.set_ylabel("mean log p(x) estimate, nats")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _finish(fig, path)


@torch.no_grad()
def plot_posterior_2d(
    module, x: torch.Tensor, ax=None, num_samples: int = 400, span=None, path=None
):
    """One image's posterior in a 2-D latent space: contours of the exact (unnormalized)
    log p(x, z) on a grid, and samples from q(z | x) on top.

    :param x: one image ``(1, C, H, W)``.
    """
    if getattr(module, "latent_dim", None) != 2 or not module.latent_is_real:
        raise ValueError("the 2-D posterior plot needs real latents with latent_dim == 2")
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(4, 4))
    ref = module._ref()
    x = x[:1].to(ref.device)
    q = module.posterior(module.encoder(x))
    z = q.expand((num_samples, 1)).sample()[:, 0]  # (S, 2)
    center = module.posterior.mean(module.encoder(x))[0]
    half = span or max(3.0, 1.5 * float((z - center).abs().max()))
    axis = torch.linspace(-half, half, 120, dtype=ref.dtype, device=ref.device)
    grid = torch.stack(torch.meshgrid(axis + center[0], axis + center[1], indexing="xy"), -1)
    log_joint = module.log_joint(x, grid.reshape(-1, 1, 2)).reshape(120, 120)
    density = (log_joint - log_joint.max()).exp().cpu()
    ax.contourf(grid[..., 0].cpu(), grid[..., 1].cpu(), density, levels=12, cmap="Blues")
    ax.scatter(z[:, 0].cpu(), z[:, 1].cpu(), s=3, color="C3", alpha=0.5, label="z ~ q(z|x)")
    ax.set_xlabel("z1")
    ax.set_ylabel("z2")
    if fig is not None:
        ax.legend(loc="upper right", fontsize=8)
        return _finish(fig, path)
    return ax.figure


def plot_embedding(z: torch.Tensor, labels, method: str = "pca", path=None, title=None):
    """A 2-D embedding of latent codes (e.g. q(z|x) means), coloured by label.

    :param method: ``"pca"`` or ``"tsne"`` (scikit-learn); 2-D codes are shown as they are.
    """
    if method not in ("pca", "tsne"):
        raise ValueError(f"unknown method {method!r}; valid: pca, tsne")
    z = z.detach().cpu().numpy()
    dims = z.shape[1]
    if dims > 2:
        if method == "pca":
            from sklearn.decomposition import PCA

            z = PCA(n_components=2).fit_transform(z)
        elif method == "tsne":
            from sklearn.manifold import TSNE

            z = TSNE(n_components=2, init="pca", random_state=0).fit_transform(z)
    labels = np.asarray(labels)
    fig, ax = plt.subplots(figsize=(6, 5))
    points = ax.scatter(z[:, 0], z[:, 1], c=labels, cmap="tab10", s=6)
    fig.colorbar(points, ax=ax, ticks=sorted(set(labels.tolist())), label="label")
    axis = {"pca": "principal component", "tsne": "t-SNE dimension"}[method]
    names = [f"{axis} {i}" for i in (1, 2)] if dims > 2 else ["z[0]", "z[1]"]
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.set_title(title or f"latent means, 2-D {method}")
    return _finish(fig, path)


def plot_mutual_information(mi, factor_names: Sequence[str], path=None, title=None):
    """The mutual information (nats) between each latent dimension (rows) and each factor
    (columns) as a heat map, each cell annotated; ``mi`` is ``(D, K)``, e.g. from
    :func:`pyro_genmodels.disentanglement.mutual_information`."""
    mi = np.asarray(mi, float)
    if mi.ndim != 2 or mi.shape[1] != len(factor_names):
        raise ValueError(f"mi must be (D, {len(factor_names)}), got shape {mi.shape}")
    d, k = mi.shape
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * k, 1.0 + 0.45 * d))
    image = ax.imshow(mi, cmap="viridis", aspect="auto", vmin=0)
    ax.set_xticks(range(k), list(factor_names), rotation=30, ha="right")
    ax.set_yticks(range(d), [f"z[{i}]" for i in range(d)])
    ax.set_xlabel("factor")
    ax.set_ylabel("latent dimension")
    top = mi.max() or 1.0
    for i in range(d):
        for j in range(k):
            ax.text(j, i, f"{mi[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if mi[i, j] > 0.6 * top else "white")  # fmt: skip
    fig.colorbar(image, ax=ax, label="mutual information, nats")
    ax.set_title(title or "mutual information between latents and factors")
    fig.tight_layout()
    return _finish(fig, path)
