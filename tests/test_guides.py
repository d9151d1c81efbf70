"""Posterior families, priors and objectives (issue: swappable q(z|x))."""

import math

import pyro
import pytest
import torch
from test_importance import LinearGaussian

import pyro_genmodels as pg
from pyro_genmodels.distributions.relaxed import relaxed_one_hot
from pyro_genmodels.infer import (
    LatentScale,
    TrainConfig,
    fit,
    kl_divergence,
    log_marginal,
    make_elbo,
    resolve_objective,
)
from pyro_genmodels.infer.lightning import SVIModule
from pyro_genmodels.models import list_families, make_posterior

F64 = torch.float64
FAMILIES = ["diagonal", "full-rank", "low-rank", "mixture", "iaf", "gmvae", "categorical"]


def test_every_family_is_listed():
    assert list_families() == FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
def test_family_samples_log_prob_and_gradients(family):
    encoder = torch.nn.Linear(10, 6)
    q_net = make_posterior(family, 6, 3, **({"num_classes": 4} if family == "categorical" else {}))
    h = encoder(torch.randn(5, 10))
    q = q_net(h)  # training mode: categorical codes are relaxed (differentiable)
    event = (3, 4) if family == "categorical" else (3,)
    assert q.batch_shape == (5,) and q.event_shape == event
    z = q.expand((7, 5)).rsample()  # as inside a particle plate
    assert z.shape == (7, 5, *event)
    q_eval = q_net.eval()(h)  # eval mode: exact (one-hot codes are discrete)
    hard = q_eval.expand((2, 5)).sample()
    log_q = q_eval.log_prob(hard)
    assert torch.isfinite(log_q).all() and log_q.shape == (2, 5)
    (z**2).sum().backward()
    assert encoder.weight.grad is not None and encoder.weight.grad.abs().sum() > 0
    assert q_net.mean(h).shape == (5, math.prod(event))


def _set_exact_full_rank(q_net, lg):
    """Weights making FullRankNormal output the exact posterior of ``lg`` for h = x."""
    cov = lg.post_cov
    gain = cov @ lg.W.T / lg.s**2  # mean = gain (x - b)
    chol = torch.linalg.cholesky(cov)
    with torch.no_grad():
        q_net.loc.weight.copy_(gain)
        q_net.loc.bias.copy_(-gain @ lg.b)
        q_net.raw_diag.weight.zero_()
        q_net.raw_diag.bias.copy_(torch.log(torch.expm1(chol.diagonal() - 1e-5)))
        q_net.off_diag.weight.zero_()
        q_net.off_diag.bias.copy_(chol[q_net._rows, q_net._cols])


def test_full_rank_with_the_exact_posterior_is_exact_at_k1():
    lg = LinearGaussian(d_z=3, d_x=6, s=0.5, seed=1)
    corr = lg.post_cov / lg.post_cov.diagonal().sqrt().outer(lg.post_cov.diagonal().sqrt())
    assert (corr - torch.eye(3, dtype=torch.float64)).abs().max() > 0.2  # correlated posterior
    full = make_posterior("full-rank", 6, 3).double()
    _set_exact_full_rank(full, lg)
    diag = make_posterior("diagonal", 6, 3).double()
    with torch.no_grad():  # the best a diagonal can do here: exact means and marginal scales
        diag.loc.load_state_dict(full.loc.state_dict())
        diag.raw_scale.weight.zero_()
        diag.raw_scale.bias.copy_(torch.log(torch.expm1(lg.post_cov.diagonal().sqrt() - 1e-5)))

    def guide_of(q_net):
        def guide(x):
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", q_net(x))

        return guide

    x = lg.sample_x(40)
    exact = lg.exact_log_px(x)
    est = log_marginal(lg.model, guide_of(full), x, 1)
    torch.testing.assert_close(est, exact, rtol=0, atol=1e-9)
    assert (log_marginal(lg.model, guide_of(diag), x, 1) - exact).abs().max() > 0.05


