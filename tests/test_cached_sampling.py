"""Cached sampling: identical to the naive loop, and the cached network is the network."""

import itertools

import pytest
import torch

import pyro_genmodels as pg
from pyro_genmodels.distributions.autoregressive import AutoregressiveImage
from pyro_genmodels.nn.masked import channel_groups

MODELS = ["pixelcnn", "gated-pixelcnn", "pixelrnn", "diagonal-bilstm"]
LIKELIHOODS = ["bernoulli", "categorical", "logistic-mixture"]
SHAPES = {"grey": (1, 5, 4), "rgb": (3, 3, 4)}


def make(name, shape, likelihood, **kw):
    """A small model with weights large enough that every layer matters."""
    cfg = dict(image_shape=shape, likelihood=likelihood, hidden_channels=12, num_layers=2)
    cfg.update(kw)
    torch.manual_seed(0)
    model = pg.create_model(name, **cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


def both_samplers(sample, seed=7):
    """``sample(cached)`` run with the cached and the naive sampler from the same seed."""
    out = []
    for cached in (True, False):
        torch.manual_seed(seed)
        out.append(sample(cached))
    return out


def assert_identical_and_varied(fast, naive, likelihood):
    assert fast.shape == naive.shape
    assert torch.equal(fast, naive)
    assert fast.std() > 0  # not vacuous: the images vary
    if likelihood != "bernoulli":
        assert len(fast.unique()) > 10  # many grey levels drawn


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("name", MODELS)
def test_cached_and_naive_samples_are_identical(name, likelihood, shape):
    model = make(name, shape, likelihood)
    fast, naive = both_samplers(lambda cached: model.sample(6, cached=cached))
    assert_identical_and_varied(fast, naive, likelihood)


@pytest.mark.parametrize("context", ["vector", "map", "both"])
@pytest.mark.parametrize(
    ("likelihood", "shape"),
    [("bernoulli", (1, 6, 5)), ("categorical", (3, 4, 4)), ("logistic-mixture", (3, 4, 4))],
)
def test_pixelvae_cached_and_naive_samples_are_identical(likelihood, shape, context):
    model = make(
        "pixelvae", shape, likelihood, context=context, latent_dim=4, context_dim=8,
        map_channels=3, hidden_dims=[16],
    )  # fmt: skip
    fast, naive = both_samplers(lambda cached: model.sample(5, cached=cached))
    assert_identical_and_varied(fast, naive, likelihood)


@pytest.mark.parametrize("kernel_size", [5, 9])
def test_wider_kernels_sample_identically(kernel_size):
    """The caches' zero border follows the widest kernel (here wider than the 7x7 input)."""
    model = make("gated-pixelcnn", (1, 6, 11), "bernoulli", kernel_size=kernel_size)
    fast, naive = both_samplers(lambda cached: model.sample(4, cached=cached))
    assert_identical_and_varied(fast, naive, "bernoulli")
    x = random_images((1, 6, 11), "bernoulli")
    double = model.double()
    torch.testing.assert_close(cached_params(double.distribution(), x), double.params(x),
                               rtol=1e-10, atol=1e-10)  # fmt: skip


def test_a_distribution_with_a_batch_of_contexts_samples_identically():
    model = make("gated-pixelcnn", (1, 5, 5), "bernoulli", context_dim=3, context_channels=2)
    context, context_map = torch.randn(4, 3), torch.randn(4, 2, 5, 5)
    d = AutoregressiveImage(model.net, model.likelihood, (1, 5, 5), context, context_map)
    fast, naive = both_samplers(lambda cached: d.sample((2,), cached=cached))
    assert fast.shape == (2, 4, 1, 5, 5)
    assert_identical_and_varied(fast, naive, "bernoulli")


# -- the cached network is the network -----------------------------------------------------------


def cached_params(d: AutoregressiveImage, x: torch.Tensor) -> torch.Tensor:
    """The network outputs ``(N, P, H, W)`` for images x computed by the cached sampler,
    feeding it x's pixels in sampling order (channel by channel where channel-aware)."""
    n, c, h, w = x.shape
    ctx, ctx_map = d._flat_context(torch.Size([n]))
    sampler = d.net.cached_sampler(x, n, (c, h, w), ctx, ctx_map)
    lik = d.likelihood
    out = None
    channels = range(c) if lik.channel_aware else [0]
    for r, col in itertools.product(range(h), range(w)):
        for ch in channels:
            pixel = x[:, :, r, col].clone()
            if lik.channel_aware:
                pixel[:, ch:] = 0  # channels >= ch not drawn yet
                sampler.image.put(r, col, lik.net_input(pixel))
            params = sampler.step(r, col)
            if out is None:
                out = params.new_zeros(n, params.shape[1], h, w)
            groups = channel_groups(params.shape[1], c) if lik.channel_aware else None
            block = groups == ch if groups is not None else slice(None)
            out[:, block, r, col] = params[:, block]
        sampler.image.put(r, col, lik.net_input(x[:, :, r, col]))
    return out


def random_images(shape, likelihood, n=3):
    if likelihood == "bernoulli":
        return (torch.rand(n, *shape) < 0.5).double()
    return torch.randint(0, 256, (n, *shape)).double()


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("name", MODELS)
def test_cached_outputs_equal_the_full_network_pixel_by_pixel(name, likelihood, shape):
    """Each pixel's parameters, computed from the pixels before it only (the cached sampler
    never sees later ones), equal the full network's output there: causality and
    correctness of the cached path at once."""
    model = make(name, shape, likelihood).double()
    x = random_images(shape, likelihood)
    full = model.params(x)
    cached = cached_params(model.distribution(), x)
    torch.testing.assert_close(cached, full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_cached_outputs_of_the_pixelvae_decoder_equal_the_full_network(likelihood):
    model = make("pixelvae", (3, 4, 3), likelihood, latent_dim=4, context_dim=8,
                 map_channels=3, hidden_dims=[16]).double()  # fmt: skip
    x = random_images((3, 4, 3), likelihood)
    d = model.conditional(torch.randn(3, 4, dtype=torch.float64))
    ctx, ctx_map = d._flat_context(torch.Size([3]))
    full = d.net(d.likelihood.net_input(x), ctx, ctx_map)
    torch.testing.assert_close(cached_params(d, x), full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", MODELS)
def test_the_cached_path_is_normalized_on_binary_3x3_images(name):
    model = make(name, (1, 3, 3), "bernoulli").double()
    xs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=9)), dtype=torch.float64)
    xs = xs.reshape(512, 1, 3, 3)
    log_p = model.likelihood(cached_params(model.distribution(), xs)).log_prob(xs)
    assert abs(torch.logsumexp(log_p, 0).item()) < 1e-9


@pytest.mark.parametrize("likelihood", ["categorical", "logistic-mixture"])
@pytest.mark.parametrize("name", MODELS)
def test_the_cached_path_is_normalized_on_256_level_2_channel_pixels(name, likelihood):
    model = make(name, (2, 1, 1), likelihood).double()  # channel by channel where aware
    levels = torch.arange(256, dtype=torch.float64)
    xs = torch.cartesian_prod(levels, levels).reshape(-1, 2, 1, 1)
    d = model.distribution()
    log_p = torch.cat([d.likelihood(cached_params(d, x)).log_prob(x) for x in xs.split(4096)])
    assert abs(torch.logsumexp(log_p, 0).item()) < 1e-6


def test_a_conditional_network_refuses_a_context_it_was_not_built_for():
    net = make("gated-pixelcnn", (1, 3, 3), "bernoulli").net
    with pytest.raises(ValueError, match="without context_dim"):
        net.cached_sampler(torch.zeros(()), 2, (1, 3, 3), torch.zeros(2, 4), None)
    with pytest.raises(ValueError, match="unconditional"):
        make("pixelcnn", (1, 3, 3), "bernoulli").net.cached_sampler(
            torch.zeros(()), 2, (1, 3, 3), torch.zeros(2, 4), None
        )
