"""Annealed importance sampling and BDMC against models whose log p(x) is known exactly."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from test_importance import LinearGaussian

from pyro_genmodels.infer import ais_estimate, ais_log_marginal, bdmc, log_importance_weights
from pyro_genmodels.infer.ais import _stream_seed, sigmoid_schedule

F64 = torch.float64


@pytest.fixture(scope="module")
def lg_data():
    lg = LinearGaussian(d_z=3, d_x=10, s=0.5, seed=0)
    torch.manual_seed(0)  # the autouse seed fixture does not run for module fixtures
    x = lg.sample_x(50)
    return lg, x


def _poor_guide(lg):
    """A diagonal guide one posterior std off in every dimension and 1.5x too wide."""
    sd = lg.post_cov.diagonal().sqrt()

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(lg.post_mean(x) + sd, 1.5 * sd).to_event(1))

    return guide


def test_schedule_is_sigmoidal_from_zero_to_one():
    b = sigmoid_schedule(100)
    assert b[0] == 0 and b[-1] == 1 and (b.diff() > 0).all() and len(b) == 101
    assert b.diff()[0] < b.diff()[50] / 5  # dense at the ends
    assert sigmoid_schedule(1).tolist() == [0.0, 1.0]


def test_ais_from_a_poor_guide_converges_to_the_exact_log_px(lg_data):
    lg, x = lg_data
    exact = lg.exact_log_px(x)
    errors = {}
    for steps in (3, 100):
        est = ais_estimate(lg.model, _poor_guide(lg), x, steps, 8, num_leapfrog=5, seed=1)
        errors[steps] = (est.log_marginal - exact).mean().item()
    assert abs(errors[100]) < 0.05, errors  # T = 100, 8 chains, 5 leapfrog steps
    assert abs(errors[3]) > 2 * abs(errors[100]), errors
    assert 0.4 < est.acceptance_rate.mean() < 0.9 and (est.step_size > 0).all()
    assert est.ess.shape == est.log_weight_std.shape == (50,) and (est.ess <= 8 + 1e-9).all()


def test_ais_from_the_prior_converges_to_the_exact_log_px(lg_data):
    lg, x = lg_data
    exact = lg.exact_log_px(x)
    coarse = ais_log_marginal(lg.model, None, x, 5, 8, num_leapfrog=10, seed=2)
    fine = ais_log_marginal(lg.model, None, x, 300, 8, num_leapfrog=10, seed=2)
    # T = 300 from N(0, I), 8 chains: AIS is low by 0.06 +- 0.02 on average here (400
    # examples, before and after vectorizing); 50 examples carry a standard error of 0.04
    assert abs((fine - exact).mean()) < 0.15
    assert (coarse - exact).mean() < -1.0  # far off with few temperatures


class GammaPoisson:
    """z ~ Gamma(a, b), x_j | z ~ Poisson(z), j = 1..m: p(x) in closed form, z > 0."""

    a, b, m = 3.0, 0.5, 6

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Gamma(x.new_tensor(self.a), x.new_tensor(self.b)))
            rate = z.unsqueeze(-1).expand(*z.shape, x.shape[-1])
            pyro.sample("x", dist.Poisson(rate).to_event(1), obs=x)

    def guide(self, x):  # a LogNormal guide that ignores the counts: a poor proposal
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.LogNormal(x.new_tensor(1.5), x.new_tensor(0.8)))

    def exact(self, x):
        a, b, m, s = self.a, self.b, self.m, x.sum(-1)
        log_norm = a * math.log(b) - math.lgamma(a) - torch.lgamma(x + 1).sum(-1)
        return log_norm + torch.lgamma(a + s) - (a + s) * math.log(b + m)


def test_constrained_latent_goes_through_its_jacobian():
    gp = GammaPoisson()
    rate = torch.distributions.Gamma(gp.a, gp.b).sample((30,)).double()
    x = torch.poisson(rate[:, None].expand(30, gp.m))
    est = ais_log_marginal(gp.model, gp.guide, x, 100, 8, num_leapfrog=5, seed=0)
    exact = gp.exact(x)
    assert abs((est - exact).mean()) < 0.05, (est - exact).mean()  # no Jacobian: ~0.9 off
    assert (est - exact).abs().max() < 1.0


def test_one_step_without_moves_is_the_iw_estimate_on_the_same_draws(lg_data):
    lg, x = lg_data
    guide = _poor_guide(lg)
    est = ais_estimate(lg.model, guide, x[:3], 1, 7, seed=5)
    torch.manual_seed(_stream_seed(5, 0))  # what ais_estimate seeds with example_offset=0
    lw = log_importance_weights(lg.model, guide, x[:3], 7, chunk_size=7)
    torch.testing.assert_close(est.log_weights, lw, rtol=0, atol=1e-12)
    assert torch.isnan(est.acceptance_rate).all()  # no move was made


def test_chains_in_passes_replay_the_first_pass_step_sizes_and_stay_unbiased(lg_data):
    # E[w] = p(x) for AIS weights whatever the (fixed) kernels: 600 chains in passes of 150,
    # the later passes running the step sizes the first pass's tuning chains chose
    lg, x = lg_data
    x = x[:4]
    exact = lg.exact_log_px(x)
    one = ais_estimate(lg.model, _poor_guide(lg), x, 20, 600, num_leapfrog=3, seed=3)
    passes = ais_estimate(lg.model, _poor_guide(lg), x, 20, 600, num_leapfrog=3, seed=3,
                          chunk_size=150)  # fmt: skip
    for est in (one, passes):
        assert est.log_weights.shape == (600, 4)
        se = est.log_weight_std / math.sqrt(600)
        assert ((est.log_marginal - exact).abs() < 4 * se + 0.01).all(), (est.log_marginal, exact)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        ais_estimate(lg.model, None, x, 5, 2, chunk_size=0)


def test_bdmc_sandwiches_the_exact_log_px_and_the_gap_shrinks(lg_data):
    lg, x = lg_data
    guide = _poor_guide(lg)
    gaps = []
    for steps in (5, 100):
        r = bdmc(lg.model, guide, 30, steps, 4, x_like=x, num_leapfrog=5, seed=steps)
        exact = lg.exact_log_px(r.x)
        for below, above in ((r.lower, exact), (exact, r.upper)):  # within 3 standard errors
            diff = below - above
            assert diff.mean() <= 3 * diff.std() / math.sqrt(len(diff)) + 1e-3, (steps, diff)
        torch.testing.assert_close(r.gap, r.upper - r.lower)
        gaps.append(r.gap.mean().item())
    assert gaps[1] < gaps[0] / 3 and gaps[1] < 0.3, gaps


def test_model_without_latents_is_exact():
    loc = torch.tensor([0.5, -1.0], dtype=F64)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, 0.7).to_event(1), obs=x)

    x = torch.randn(4, 2, dtype=F64)
    est = ais_estimate(model, None, x, 50, 3)
    torch.testing.assert_close(est.log_marginal, dist.Normal(loc, 0.7).to_event(1).log_prob(x))
    assert not est.has_latent


def test_enumerated_model_sites_are_summed_inside_the_log_joint():
    # y ~ Cat(pi), z ~ N(mu_y, 1), x ~ N(z, s^2): log p(x) = logsumexp_y log pi_y N(x; mu_y, 1+s^2)
    pi = torch.tensor([0.3, 0.7], dtype=F64)
    mu = torch.tensor([-2.0, 2.0], dtype=F64)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(pi), infer={"enumerate": "parallel"})
            z = pyro.sample("z", dist.Normal(mu[y], 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)

    def guide(x):  # one broad Gaussian over both modes
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.8 * x, 2.5))

    x = torch.tensor([-2.5, 0.1, 1.8], dtype=F64).repeat(10)
    exact = torch.logsumexp(pi.log() + dist.Normal(mu, math.sqrt(1.25)).log_prob(x[:, None]), -1)
    est = ais_log_marginal(model, guide, x, 400, 32, num_leapfrog=5, seed=0)
    # one estimate's standard error is 0.055 here; the mean of 10 is within 0.05
    torch.testing.assert_close(est.reshape(10, 3).mean(0), exact[:3], rtol=0, atol=0.05)
    with pytest.raises(ValueError, match="cannot depend on an enumerated site"):
        ais_log_marginal(model, None, x, 10, 2)  # z from its prior would carry y's values


def test_bad_input_is_a_clear_value_error(lg_data):
    lg, x = lg_data

    def discrete_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(x.new_full((3,), 0.5)).to_event(1))

    with pytest.raises(ValueError, match="support"):  # Boolean against Real
        ais_log_marginal(lg.model, discrete_guide, x[:2], 10, 2)

    def discrete_model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(x.new_full((3,), 0.5)).to_event(1))
            pyro.sample("x", dist.Normal(x.new_zeros(10), 1.0).to_event(1), obs=x)

    with pytest.raises(ValueError, match="discrete site 'z'"):
        ais_log_marginal(discrete_model, None, x[:2], 10, 2)
    with pytest.raises(ValueError, match="num_steps must be a positive integer, got 0"):
        ais_log_marginal(lg.model, None, x[:2], 0, 2)
    bad = x[:2].clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        ais_log_marginal(lg.model, None, bad, 10, 2)
    with pytest.raises(ValueError, match="num_chains must be a positive integer"):
        ais_log_marginal(lg.model, None, x[:2], 10, 0)


def test_evaluate_images_by_ais_is_exact_for_a_pixel_model():
    import pyro_genmodels as pg
    from pyro_genmodels.evaluation import evaluate_images

    model = pg.create_model("pixelcnn", image_shape=(1, 4, 4), hidden_channels=4, num_layers=1)
    x = (torch.rand(5, 1, 4, 4) < 0.5).float()
    by_ais = evaluate_images(model, x, method="ais", ais_steps=5, ais_chains=2, progress=False)
    by_iw = evaluate_images(model, x, num_samples=3, progress=False)
    assert by_ais["exact"] and by_ais["nll"] == pytest.approx(by_iw["nll"], abs=1e-5)
    assert by_ais["nll"] == pytest.approx(-model.log_prob(x).mean().item(), abs=1e-4)


def test_low_precision_gradients_keep_the_estimate_exact(lg_data):
    # bfloat16 leapfrog gradients are only the force field: the trajectory stays volume-
    # preserving and reversible and the acceptance uses float32 densities, so E[w] = p(x)
    lg, x = lg_data
    lg32 = LinearGaussian(d_z=3, d_x=10, s=0.5, seed=0)
    lg32.W, lg32.b = lg.W.float(), lg.b.float()
    x = x[:4].float()
    exact = lg.exact_log_px(x.double())

    def guide32(x):
        with pyro.plate("data", x.shape[0]):
            sd = lg.post_cov.diagonal().sqrt().float()
            loc = lg.post_mean(x.double()).float() + sd
            pyro.sample("z", dist.Normal(loc, 1.5 * sd).to_event(1))

    full = ais_estimate(lg32.model, guide32, x, 30, 400, num_leapfrog=3, seed=3)
    low = ais_estimate(lg32.model, guide32, x, 30, 400, num_leapfrog=3, seed=3,
                       gradient_dtype=torch.bfloat16)  # fmt: skip
    for est in (full, low):
        assert est.log_marginal.dtype == torch.float32
        se = est.log_weight_std.double() / math.sqrt(400)
        err = (est.log_marginal.double() - exact).abs()
        assert (err < 4 * se + 0.01).all(), (est.log_marginal, exact)
    assert (low.acceptance_rate - full.acceptance_rate).abs().max() < 0.05
    with pytest.raises(ValueError, match="gradient_dtype must be None or a float dtype"):
        ais_estimate(lg.model, None, x, 5, 2, gradient_dtype=torch.int32)


class _BernoulliFactor:
    """z ~ N(0, 1); six pixels x_j ~ Bernoulli(logits a_j z + c_j) (an event); the second
    half of the images masked out of the likelihood (log p(x) = 0 there): exact by quadrature."""

    def __init__(self, dtype=F64):
        self.a = torch.tensor([2.0, -1.5, 0.7, 3.0, -2.5, 1.0], dtype=dtype)
        self.c = torch.tensor([0.3, -0.2, 1.0, -1.0, 0.5, 0.0], dtype=dtype)

    @staticmethod
    def mask(n):
        return torch.arange(n) < n // 2

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
            logits = torch.nn.functional.linear(z.unsqueeze(-1), self.a[:, None], self.c)
            with poutine.mask(mask=self.mask(x.shape[0])):
                pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def exact(self, x):
        z = torch.linspace(-12, 12, 24001, dtype=F64)
        a, c = self.a.double(), self.c.double()
        logits = z[:, None, None] * a + c  # (grid, 1, 6)
        ll = dist.Bernoulli(logits=logits).log_prob(x).sum(-1) * self.mask(x.shape[0])
        log_joint = ll + dist.Normal(0.0, 1.0).log_prob(z)[:, None]
        return torch.logsumexp(log_joint, 0) + math.log(z[1] - z[0])


def test_bernoulli_forces_inside_trajectories_are_the_exact_gradient(monkeypatch):
    # inside a trajectory a Bernoulli site's density is left out (NaN) and only its gradient
    # computed: the same chains, step for step, as computing the density, and log p(x) exact
    from pyro_genmodels.infer import ais

    bf = _BernoulliFactor()
    torch.manual_seed(0)
    z = torch.randn(12, 1, dtype=F64)
    x = dist.Bernoulli(logits=z * bf.a + bf.c).sample()
    calls = []
    apply = ais._BernoulliForce.apply
    monkeypatch.setattr(ais._BernoulliForce, "apply", lambda *a: calls.append(1) or apply(*a))
    fast = ais_estimate(bf.model, None, x, 200, 16, seed=4)
    assert len(calls) == 199 * 10 - 199  # every leapfrog step but the last of each move
    monkeypatch.setattr(ais, "_force_only", lambda trace: None)
    full = ais_estimate(bf.model, None, x, 200, 16, seed=4)
    assert torch.allclose(fast.log_weights, full.log_weights, rtol=0, atol=1e-9)
    assert torch.equal(fast.acceptance_rate, full.acceptance_rate)
    se = fast.log_weight_std / 4
    assert ((fast.log_marginal - bf.exact(x)).abs() < 4 * se + 0.01).all()
    assert (fast.log_marginal[6:] == 0).all()  # masked: the prior's integral


def test_bernoulli_forces_in_bfloat16_keep_the_estimate_exact():
    # under autocast the logits (a linear layer's output) and the force are bfloat16
    bf = _BernoulliFactor(torch.float32)
    torch.manual_seed(1)
    x = dist.Bernoulli(logits=torch.randn(12, 1) * bf.a + bf.c).sample()
    est = ais_estimate(bf.model, None, x, 100, 400, seed=5, gradient_dtype=torch.bfloat16)
    se = est.log_weight_std.double() / 20
    assert ((est.log_marginal.double() - bf.exact(x.double())).abs() < 4 * se + 0.01).all()
    assert 0.5 < est.acceptance_rate.mean() < 0.95


def test_bernoulli_force_broadcasts_and_sums_its_event_dims():
    from pyro_genmodels.infer.ais import _BernoulliForce

    torch.manual_seed(0)
    logits = torch.randn(3, 5, 2, 4, dtype=F64, requires_grad=True)
    value = torch.rand(5, 2, 4, dtype=F64).round()
    weight = torch.rand(3, 5, dtype=F64)
    out = _BernoulliForce.apply(logits, value, 2)
    assert out.shape == (3, 5) and out.isnan().all()  # the density is never computed
    (force,) = torch.autograd.grad((out * weight).sum(), logits)
    exact = dist.Bernoulli(logits=logits).log_prob(value).sum((-2, -1))
    (expected,) = torch.autograd.grad((exact * weight).sum(), logits)
    assert torch.allclose(force, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("step_size", [0.05, 2.0])  # the default, and divergent first steps
def test_unmasked_leapfrog_steps_are_the_masked_ones_while_every_chain_is_finite(
    step_size, monkeypatch
):
    # a move masks chains per (chain, example) only once one has diverged; before that it
    # skips the masking: the same chains, bit for bit, as masking at every step
    from programs import LogNormalPoisson

    from pyro_genmodels.infer import ais

    ln = LogNormalPoisson()
    x = torch.tensor([0.0, 3.0, 7.0, 15.0], dtype=F64).repeat(3)
    checks = []
    all_finite = ais._all_finite
    monkeypatch.setattr(ais, "_all_finite", lambda *t: checks.append(all_finite(*t)) or checks[-1])
    fast = ais_estimate(ln.model, None, x, 40, 8, seed=2, step_size=step_size)
    assert any(checks) and not all(checks)  # moves without divergence, and moves with
    monkeypatch.setattr(ais, "_all_finite", lambda *t: False)  # mask at every step
    masked = ais_estimate(ln.model, None, x, 40, 8, seed=2, step_size=step_size)
    assert torch.equal(fast.log_weights, masked.log_weights)
    assert torch.equal(fast.acceptance_rate, masked.acceptance_rate)
    assert torch.equal(fast.step_size, masked.step_size)


def test_all_finite_is_false_for_any_nan_or_infinity_and_true_for_huge_finite_sums():
    from pyro_genmodels.infer.ais import _all_finite

    big = torch.full((1000,), 3e38)  # its float32 sum overflows; the float64 one does not
    assert _all_finite(big, torch.zeros(2, 3, dtype=torch.bfloat16))
    for bad in (math.nan, math.inf, -math.inf):
        for dtype in (torch.float32, torch.bfloat16, F64):
            t = torch.zeros(4, 5, dtype=dtype)
            t[2, 3] = bad
            assert not _all_finite(big, t)
            assert not _all_finite(t)
