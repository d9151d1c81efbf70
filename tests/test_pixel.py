"""Autoregressive pixel models: causality, normalization, sampling, the logistic mixture."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import expit

import pyro_genmodels as pg
from pyro_genmodels.distributions import DiscretizedLogisticMixture
from pyro_genmodels.infer import log_marginal
from pyro_genmodels.nn.masked import causal_mask, channel_groups

MODELS = ["pixelcnn", "gated-pixelcnn", "pixelrnn", "diagonal-bilstm"]
LIKELIHOODS = ["bernoulli", "categorical", "logistic-mixture"]


def make(name, shape, likelihood, **kw):
    cfg = dict(image_shape=shape, likelihood=likelihood, hidden_channels=12, num_layers=2)
    cfg.update(kw)
    return pg.create_model(name, **cfg)


def random_images(shape, likelihood, n=1):
    if likelihood == "bernoulli":
        return (torch.rand(n, *shape) < 0.5).double()
    return torch.randint(0, 256, (n, *shape)).double()


def _output_block(model, ch):
    """Indices of the network outputs that parameterize channel ``ch`` (all, if joint)."""
    lik = model.likelihood
    if not lik.channel_aware:
        return slice(None)
    return slice(ch * lik.num_params, (ch + 1) * lik.num_params)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", [(1, 4, 4), (3, 3, 3)], ids=["grey", "rgb"])
def test_causality_by_gradients(name, likelihood, shape):
    torch.manual_seed(0)
    model = make(name, shape, likelihood).double()
    c, h, w = shape
    channels = range(c) if model.likelihood.channel_aware else [0]
    for mode in ("train", "eval"):
        getattr(model, mode)()
        x = random_images(shape, likelihood).requires_grad_()
        out = model.params(x)
        weights = torch.randn_like(out)
        for r, col, ch in itertools.product(range(h), range(w), channels):
            sel = (weights * out)[0, _output_block(model, ch), r, col].sum()
            (grad,) = torch.autograd.grad(sel, x, retain_graph=True)
            grad = grad[0]  # (C, H, W)
            allowed = torch.zeros(c, h, w, dtype=torch.bool)
            allowed.view(c, -1)[:, : r * w + col] = True  # every channel of earlier pixels
            if model.likelihood.channel_aware:
                allowed[:ch, r, col] = True  # and earlier channels of this pixel
            assert (grad[~allowed] == 0).all(), (mode, r, col, ch, grad)
            if r * w + col > 0:
                assert grad[allowed].abs().sum() > 0  # not vacuous: it does see the past


@pytest.mark.parametrize("name", MODELS)
def test_binary_3x3_images_sum_to_one(name):
    torch.manual_seed(1)
    model = make(name, (1, 3, 3), "bernoulli").double()
    xs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=9)), dtype=torch.float64)
    total = torch.logsumexp(model.log_prob(xs.reshape(512, 1, 3, 3)), 0)
    assert abs(total.item()) < 1e-9


@pytest.mark.parametrize("likelihood", ["categorical", "logistic-mixture"])
@pytest.mark.parametrize("name", MODELS)
def test_256_level_1x2_images_sum_to_one(name, likelihood):
    torch.manual_seed(2)
    model = make(name, (1, 1, 2), likelihood).double()
    levels = torch.arange(256, dtype=torch.float64)
    xs = torch.cartesian_prod(levels, levels).reshape(-1, 1, 1, 2)
    total = torch.logsumexp(model.log_prob(xs), 0)
    assert abs(total.item()) < 1e-6


def _exact_probs(model, xs):
    return model.log_prob(xs).exp().detach().numpy()


@pytest.mark.parametrize("name", MODELS)
def test_samples_follow_the_model_binary_2x2(name):
    torch.manual_seed(3)
    model = make(name, (1, 2, 2), "bernoulli").double()
    xs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)), dtype=torch.float64)
    probs = _exact_probs(model, xs.reshape(16, 1, 2, 2))
    samples = model.sample(3000).reshape(3000, 4)
    index = (samples * torch.tensor([8.0, 4, 2, 1], dtype=torch.float64)).sum(1).long()
    counts = np.bincount(index.numpy(), minlength=16)
    assert stats.chisquare(counts, probs * 3000).pvalue > 1e-3


@pytest.mark.parametrize("likelihood", ["categorical", "logistic-mixture"])
@pytest.mark.parametrize("name", ["pixelcnn", "gated-pixelcnn", "pixelrnn", "diagonal-bilstm"])
def test_samples_follow_the_model_256_levels(name, likelihood):
    torch.manual_seed(4)
    model = make(name, (2, 1, 1), likelihood, hidden_channels=12).double()  # two channels, RG
    levels = torch.arange(256, dtype=torch.float64)
    xs = torch.cartesian_prod(levels, levels).reshape(-1, 2, 1, 1)
    probs = _exact_probs(model, xs).reshape(256, 256)
    binned = probs.reshape(4, 64, 4, 64).sum((1, 3)).ravel()  # 16 cells of 64 x 64 levels
    samples = model.sample(3000).reshape(3000, 2).long()
    assert ((samples >= 0) & (samples <= 255)).all()
    index = (samples[:, 0] // 64) * 4 + samples[:, 1] // 64
    counts = np.bincount(index.numpy(), minlength=16)
    keep = binned * 3000 > 5
    expected = binned[keep] * 3000 * counts[keep].sum() / (binned[keep] * 3000).sum()
    assert stats.chisquare(counts[keep], expected).pvalue > 1e-3


def test_pixelcnn_has_the_blind_spot_gated_does_not():
    torch.manual_seed(5)
    shape, (r, c) = (1, 6, 8), (3, 1)
    grads = {}
    for name in ("pixelcnn", "gated-pixelcnn"):
        model = make(name, shape, "bernoulli", num_layers=4).double()
        x = random_images(shape, "bernoulli").requires_grad_()
        (grad,) = torch.autograd.grad(model.params(x)[0, :, r, c].sum(), x)
        grads[name] = grad[0, 0]
    # (2, 5): the row above, four columns right: earlier in raster order
    assert grads["pixelcnn"][2, 5] == 0  # never reached by stacked masked 3x3 convs
    assert grads["gated-pixelcnn"][2, 5] != 0
    # with enough layers the gated stack sees every earlier pixel of a small image
    model = make("gated-pixelcnn", (1, 5, 5), "bernoulli", num_layers=3).double()
    x = random_images((1, 5, 5), "bernoulli").requires_grad_()
    (grad,) = torch.autograd.grad(model.params(x)[0, :, 4, 4].sum(), x)
    assert (grad[0, 0].reshape(-1)[:24] != 0).all()


@pytest.mark.parametrize("name", MODELS)
def test_log_marginal_is_the_exact_log_prob(name, digits_binary):
    model = make(name, (1, 8, 8), "bernoulli")
    x = digits_binary[:6]
    torch.testing.assert_close(log_marginal(model.model, model.guide, x, 5000), model.log_prob(x))


def test_masks_a_and_b():
    g = channel_groups(3, 3)
    a = causal_mask(g, g, (3, 3), "A")
    b = causal_mask(g, g, (3, 3), "B")
    assert a[:, :, 0].eq(1).all() and a[:, :, 1, 0].eq(1).all() and a[:, :, 2].eq(0).all()
    assert a[:, :, 1, 2].eq(0).all() and b[:, :, 1, 2].eq(0).all()
    # centre: R sees nothing (A) / R (B); G sees R (A) / R, G (B); B sees R, G (A) / all (B)
    assert a[:, :, 1, 1].tolist() == [[0, 0, 0], [1, 0, 0], [1, 1, 0]]
    assert b[:, :, 1, 1].tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    one = channel_groups(4, 1)
    assert causal_mask(one, one, (1, 1), "A").eq(0).all()


def _independent_dlm_probs(logits, locs, log_scales, coeffs, rgb):
    """P(rgb) for one pixel from logistic CDFs in float64 NumPy (no shared code)."""
    x = np.asarray(rgb) / 127.5 - 1
    weights = np.exp(logits - logits.max())
    weights /= weights.sum()
    total = 0.0
    for m in range(len(logits)):
        a, b, cc = np.tanh(coeffs[m])
        means = [locs[m, 0], locs[m, 1] + a * x[0], locs[m, 2] + b * x[0] + cc * x[1]]
        p = 1.0
        for ch in range(3):
            s = np.exp(max(log_scales[m, ch], -7.0))
            hi = np.inf if rgb[ch] == 255 else (x[ch] + 1 / 255 - means[ch]) / s
            lo = -np.inf if rgb[ch] == 0 else (x[ch] - 1 / 255 - means[ch]) / s
            # F(hi) - F(lo), from the tail where it does not cancel
            p *= expit(hi) - expit(lo) if lo < 0 else expit(-lo) - expit(-hi)
        total += weights[m] * p
    return total


def test_logistic_mixture_matches_an_independent_computation():
    rng = np.random.default_rng(0)
    m = 3
    logits, locs = rng.normal(size=m), rng.uniform(-1, 1, (m, 3))
    log_scales, coeffs = rng.uniform(-4, -1, (m, 3)), rng.normal(size=(m, 3))
    d = DiscretizedLogisticMixture(
        torch.tensor(logits)[:, None, None],
        torch.tensor(locs)[:, :, None, None],
        torch.tensor(log_scales)[:, :, None, None],
        torch.tensor(coeffs)[:, :, None, None],
    )
    values = [(0, 0, 0), (255, 255, 255), (0, 128, 255), (17, 200, 3), (128, 128, 128)]
    values += [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(20)]
    for rgb in values:
        mine = d.log_prob(torch.tensor(rgb, dtype=torch.float64)[:, None, None]).item()
        theirs = math.log(_independent_dlm_probs(logits, locs, log_scales, coeffs, rgb))
        assert mine == pytest.approx(theirs, abs=1e-6), rgb


def test_logistic_mixture_edge_bins_take_the_tails():
    loc = torch.tensor(-1.2, dtype=torch.float64)  # left of the whole range
    d = DiscretizedLogisticMixture(
        torch.zeros(1, 1, 1, dtype=torch.float64),
        loc.reshape(1, 1, 1, 1),
        torch.full((1, 1, 1, 1), math.log(0.3), dtype=torch.float64),
        torch.zeros(1, 0, 1, 1, dtype=torch.float64),
    )
    levels = torch.arange(256, dtype=torch.float64).reshape(256, 1, 1, 1)
    lp = d.log_prob(levels)
    assert lp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)
    assert lp[0].exp().item() == pytest.approx(expit((-1 + 1 / 255 + 1.2) / 0.3), abs=1e-12)
    assert lp[255].exp().item() == pytest.approx(1 - expit((1 - 1 / 255 + 1.2) / 0.3), abs=1e-12)
    samples = d.sample((20000,))
    assert torch.equal(samples, samples.round()) and samples.min() >= 0 and samples.max() <= 255
    assert (samples == 0).double().mean().item() == pytest.approx(lp[0].exp().item(), abs=0.02)


def test_bad_values_are_rejected():
    binary = make("pixelcnn", (1, 4, 4), "bernoulli")
    with pytest.raises(ValueError, match=r"binary images"):
        binary.log_prob(torch.full((2, 1, 4, 4), 0.5))
    with pytest.raises(ValueError, match=r"binary images"):  # the distribution on its own
        binary.distribution(None).log_prob(torch.full((2, 1, 4, 4), 0.5))
    levels = make("gated-pixelcnn", (1, 4, 4), "categorical")
    with pytest.raises(ValueError, match="integer grey levels 0..255"):
        levels.log_prob(torch.full((2, 1, 4, 4), 3.5))
    with pytest.raises(ValueError, match="integer grey levels 0..255"):
        levels.log_prob(torch.full((2, 1, 4, 4), 256.0))
    with pytest.raises(ValueError, match="valid: bernoulli, categorical, logistic-mixture"):
        make("pixelrnn", (1, 4, 4), "gaussian")
    with pytest.raises(ValueError, match="multiple of the 3 channel groups"):
        make("pixelcnn", (3, 4, 4), "categorical", hidden_channels=10)


def test_compiled_training_matches_eager_and_keeps_the_state_dict(digits_binary):
    """TrainConfig(compile=True) compiles the network in place: same steps, same keys."""
    from pyro_genmodels.infer import TrainConfig, fit

    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = make("gated-pixelcnn", (1, 8, 8), "bernoulli", hidden_channels=8)
        config = TrainConfig(epochs=1, batch_size=32, progress=False, compile=compiled)
        metrics = fit(model, digits_binary[:96], config=config)
        results.append((metrics[0]["train_loss"], model.state_dict()))
    (eager_loss, eager_state), (compiled_loss, compiled_state) = results
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-5)
    assert list(compiled_state) == list(eager_state)  # no "_orig_mod." prefixes
    for key, value in eager_state.items():
        torch.testing.assert_close(compiled_state[key], value, rtol=1e-4, atol=1e-5)


def test_compile_needs_a_network():
    from pyro_genmodels.infer.train import compile_networks

    with pytest.raises(ValueError, match="none of"):
        compile_networks(torch.nn.Linear(2, 2))