def test_one_component_mixture_matches_diagonal():
    diag = make_posterior("diagonal", 6, 3)
    mix = make_posterior("mixture", 6, 3, num_components=1)
    with pytest.raises(
        ValueError, match=r"unknown option\(s\) \['rank'\] for guide family 'mixture'"
    ):
        make_posterior("mixture", 6, 3, rank=2)
    with torch.no_grad():
        mix.locs.load_state_dict(diag.loc.state_dict())
        mix.raw_scales.load_state_dict(diag.raw_scale.state_dict())
    h = torch.randn(8, 6)
    q_d, q_m = diag(h), mix(h)
    z = q_d.sample((5,))
    torch.testing.assert_close(q_m.log_prob(z), q_d.log_prob(z), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mix.mean(h), diag.mean(h))
    pyro.set_rng_seed(0)
    zm = q_m.expand((20000, 8)).sample()
    torch.testing.assert_close(zm.std(0), q_d.base_dist.scale, rtol=0.03, atol=0)


def _vae(**kw):
    cfg = dict(image_shape=(1, 8, 8), latent_dim=3, hidden_dims=(32,))
    cfg.update(kw)
    return pg.create_model("vae", **cfg)


@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_iwae_with_one_particle_equals_trace_elbo(digits_binary, beta):
    vae = _vae()
    x = digits_binary[:16]
    model, guide = LatentScale(beta)(vae.model), LatentScale(beta)(vae.guide)
    results = []
    for objective in ("elbo", "iwae"):
        vae.zero_grad()
        pyro.set_rng_seed(7)
        loss = make_elbo(objective, 1, max_plate_nesting=1).differentiable_loss(model, guide, x)
        loss.backward()
        results.append((loss.item(), [p.grad.clone() for p in vae.parameters()]))
    (l_elbo, g_elbo), (l_iwae, g_iwae) = results
    assert l_iwae == pytest.approx(l_elbo, rel=1e-6)
    for a, b in zip(g_elbo, g_iwae, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _gmvae_brute_force(vae, x):
    """log p(x) = log sum_y pi_y int N(z; mu_y, s_y) p(x | z) dz by quadrature (latent_dim 1)."""
    z = torch.linspace(-15, 15, 30001, dtype=torch.float64)[:, None]
    prior = vae.prior.marginal()
    log_pz = prior.log_prob(z)  # (G,)
    log_px_z = vae.likelihood(vae.decoder(z)).log_prob(x[:, None])  # (N, G)
    dz = z[1, 0] - z[0, 0]
    return torch.logsumexp(log_pz + log_px_z, -1) + dz.log()


def test_gmvae_log_marginal_matches_brute_force():
    torch.manual_seed(2)
    vae = _vae(image_shape=(1, 1, 2), latent_dim=1, guide="gmvae", prior_components=3).double()
    with torch.no_grad():
        vae.prior.locs.copy_(torch.tensor([[-2.0], [0.5], [3.0]]))
        vae.prior.logits.copy_(torch.tensor([0.3, -0.5, 0.0]))
        # a wide proposal covering all three modes, so that K = 20000 is accurate
        vae.posterior.loc.weight.zero_()
        vae.posterior.loc.bias.fill_(0.5)
        vae.posterior.raw_scale.weight.zero_()
        vae.posterior.raw_scale.bias.fill_(math.log(math.expm1(3.0)))
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    x = x.reshape(4, 1, 1, 2)
    exact = _gmvae_brute_force(vae, x)
    assert torch.logsumexp(exact, 0).abs() < 1e-6  # the four images' probabilities sum to 1
    est = log_marginal(vae.model, vae.guide, x, 20000)
    torch.testing.assert_close(est, exact, rtol=0, atol=0.02)
    assert resolve_objective("auto", vae) == "enum"
    with pytest.raises(ValueError, match="use objective 'enum'"):
        resolve_objective("elbo", vae)


def test_categorical_code_is_exact_discrete_at_evaluation():
    torch.manual_seed(3)
    vae = _vae(
        image_shape=(1, 2, 2), latent_dim=2, guide="categorical", guide_options={"num_classes": 3}
    ).double()
    x0 = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    soft = vae.posterior(vae.encoder(x0)).rsample()  # training mode: relaxed
    assert ((soft > 0) & (soft < 1)).all()
    vae.eval()
    q = vae.posterior(vae.encoder(x0))
    assert isinstance(q.base_dist, pyro.distributions.OneHotCategorical)
    hard = q.sample((100,))
    assert set(hard.unique().tolist()) == {0.0, 1.0} and (hard.sum(-1) == 1).all()
    # brute force: p(x) = sum over the 9 codes of p(z) p(x | z)
    codes = torch.eye(3, dtype=torch.float64)
    z = torch.stack([torch.stack([codes[i], codes[j]]) for i in range(3) for j in range(3)])
    x = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.float64).reshape(2, 1, 2, 2)
    log_px_z = vae.likelihood(vae.decoder(z.flatten(-2))).log_prob(x[:, None])  # (2, 9)
    exact = torch.logsumexp(log_px_z - math.log(9), -1)
    torch.testing.assert_close(
        log_marginal(vae.model, vae.guide, x, 20000), exact, rtol=0, atol=0.01
    )
    probs = vae.posterior(vae.encoder(x)).base_dist.probs
    analytic = (probs * (probs.log() + math.log(3))).sum((-1, -2))
    torch.testing.assert_close(kl_divergence(vae.model, vae.guide, x), analytic)
    assert vae.default_objective == "meanfield"  # the analytic KL of the discrete codes


