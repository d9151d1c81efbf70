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
