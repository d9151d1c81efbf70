"""Figures: grid layout is exact; every plot function writes a PNG."""

import torch

import pyro_genmodels as pg
from pyro_genmodels import plots


def test_image_grid_places_each_image():
    images = torch.arange(6, dtype=torch.float32).reshape(6, 1, 1, 1).expand(6, 1, 2, 3) / 10
    grid = plots.image_grid(images, nrow=3, pad=1)
    assert grid.shape == (2 * 3 + 1, 3 * 4 + 1)
    for i in range(6):
        r, c = divmod(i, 3)
        block = grid[1 + r * 3 : 1 + r * 3 + 2, 1 + c * 4 : 1 + c * 4 + 3]
        assert (block == i / 10).all()
    levels = plots.image_grid(torch.full((1, 1, 2, 2), 255.0), pad=0, value_range=(0, 255))
    assert (levels == 1.0).all()  # grey levels are scaled to [0, 1]


def test_plots_write_png(tmp_path):
    vae = pg.create_model("vae", image_shape=(1, 8, 8), latent_dim=2, hidden_dims=(16,))
    x = (torch.rand(6, 1, 8, 8) < 0.5).float()
    metrics = [{"epoch": 1, "train_loss": 40.0, "valid_elbo": -39.0, "valid_kl": 1.0},
               {"epoch": 2, "train_loss": 35.0, "valid_elbo": -36.0, "valid_kl": 2.0}]  # fmt: skip
    figures = {
        "samples.png": lambda p: plots.plot_images(vae.sample(4), p),
        "recon.png": lambda p: plots.plot_reconstructions(x, vae.reconstruct(x), p),
        "curves.png": lambda p: plots.plot_training_curves(metrics, p),
        "manifold.png": lambda p: plots.plot_latent_manifold(vae, 5, p),
        "traversals.png": lambda p: plots.plot_traversals(vae, x, path=p, steps=5),
        "k.png": lambda p: plots.plot_log_marginal_vs_k([1, 10], {"a": [[-3.0, -2.0]]}, p),
    }
    gmvae = pg.create_model("vae", image_shape=(1, 8, 8), latent_dim=2, hidden_dims=(16,),
                            guide="gmvae")  # fmt: skip
    figures["posterior.png"] = lambda p: plots.plot_posterior_2d(gmvae, x[:1], path=p)
    for name, make in figures.items():
        make(tmp_path / name)
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG", name


def test_latent_manifold_decodes_the_quantile_grid(monkeypatch):
    vae = pg.create_model("vae", image_shape=(1, 8, 8), latent_dim=2, hidden_dims=(16,))
    seen = {}
    original = vae.decode

    def spy(z, mean=True):
        seen["z"] = z
        return original(z, mean)

    monkeypatch.setattr(vae, "decode", spy)
    plots.plot_latent_manifold(vae, n=3, bound=0.9)
    q = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor([0.1, 0.5, 0.9]))
    z = seen["z"].reshape(3, 3, 2)
    torch.testing.assert_close(z[0, :, 0], q)  # left to right: z1 rises
    torch.testing.assert_close(z[:, 0, 1], q.flip(0))  # top to bottom: z2 falls


def test_most_active_dims_orders_by_variance_of_the_means():
    gen = torch.Generator().manual_seed(0)
    scales = torch.tensor([0.01, 2.0, 0.5, 1.0])
    codes = torch.randn(4000, 4, generator=gen) * scales
    assert plots.most_active_dims(codes, 3) == [1, 3, 2]
    assert plots.most_active_dims(codes[:1], 2) == [0, 1]  # one image: no variance to rank by


def test_grids_fill_every_row():
    columns = {n: plots.grid_columns(n) for n in (1, 10, 12, 16, 32, 64, 100, 7, 37)}
    assert columns == {1: 1, 10: 5, 12: 4, 16: 4, 32: 8, 64: 8, 100: 10, 7: 3, 37: 7}
    for n in (10, 12, 16, 32, 64, 100):  # not a prime: every row full
        assert n % columns[n] == 0


def test_figures_say_what_their_axes_and_rows_are():
    vae = pg.create_model("vae", image_shape=(1, 8, 8), latent_dim=4, hidden_dims=(16,))
    x = (torch.rand(6, 1, 8, 8) < 0.5).float()
    fig = plots.plot_traversals(vae, x, dims=[2, 0], steps=5)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["z[2]", "z[0]"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["-3.0", "-1.5", "+0.0", "+1.5", "+3.0"]
    # the labels sit at the centres of the rows and columns of the grid
    rows, cols = ax.images[0].get_array().shape[:2]
    assert list(ax.get_yticks()) == [rows / 4, 3 * rows / 4]
    assert ax.get_xticks()[0] == cols / 10
    fig = plots.plot_embedding(torch.randn(50, 3), [0, 1] * 25, "pca")
    assert (fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()) == (
        "principal component 1", "principal component 2")  # fmt: skip
    fig = plots.plot_embedding(torch.randn(50, 2), [0, 1] * 25, "tsne")
    assert (fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()) == ("z[0]", "z[1]")


def test_training_curves_show_every_point_with_a_title():
    # a long run: the first epochs are far above the rest
    metrics = [{"epoch": e, "train_loss": 90 + 400 / e, "valid_elbo": -(91 + 400 / e),
                "valid_kl": 20.0} for e in range(1, 101)]  # fmt: skip
    fig = plots.plot_training_curves(metrics, title="a run")
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    values = [m["train_loss"] for m in metrics] + [-m["valid_elbo"] for m in metrics]
    assert low <= min(values) and max(values) <= high  # nothing clipped
    assert ax.get_yscale() == "log"
    assert fig._suptitle.get_text() == "a run"
    labels = ax.get_legend_handles_labels()[1]
    assert "best: 95.00 at epoch 100" in labels  # the best epoch is in the legend, no overlap
    flat = [{"epoch": e, "train_loss": 90.0 + e / 100, "valid_elbo": -91.0} for e in (1, 2)]
    assert plots.plot_training_curves(flat).axes[0].get_yscale() == "linear"


def test_the_mutual_information_heat_map_and_factor_labelled_traversals():
    import numpy as np

    mi = np.array([[0.9, 0.0], [0.1, 0.5], [0.0, 0.02]])
    fig = plots.plot_mutual_information(mi, ["shape", "pos_x"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["shape", "pos_x"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["z[0]", "z[1]", "z[2]"]
    cells = sorted((t.get_position(), t.get_text()) for t in ax.texts)
    assert cells[0] == ((0, 0), "0.90") and ((1, 1), "0.50") in cells  # (column, row)
    vae = pg.create_model("vae", image_shape=(1, 8, 8), latent_dim=3, hidden_dims=(8,))
    fig = plots.plot_traversals(vae, dims=[1, 0], steps=3, row_labels=["pos_x", "shape"])
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["z[1]: pos_x", "z[0]: shape"]