@pytest.mark.parametrize("straight_through", [False, True])
def test_plain_svi_trains_the_categorical_encoder_through_the_reconstruction(straight_through):
    # no trainer and no switch: Pyro's own SVI, Trace_ELBO and optimizer (Pyro's default
    # module_local_params=False, under which SVI finds the modules' parameters)
    assert not pyro.settings.get("module_local_params")
    torch.manual_seed(0)
    options = {"num_classes": 4, "straight_through": straight_through}
    vae = _vae(guide="categorical", latent_dim=5, guide_options=options)
    x = (torch.rand(16, 1, 8, 8) < 0.4).float()
    elbo = pyro.infer.Trace_ELBO()

    def encoder_grads(model):
        vae.zero_grad()
        elbo.differentiable_loss(model, vae.guide, x).backward()
        return torch.cat([p.grad.flatten() for p in vae.encoder.parameters()])

    def kl_part(x):  # the model without its observation: only the KL term is left
        with pyro.plate("data", x.shape[0]):
            vae.prior.sample_site("z", x, vae)

    pyro.set_rng_seed(1)
    full = encoder_grads(vae.model)
    pyro.set_rng_seed(1)
    kl_only = encoder_grads(kl_part)
    assert (full - kl_only).abs().max() > 1e-3  # the reconstruction term reaches the encoder

    before = torch.cat([p.detach().flatten() for p in vae.encoder.parameters()])
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    losses = [svi.step(x) for _ in range(40)]
    after = torch.cat([p.detach().flatten() for p in vae.encoder.parameters()])
    assert all(math.isfinite(v) for v in losses)
    assert (after - before).abs().max() > 1e-2  # SVI moved the encoder
    assert sum(losses[-10:]) < sum(losses[:10])  # and the relaxed ELBO improved


def test_gumbel_softmax_samples_the_categorical_and_scores_it_exactly():
    logits = torch.tensor([0.0, 1.0, -1.0])
    q = relaxed_one_hot(logits.expand(20000, 3), temperature=0.5)
    freq = torch.nn.functional.one_hot(q.sample().argmax(-1), 3).float().mean(0)  # Gumbel-max
    torch.testing.assert_close(freq, torch.softmax(logits, -1), rtol=0, atol=0.015)
    st_logits = logits.clone().requires_grad_()
    st = relaxed_one_hot(st_logits, 0.5, straight_through=True)
    y = st.rsample((50,))
    assert set(y.detach().unique().tolist()) == {0.0, 1.0}
    exact = torch.distributions.OneHotCategorical(logits=logits)
    torch.testing.assert_close(st.log_prob(y.detach()), exact.log_prob(y.detach()))
    (y * torch.arange(3.0)).sum().backward()
    assert st_logits.grad.abs().sum() > 0  # the relaxed gradient flows through hard samples
    # the KL against the uniform prior is the KL of the discrete codes, registered for meanfield
    prior = torch.distributions.OneHotCategorical(logits=torch.zeros(3))
    kl = torch.distributions.kl_divergence(relaxed_one_hot(logits[None], 0.5), prior)
    torch.testing.assert_close(kl, torch.distributions.kl_divergence(exact, prior)[None])


def test_vamp_prior_is_the_mean_of_posteriors_at_pseudo_inputs():
    vae = _vae(prior="vamp", prior_components=5)
    z = torch.randn(4, 3)
    u = torch.sigmoid(vae.prior.pseudo_logits)
    q = vae.posterior(vae.encoder(u))  # batch (5,)
    manual = torch.logsumexp(q.log_prob(z[:, None]), -1) - math.log(5)
    torch.testing.assert_close(vae.prior.distribution(vae).log_prob(z), manual)


