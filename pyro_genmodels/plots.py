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

    :param nrow: images per row (default: about the square root of N).
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
    nrow = nrow or math.ceil(math.sqrt(len(x)))
    grid = make_grid(x, nrow=nrow, padding=pad, pad_value=1.0)  # (3, H', W') for grey too
    return grid[0].numpy() if x.shape[1] == 1 else grid.permute(1, 2, 0).numpy()


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
    grid = image_grid(images, nrow, value_range=value_range)
    fig, ax = plt.subplots(
        figsize=(min(12, 1 + grid.shape[1] / 30), min(12, 1 + grid.shape[0] / 30))
    )
    _show(ax, grid, title)
    return _finish(fig, path)


def plot_reconstructions(
    x: torch.Tensor,
    x_rec: torch.Tensor,
    path=None,
    nrow: int | None = None,
    value_range: tuple[float, float] = (0.0, 1.0),
):
    """Inputs (left) next to their reconstructions (right)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    _show(axes[0], image_grid(x, nrow, value_range=value_range), "inputs")
    _show(axes[1], image_grid(x_rec, nrow, value_range=value_range), "reconstructions")
    return _finish(fig, path)


def plot_training_curves(metrics: Sequence[dict], path=None):
    """Training loss and validation -ELBO per epoch, with the validation KL beside them.

    Long runs are drawn as lines: the KL warm-up is shaded (the training loss there is the
    down-weighted objective, not the ELBO), the best validation epoch (``best.pt``) marked,
    and the nats axis zoomed past the first tenth of the epochs.
    """
    epochs = [m["epoch"] for m in metrics]
    style = "-" if len(metrics) > 50 else "o-"
    fig, (ax, ax_kl) = plt.subplots(1, 2, figsize=(10, 3.5))
    curves = [[m["train_loss"] for m in metrics]]
    ax.plot(epochs, curves[0], style, label="train loss (-ELBO; beta-weighted KL)")
    if metrics and "valid_elbo" in metrics[0]:
        curves.append([-m["valid_elbo"] for m in metrics])
        ax.plot(epochs, curves[-1], style.replace("o", "s"), label="valid -ELBO")
        best = max(metrics, key=lambda m: m["valid_elbo"])
        ax.axvline(best["epoch"], color="k", lw=0.8, ls=":")
        ax.annotate(
            f"best {-best['valid_elbo']:.2f} (epoch {best['epoch']})",
            (best["epoch"], -best["valid_elbo"]),
            textcoords="offset points", xytext=(-5, 12), ha="right", fontsize=8,
        )  # fmt: skip
    warm = [m["epoch"] for m in metrics if m.get("kl_weight", 1.0) < 1.0]
    if warm:
        for a in (ax, ax_kl):
            a.axvspan(0, max(warm), color="0.9", zorder=0, label="KL warm-up" if a is ax else None)
    if len(metrics) > 20:
        tail = [v for curve in curves for v in curve[len(metrics) // 10 :]]
        ax.set_ylim(min(tail) - 2, max(tail) + 2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per image")
    ax.legend()
    if metrics and "valid_kl" in metrics[0]:
        ax_kl.plot(epochs, [m["valid_kl"] for m in metrics], style, color="C2")
    ax_kl.set_xlabel("epoch")
    ax_kl.set_ylabel("valid KL(q || p), nats")
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
    module, x: torch.Tensor | None = None, dims=None, span: float = 3.0, steps=9, path=None
):
    """Vary one latent dimension at a time (others fixed at the encoding of ``x``, or 0).

    Needs real-valued latents (not the one-hot codes of ``guide="categorical"``).
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
    fig, ax = plt.subplots(figsize=(steps * 0.8, len(dims) * 0.8))
    grid = image_grid(images, steps, value_range=module.likelihood.value_range)
    _show(ax, grid, f"traversals of z dims {dims} over [-{span}, {span}]")
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
    z = z.detach().cpu().numpy()
    if z.shape[1] > 2:
        if method == "pca":
            from sklearn.decomposition import PCA

            z = PCA(n_components=2).fit_transform(z)
        elif method == "tsne":
            from sklearn.manifold import TSNE

            z = TSNE(n_components=2, init="pca", random_state=0).fit_transform(z)
        else:
            raise ValueError(f"unknown method {method!r}; valid: pca, tsne")
    labels = np.asarray(labels)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    points = ax.scatter(z[:, 0], z[:, 1], c=labels, cmap="tab10", s=6)
    fig.colorbar(points, ax=ax, ticks=sorted(set(labels.tolist())))
    ax.set_title(title or f"latent means, 2-D {method}")
    return _finish(fig, path)
