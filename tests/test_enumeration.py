"""Enumerated model sites in log_marginal, KL and the validation ELBO against brute force:
sites in plates nested in the data plate, and chains under pyro.markov (which reuses
enumeration dimensions)."""

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate

from pyro_genmodels.infer import (
    TrainConfig,
    kl_divergence,
    log_importance_weights,
    log_marginal,
)
from pyro_genmodels.infer.lightning import SVIModule

F64 = torch.float64


class PixelMixture:
    """Each pixel d draws its own component c_d ~ Cat(pi), then x_d ~ Bern(P[c_d, d])."""

    def __init__(self, num_components=3, shape=(6,), seed=0):
        g = torch.Generator().manual_seed(seed)
        self.shape = shape
        self.pi = torch.softmax(torch.randn(num_components, generator=g, dtype=F64), 0)
        self.P = torch.rand(num_components, *shape, generator=g, dtype=F64) * 0.9 + 0.05

    @config_enumerate
    def model(self, x):
        if len(self.shape) == 1:  # data plate at dim -2, pixels nested at -1
            with pyro.plate("data", x.shape[0], dim=-2), pyro.plate("pixels", self.shape[0]):
                c = pyro.sample("c", dist.Categorical(self.pi))
                pyro.sample("x", dist.Bernoulli(self.P[c, torch.arange(self.shape[0])]), obs=x)
        else:  # rows and columns: two plates nested in the data plate
            rows, cols = self.shape
            with pyro.plate("data", x.shape[0], dim=-3):
                with pyro.plate("rows", rows, dim=-2), pyro.plate("cols", cols, dim=-1):
                    c = pyro.sample("c", dist.Categorical(self.pi))
                    probs = self.P[c, torch.arange(rows)[:, None], torch.arange(cols)]
                    pyro.sample("x", dist.Bernoulli(probs), obs=x)

    def brute_force(self, x):
        """log p(x) summed over all K^D joint assignments of the pixels' components."""
        d = math.prod(self.shape)
        flat_x, flat_p = x.reshape(len(x), d), self.P.reshape(len(self.pi), d)
        configs = torch.tensor(list(itertools.product(range(len(self.pi)), repeat=d)))  # (K^D, D)
        p = flat_p[configs, torch.arange(d)]  # (K^D, D)
        log_px = torch.where(flat_x[:, None].bool(), p.log(), (1 - p).log()).sum(-1)
        return torch.logsumexp(self.pi.log()[configs].sum(-1) + log_px, -1)


@pytest.mark.parametrize("shape", [(6,), (2, 3)], ids=["pixel-plate", "row-and-column-plates"])
def test_per_pixel_mixture_matches_brute_force_enumeration(shape):
    m = PixelMixture(shape=shape)
    x = (torch.rand(5, *shape, dtype=F64) < 0.5).to(F64)
    exact = m.brute_force(x)  # 3^6 = 729 configurations per image
    assert exact.shape == (5,)
    torch.testing.assert_close(log_marginal(m.model, None, x, 4), exact, rtol=0, atol=1e-10)
    # the independent-pixel factorization is what makes it tractable, and TraceEnum_ELBO agrees
    elbo = TraceEnum_ELBO(max_plate_nesting=len(shape) + 1).loss(m.model, lambda x: None, x)
    assert -elbo == pytest.approx(exact.sum().item(), abs=1e-8)


def test_per_pixel_mixture_on_mnist_sized_images_is_per_pixel():
    # on 784 pixels one shared component per image is hundreds of nats off
    m = PixelMixture(shape=(784,), seed=1)
    x = (torch.rand(3, 784, dtype=F64) < 0.3).to(F64)
    log_terms = torch.where(x[:, None].bool(), m.P.log(), (1 - m.P).log())  # (N, K, D)
    per_pixel = torch.logsumexp(m.pi.log()[:, None] + log_terms, 1).sum(-1)
    shared = torch.logsumexp(m.pi.log() + log_terms.sum(-1), -1)
    assert (per_pixel - shared).min() > 50
    torch.testing.assert_close(log_marginal(m.model, None, x, 2), per_pixel, rtol=0, atol=1e-8)


class OutlierVAE(torch.nn.Module):
    """z ~ N(0, I_2); each pixel is an outlier o_d ~ Bern(eps), enumerated in the model, and
    x_d ~ Bern(1/2) if o_d else Bern(sigmoid(W z + b)_d). q(z | x) = N(A x + c, diag s^2), or
    a point mass at A x + c (``delta``), which makes the ELBO deterministic."""

    def __init__(self, d=5, eps=0.2, delta=False, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = torch.nn.Parameter(torch.randn(d, 2, generator=g, dtype=F64) * 2)
        self.b = torch.randn(d, generator=g, dtype=F64)
        self.A = torch.randn(2, d, generator=g, dtype=F64) * 0.3
        self.c = torch.randn(2, generator=g, dtype=F64) * 0.3
        self.s = torch.tensor([0.8, 1.2], dtype=F64)
        self.d, self.eps, self.delta = d, eps, delta
        self.seen_z = []

    def q(self, x):
        loc = x @ self.A.T + self.c
        if self.delta:
            return dist.Delta(loc, event_dim=1)
        return dist.Normal(loc, self.s).to_event(1)

    def model(self, x):
        with pyro.plate("data", x.shape[0], dim=-2):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))  # (..., N, 1, 2)
            with pyro.plate("pixels", self.d, dim=-1):
                o = pyro.sample(
                    "o", dist.Bernoulli(x.new_tensor(self.eps)), infer={"enumerate": "parallel"}
                )
                clean = torch.sigmoid((z * self.W).sum(-1) + self.b)  # (..., N, D)
                pyro.sample("x", dist.Bernoulli(torch.where(o.bool(), 0.5, clean)), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0], dim=-2):
            z = pyro.sample("z", self.q(x[:, None]))  # batch (N, 1): the pixel dim is -1
        self.seen_z.append(z)

    def log_weight(self, x, z):
        """log p(x, z) - log q(z | x) for z ``(..., N, 2)``, each pixel's o summed out by hand."""
        clean = torch.sigmoid(z @ self.W.T + self.b)  # (..., N, D)
        like = lambda p: torch.where(x.bool(), p, 1 - p)  # noqa: E731
        per_pixel = (self.eps * 0.5 + (1 - self.eps) * like(clean)).log().sum(-1)
        log_pz = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
        return (log_pz + per_pixel - self.q(x).log_prob(z)).detach()


