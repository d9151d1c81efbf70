"""The VAE program: registry, input checks, sites, likelihoods, KL, beta."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn

import pyro_genmodels as pg
from pyro_genmodels.distributions import GaussianLikelihood
from pyro_genmodels.infer import LatentScale, kl_divergence, log_marginal
from pyro_genmodels.models import VAE, VAEConfig
from pyro_genmodels.nn.dense import DeepConvEncoder


def small_vae(**kw):
    cfg = dict(image_shape=(1, 8, 8), latent_dim=4, hidden_dims=(32, 16))
    cfg.update(kw)
    return pg.create_model("vae", **cfg)


def test_registry_lists_and_rejects_unknown_names():
    assert "vae" in pg.list_models()
    with pytest.raises(ValueError, match="valid models: .*vae"):
        pg.create_model("no-such-model")
    with pytest.raises(ValueError, match="unknown config key.*'latent_dims'.*latent_dim"):
        pg.create_model("vae", latent_dims=3)
    with pytest.raises(ValueError, match="unknown guide family 'bogus'; valid: diagonal"):
        pg.create_model("vae", guide="bogus")
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        pg.create_model("vae", likelihood="poisson")


def test_contract_sites_and_shapes(digits_binary):
    vae = small_vae()
    x = digits_binary[:5]
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    site = model_tr.nodes["x"]
    assert site["is_observed"] and site["fn"].event_shape == (1, 8, 8)
    assert [f.name for f in site["cond_indep_stack"]] == ["data"]
    assert guide_tr.nodes["z"]["fn"].event_shape == (4,)
    samples = vae.sample(7)
    assert samples.shape == (7, 1, 8, 8) and set(samples.unique().tolist()) <= {0.0, 1.0}
    means = vae.sample(3, mean=True)
    assert ((means > 0) & (means < 1)).all()
    torch.testing.assert_close(vae.encode(x), vae.posterior.loc(vae.encoder(x)))
    torch.testing.assert_close(vae.reconstruct(x), torch.sigmoid(vae.decoder(vae.encode(x))))


def test_bad_input_raises_clear_errors(digits_binary):
    vae = small_vae()
    x = digits_binary[:4]
    with pytest.raises(ValueError, match=r"binary images with values in \{0, 1\}"):
        vae.model(x * 0.5 + 0.25)  # grey levels
    with pytest.raises(
        ValueError, match=r"expected images of shape \(N, 1, 8, 8\).*\(4, 1, 28, 28\)"
    ):
        vae.guide(torch.zeros(4, 1, 28, 28))
    with pytest.raises(ValueError, match=r"shape \(N, 1, 8, 8\)"):
        vae.model(torch.zeros(4, 64))
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        vae.model(bad)
    with pytest.raises(ValueError, match="float tensor"):
        vae.model(x.to(torch.uint8))
    with pytest.raises(ValueError, match="torch.Tensor"):
        vae.model(x.numpy())
    with pytest.raises(ValueError, match="binary"):
        log_marginal(vae.model, vae.guide, x + 2, 10)


def test_gaussian_likelihood_learned_and_fixed_scale():
    vae = small_vae(likelihood="gaussian")
    assert isinstance(vae.likelihood, GaussianLikelihood)
    names = [n for n, _ in vae.named_parameters()]
    assert "likelihood.log_scale" in names
    x = torch.rand(6, 1, 8, 8)
    lw = log_marginal(vae.model, vae.guide, x, 20)
    assert torch.isfinite(lw).all()
    assert vae.likelihood.nll_offset() == pytest.approx(64 * math.log(256))
    with pytest.raises(ValueError, match=r"continuous images in \[0, 1\]"):
        vae.model(x * 255)
    fixed = small_vae(likelihood="gaussian", gaussian_scale=0.2)
    assert "likelihood.log_scale" not in [n for n, _ in fixed.named_parameters()]
    params = fixed.decoder(torch.zeros(1, 4))
    assert torch.allclose(fixed.likelihood(params).base_dist.scale, torch.tensor(0.2))


def test_conv_network_and_custom_parts():
    vae = small_vae(network="conv", image_shape=(1, 28, 28), hidden_dims=(64,))
    x = (torch.rand(3, 1, 28, 28) < 0.2).float()
    assert log_marginal(vae.model, vae.guide, x, 10).shape == (3,)

    class Encoder(nn.Module):
        feature_dim = 10

        def __init__(self):
            super().__init__()
            self.net = nn.Linear(64, 10)

        def forward(self, x):
            return torch.tanh(self.net(x.reshape(*x.shape[:-3], 64)))

    decoder = nn.Sequential(nn.Linear(4, 64), nn.Unflatten(-1, (1, 8, 8)))
    custom = VAE(VAEConfig(image_shape=(1, 8, 8), latent_dim=4), encoder=Encoder(), decoder=decoder)
    assert custom.encoder.feature_dim == 10 and custom.posterior.loc.in_features == 10
    xb = (torch.rand(5, 1, 8, 8) < 0.5).float()
    assert torch.isfinite(log_marginal(custom.model, custom.guide, xb, 10)).all()


def test_subclass_overriding_the_model():
    class WidePrior(VAE):
        def model(self, x):
            x = self.check_input(x)
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(x.new_zeros(4), 3.0).to_event(1))
                pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    vae = WidePrior(VAEConfig(image_shape=(1, 8, 8), latent_dim=4, hidden_dims=(16,)))
    x = (torch.rand(4, 1, 8, 8) < 0.5).float()
    tr = poutine.trace(vae.model).get_trace(x)
    assert tr.nodes["z"]["fn"].base_dist.scale.max() == 3.0
    assert torch.isfinite(log_marginal(vae.model, vae.guide, x, 10)).all()


def test_analytic_kl_matches_closed_form_and_monte_carlo(digits_binary):
    vae = small_vae()
    x = digits_binary[:6]
    h = vae.encoder(x)
    q = vae.posterior(h).base_dist
    closed = 0.5 * (q.scale**2 + q.loc**2 - 1 - 2 * q.scale.log()).sum(-1)
    analytic = kl_divergence(vae.model, vae.guide, x)
    torch.testing.assert_close(analytic, closed.detach(), rtol=1e-5, atol=1e-6)
    mc = kl_divergence(vae.model, vae.guide, x, num_samples=40000, analytic=False)
    torch.testing.assert_close(mc, analytic, rtol=0, atol=0.05)


def test_latent_scale_weights_only_the_kl_term(digits_binary):
    vae = small_vae()
    x = digits_binary[:8]
    tr = poutine.trace(LatentScale(0.25)(vae.model)).get_trace(x)
    assert tr.nodes["z"]["scale"] == 0.25 and tr.nodes["x"]["scale"] == 1.0
    elbo = pyro.infer.TraceMeanField_ELBO()

    def loss(beta):
        pyro.set_rng_seed(3)
        m, g = LatentScale(beta)(vae.model), LatentScale(beta)(vae.guide)
        return elbo.differentiable_loss(m, g, x).item()

    kl = kl_divergence(vae.model, vae.guide, x).sum().item()
    assert loss(2.0) - loss(1.0) == pytest.approx(kl, rel=1e-4)
    assert loss(1.0) - loss(0.5) == pytest.approx(0.5 * kl, rel=1e-4)


def test_networks_make_param_statements_only_in_global_param_mode():
    """Module-local params: the networks' parameters stay out of the traces (no fake param
    statements at each access); global params: Pyro's pyro.module registers them."""
    from pyro import poutine

    x = torch.bernoulli(torch.full((4, 1, 8, 8), 0.5))
    for local in (True, False):
        with pyro.settings.context(module_local_params=local):
            vae = pg.create_model("vae", image_shape=(1, 8, 8), latent_dim=2, hidden_dims=(8,))
            params = {name for name, site in poutine.trace(vae.guide).get_trace(x).nodes.items()
                      if site["type"] == "param"}  # fmt: skip
            n = len(list(vae.encoder.parameters()) + list(vae.posterior.parameters()))
        assert len(params) == (0 if local else n), params
        pyro.clear_param_store()


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 28, 28), (1, 32, 32), (3, 32, 32)])
def test_deep_conv_network_is_gulrajanis_for_any_image(shape):
    """network="conv-deep": the eight 3x3 convolutions of Gulrajani et al.'s MNIST encoder
    (strides 2 at the 2nd, 4th and 6th) on grey and RGB 28x28 and 32x32 images, a decoder
    back to the image's size, and the same option in the autoencoder and the PixelVAE."""
    torch.manual_seed(0)
    vae = pg.create_model("vae", image_shape=shape, network="conv-deep", latent_dim=16,
                          hidden_dims=(256,), likelihood="gaussian")  # fmt: skip
    convs = [m for m in vae.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride[0], c.kernel_size) for c in convs] == [
        (shape[0], 32, 1, (3, 3)), (32, 32, 2, (3, 3)), (32, 32, 1, (3, 3)),
        (32, 64, 2, (3, 3)), (64, 64, 1, (3, 3)), (64, 64, 2, (3, 3)),
        (64, 64, 1, (3, 3)), (64, 64, 1, (3, 3)),
    ]  # fmt: skip
    x = torch.rand(5, *shape, requires_grad=True)
    features = vae.encoder(x)
    assert features.shape == (5, 256)
    (grad,) = torch.autograd.grad(features[0].sum(), x)
    assert (grad[0].abs().sum(0) > 0).all()  # the 4x4 (ceil(H/8)) top sees every pixel
    assert (grad[1:] == 0).all()  # and nothing of the other images
    z = torch.randn(5, 16)
    assert vae.decoder(z).shape == (5, vae.likelihood.param_channels, *shape[1:])
    for name in ("autoencoder", "pixelvae"):
        extra = {"hidden_channels": 24} if name == "pixelvae" else {}  # RGB: 3 channel groups
        model = pg.create_model(name, image_shape=shape, network="conv-deep", latent_dim=4,
                                hidden_dims=(32,), **extra)  # fmt: skip
        assert isinstance(model.encoder, DeepConvEncoder)