def test_unknown_names_are_clear():
    with pytest.raises(ValueError, match="unknown guide family 'flow'; valid: diagonal, full-rank"):
        pg.create_model("vae", guide="flow")
    with pytest.raises(ValueError, match="unknown prior 'laplace'; valid: auto, standard"):
        pg.create_model("vae", prior="laplace")
    with pytest.raises(ValueError, match="categorical guide and the categorical prior go together"):
        pg.create_model("vae", prior="categorical")
    with pytest.raises(
        ValueError, match="unknown objective 'kl'; valid: auto, elbo, meanfield, iwae, enum"
    ):
        make_elbo("kl")


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_trains_and_evaluates(family, digits_binary):
    """Each family's training loss is Pyro's ELBO for its objective on the same draws, and
    two epochs lower it on a fixed batch."""
    vae = _vae(
        guide=family, **({"guide_options": {"num_classes": 4}} if family == "categorical" else {})
    )
    x = digits_binary[:256]
    svi = SVIModule(vae, TrainConfig())
    reference = {"elbo": pyro.infer.Trace_ELBO, "meanfield": pyro.infer.TraceMeanField_ELBO,
                 "enum": pyro.infer.TraceEnum_ELBO}[svi.objective](max_plate_nesting=1)  # fmt: skip

    def loss():
        pyro.set_rng_seed(4)
        return svi.loss(x[:64]).item()

    pyro.set_rng_seed(4)
    expected = reference.loss(vae.model, vae.guide, x[:64]) / 64
    assert loss() == pytest.approx(expected, rel=1e-5)
    before = loss()
    metrics = fit(vae, x, x[:64], epochs=2, batch_size=64, lr=3e-3, progress=False)
    assert [m["objective"] for m in metrics] == [svi.objective] * 2
    assert loss() < before - 2.0, (before, loss())
    assert vae.sample(3).shape == (3, 1, 8, 8)


@pytest.mark.parametrize("objective", ["elbo", "meanfield", "iwae"])
def test_objectives_with_beta_and_particles(objective, digits_binary):
    """K = 3 vectorized particles: the loss is Pyro's (RenyiELBO(alpha=0) for iwae) on the
    same draws; beta = 2 adds exactly one more analytic KL under meanfield."""
    vae = _vae()
    x = digits_binary[:32]
    config = TrainConfig(objective=objective, num_particles=3, beta=2.0)
    svi = SVIModule(vae, config)

    def loss(weight):
        pyro.set_rng_seed(6)
        return svi.loss(x, weight).item()

    reference = {
        "elbo": lambda: pyro.infer.Trace_ELBO(3, vectorize_particles=True, max_plate_nesting=1),
        "meanfield": lambda: pyro.infer.TraceMeanField_ELBO(3, vectorize_particles=True,
                                                            max_plate_nesting=1),
        "iwae": lambda: pyro.infer.RenyiELBO(0, 3, vectorize_particles=True, max_plate_nesting=1),
    }[objective]()  # fmt: skip
    pyro.set_rng_seed(6)
    expected = reference.loss(vae.model, vae.guide, x) / 32
    assert loss(1.0) == pytest.approx(expected, rel=1e-5)
    if objective == "meanfield":
        kl = kl_divergence(vae.model, vae.guide, x).mean().item()
        assert loss(2.0) - loss(1.0) == pytest.approx(kl, rel=1e-4)
    metrics = fit(vae, x, None, config, epochs=1, batch_size=16, progress=False)
    assert metrics[0]["objective"] == objective and metrics[0]["kl_weight"] == 2.0


def test_log_joint_sums_out_the_cluster():
    vae = _vae(guide="gmvae", prior_components=4).double()
    x = (torch.rand(3, 1, 8, 8) < 0.4).double()
    z = torch.randn(5, 3, 3, dtype=torch.float64)
    prior = vae.prior
    per_cluster = torch.stack([prior.component(torch.tensor(k)).log_prob(z) for k in range(4)], -1)
    log_pz = torch.logsumexp(per_cluster + torch.log_softmax(prior.logits, -1), -1)
    log_px_z = vae.likelihood(vae.decoder(z)).log_prob(x)
    torch.testing.assert_close(vae.log_joint(x, z), log_pz + log_px_z)