def test_outlier_vae_log_weights_match_a_hand_estimate_with_exact_inner_sums():
    m = OutlierVAE()
    x = (torch.rand(4, m.d, dtype=F64) < 0.5).to(F64)
    lw = log_importance_weights(m.model, m.guide, x, 300, chunk_size=300)
    z = m.seen_z[-1].reshape(300, 4, 2)  # the particles of the (single) chunk
    torch.testing.assert_close(lw, m.log_weight(x, z), rtol=0, atol=1e-10)
    est = log_marginal(m.model, m.guide, x, 300, chunk_size=300)
    z = m.seen_z[-1].reshape(300, 4, 2)
    hand = torch.logsumexp(m.log_weight(x, z), 0) - math.log(300)
    torch.testing.assert_close(est, hand, rtol=0, atol=1e-10)


def test_outlier_vae_validation_elbo_equals_trace_enum_elbo_per_image():
    m = OutlierVAE(delta=True)  # a point-mass guide: every ELBO here is deterministic
    x = (torch.rand(6, m.d, dtype=F64) < 0.5).to(F64)
    per_image = log_importance_weights(m.model, m.guide, x, 1, allow_point_mass=True)[0]
    with pytest.raises(ValueError, match="point mass"):  # no estimate of log p(x) from it
        log_importance_weights(m.model, m.guide, x, 1)
    enum_elbo = TraceEnum_ELBO(max_plate_nesting=2)
    for i in range(len(x)):
        expected = -enum_elbo.loss(m.model, m.guide, x[i : i + 1])
        assert per_image[i].item() == pytest.approx(expected, abs=1e-9)
    svi = SVIModule(m, TrainConfig(progress=False))  # the per-epoch validation ELBO
    svi.validation_step(x[:4], 0), svi.validation_step(x[4:], 1)
    assert svi.valid_elbo.compute().item() == pytest.approx(per_image.mean().item(), abs=1e-6)
    # KL(q || p(z)) of a point mass, with the pixels' outlier flags summed out of the prior
    z0 = x @ m.A.T + m.c
    expected_kl = -dist.Normal(0.0, 1.0).log_prob(z0).sum(-1)
    kl = kl_divergence(m.model, m.guide, x, allow_point_mass=True)
    torch.testing.assert_close(kl, expected_kl)


def _hmm_params(num_states=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    init = torch.softmax(torch.randn(num_states, generator=g, dtype=F64), 0)
    trans = torch.softmax(torch.randn(num_states, num_states, generator=g, dtype=F64), -1)
    locs = torch.randn(num_states, generator=g, dtype=F64) * 2
    return init, trans, locs


def _hmm_model(init, trans, locs, markov: bool):
    def model(y):
        with pyro.plate("data", y.shape[0]):
            state = None
            steps = range(y.shape[1])
            for t in pyro.markov(steps) if markov else steps:
                probs = init if state is None else trans[state]
                state = pyro.sample(
                    f"s{t}", dist.Categorical(probs), infer={"enumerate": "parallel"}
                )
                pyro.sample(f"y{t}", dist.Normal(locs[state], 1.0), obs=y[:, t])

    return model


def _forward_algorithm(init, trans, locs, y):
    emit = dist.Normal(locs, 1.0).log_prob(y[..., None])  # (N, T, S)
    alpha = init.log() + emit[:, 0]
    for t in range(1, y.shape[1]):
        alpha = torch.logsumexp(alpha[:, :, None] + trans.log(), 1) + emit[:, t]
    return torch.logsumexp(alpha, -1)


@pytest.mark.parametrize("markov", [True, False], ids=["pyro.markov", "range"])
def test_hmm_matches_the_forward_algorithm(markov):
    # pyro.markov reuses enumeration dims along the chain: s0 and s2 share one
    init, trans, locs = _hmm_params()
    y = torch.randn(7, 4, dtype=F64) * 2  # 7 sequences of 4 steps
    model = _hmm_model(init, trans, locs, markov)
    exact = _forward_algorithm(init, trans, locs, y)
    torch.testing.assert_close(log_marginal(model, None, y, 3), exact, rtol=0, atol=1e-10)


def test_subsampled_data_plate_is_a_clear_error():
    def model(x):
        with pyro.plate("data", x.shape[0], subsample_size=2) as idx:
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x[idx])

    with pytest.raises(ValueError, match=r"pyro.plate\('data'\) subsamples 2 of 5"):
        log_marginal(model, None, torch.zeros(5), 3)

    def short(x):
        with pyro.plate("data", 3):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x[:3])

    with pytest.raises(ValueError, match="has size 3 but x has 5 examples"):
        log_marginal(short, None, torch.zeros(5), 3)