def test_the_conv_4x4_network_is_disentanglement_libs():
    for size in (32, 64):
        vae = pg.create_model("vae", image_shape=(1, size, size), network="conv-4x4",
                              latent_dim=10, hidden_dims=(256,))  # fmt: skip
        convs = [m for m in vae.encoder.modules() if isinstance(m, nn.Conv2d)]
        assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
            (32, (4, 4), (2, 2)), (32, (4, 4), (2, 2)), (64, (4, 4), (2, 2)), (64, (4, 4), (2, 2))
        ]  # fmt: skip
        deconvs = [m for m in vae.decoder.modules() if isinstance(m, nn.ConvTranspose2d)]
        assert [(d.out_channels, d.kernel_size, d.stride) for d in deconvs] == [
            (64, (4, 4), (2, 2)), (32, (4, 4), (2, 2)), (32, (4, 4), (2, 2)), (1, (4, 4), (2, 2))
        ]  # fmt: skip
        x = (torch.rand(2, 1, size, size) < 0.5).float()
        assert vae.encoder(x).shape == (2, 256)
        assert vae.decoder(torch.randn(2, 10)).shape == (2, 1, size, size)
    with pytest.raises(ValueError, match="divisible by 16"):
        pg.create_model("vae", image_shape=(1, 28, 28), network="conv-4x4")
