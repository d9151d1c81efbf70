"""beta-TCVAE: the decomposition of the KL is exact, the loss with unit weights is the
negative ELBO, and the minibatch estimate of q(z) is exact on the whole data set and
unbiased over minibatches."""

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_genmodels.infer.disentangle import TCVAE_ELBO, aggregate_log_q

D = 3


def make_pair(seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(2, D, generator=g, dtype=torch.float64)

    def loc_scale(x):
        return x @ weight, 0.3 + torch.sigmoid(x @ weight.flip(1))

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(D, dtype=x.dtype), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z[:, :2], 0.5).to_event(1), obs=x)

    def guide(x):
        loc, scale = loc_scale(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    return model, guide, loc_scale


def test_the_three_terms_add_up_to_the_kl_and_unit_weights_give_the_elbo():
    model, guide, _ = make_pair()
    x = torch.randn(16, 2, dtype=torch.float64)
    elbo = TCVAE_ELBO(dataset_size=1000)
    pyro.set_rng_seed(0)
    t = elbo.decomposition(model, guide, x)
    total = t["mi"] + t["tc"] + t["dwkl"]
    assert torch.allclose(total, t["log_q"] - t["log_p"], atol=1e-12, rtol=0)
    pyro.set_rng_seed(1)
    ours = elbo.differentiable_loss(model, guide, x)
    pyro.set_rng_seed(1)
    pyros = pyro.infer.Trace_ELBO().differentiable_loss(model, guide, x)
    assert ours.item() == pytest.approx(pyros.item(), abs=1e-9)
    # other weights change the loss by exactly the weighted terms
    weighted = TCVAE_ELBO(1000, alpha=0.5, beta=6.0, gamma=2.0)
    pyro.set_rng_seed(1)
    t = weighted.decomposition(model, guide, x)
    pyro.set_rng_seed(1)
    expected = (0.5 * t["mi"] + 6.0 * t["tc"] + 2.0 * t["dwkl"] - t["log_lik"]).sum()
    assert weighted.differentiable_loss(model, guide, x).item() == pytest.approx(expected.item())


def test_on_the_whole_data_set_the_aggregate_posterior_is_exact():
    model, guide, loc_scale = make_pair(seed=2)
    x = torch.randn(7, 2, dtype=torch.float64)  # the whole data set: M = N = 7
    pyro.set_rng_seed(0)
    trace = pyro.poutine.trace(guide).get_trace(x)
    z = trace.nodes["z"]["value"]
    loc, scale = loc_scale(x)
    pair = dist.Normal(loc, scale).log_prob(z.unsqueeze(1))
    log_qz, log_marginals = aggregate_log_q(pair, 7)
    # q(z) = (1/M) sum_m N(z; loc_m, scale_m), and each marginal alike: closed forms
    mixture = dist.MixtureSameFamily(
        dist.Categorical(torch.full((7,), 1 / 7, dtype=torch.float64)),
        dist.Normal(loc, scale).to_event(1),
    )
    assert torch.allclose(log_qz, mixture.log_prob(z), atol=1e-12)
    marginal = sum(
        dist.MixtureSameFamily(dist.Categorical(torch.full((7,), 1 / 7, dtype=torch.float64)),
                               dist.Normal(loc[:, d], scale[:, d])).log_prob(z[:, d])
        for d in range(D)
    )  # fmt: skip
    assert torch.allclose(log_marginals, marginal, atol=1e-12)


def test_over_minibatches_the_estimate_of_q_z_is_unbiased():
    # a data set of M = 6 images, batches of N = 3 that contain image 0: averaging the
    # estimate of q(z_0) (not its log) over all of them gives the exact q(z_0)
    g = torch.Generator().manual_seed(3)
    loc = torch.randn(6, D, generator=g, dtype=torch.float64)
    scale = 0.5 + torch.rand(6, D, generator=g, dtype=torch.float64)
    z0 = torch.randn(D, generator=g, dtype=torch.float64)
    exact = torch.logsumexp(dist.Normal(loc, scale).log_prob(z0).sum(-1), 0) - math.log(6)
    estimates = []
    for others in itertools.combinations(range(1, 6), 2):
        batch = [0, *others]
        z = torch.stack([z0, *[torch.zeros(D, dtype=torch.float64)] * 2])  # only z_0 matters
        pair = dist.Normal(loc[batch], scale[batch]).log_prob(z.unsqueeze(1))
        estimates.append(aggregate_log_q(pair, 6)[0][0])
    mean = torch.logsumexp(torch.stack(estimates), 0) - math.log(len(estimates))
    assert mean.item() == pytest.approx(exact.item(), abs=1e-12)


def test_refusals():
    model, guide, _ = make_pair()
    x = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="a batch of 4 images from a data set of 3"):
        TCVAE_ELBO(3).loss(model, guide, x)
    with pytest.raises(ValueError, match="beta must be >= 0"):
        TCVAE_ELBO(10, beta=-1.0)

    def full_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(torch.zeros(x.shape[0], D, dtype=x.dtype),
                                                     torch.eye(D, dtype=x.dtype)))  # fmt: skip

    with pytest.raises(ValueError, match="needs a diagonal q"):
        TCVAE_ELBO(10).loss(model, full_guide, x)


def test_beta_tcvae_trains_through_the_command_line(tmp_path, capsys):
    import json

    from test_cli import run

    code, _, err = run(capsys, "train", "--model", "vae", "--dataset", "digits", "--limit", 256,
                       "--objective", "beta-tcvae", "--beta", 6, "--tc-gamma", 2, "--epochs", 1,
                       "--latent-dim", 4, "--hidden-dims", "32", "--no-progress",
                       "--out", tmp_path / "r")  # fmt: skip
    assert code == 0, err
    (row,) = [
        json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    ]
    assert row["objective"] == "beta-tcvae"
    code, _, err = run(capsys, "train", "--model", "vae", "--dataset", "digits", "--objective",
                       "beta-tcvae", "--num-particles", 2, "--out", tmp_path / "p")  # fmt: skip
    assert code != 0 and "beta-tcvae takes one particle" in err


@pytest.mark.parametrize("objective", ["beta-tcvae", "factor-vae", "dip-vae-i", "dip-vae-ii",
                                       "annealed"])  # fmt: skip
@pyro.settings.context(module_local_params=True)  # the VAE's parameters live in it
def test_each_objective_lowers_its_loss_on_a_fixed_batch(objective):
    import pyro_genmodels as pg
    from pyro_genmodels.data import load_dataset
    from pyro_genmodels.infer import TrainConfig, make_elbo
    from pyro_genmodels.infer.disentangle import Discriminator

    x = load_dataset("digits", "train", limit=64).fixed()
    torch.manual_seed(0)
    vae = pg.create_model("vae", image_shape=(1, 8, 8), latent_dim=4, hidden_dims=(32,))
    config = TrainConfig(objective=objective, capacity=5.0, capacity_gamma=10.0,
                         factor_gamma=5.0)  # fmt: skip
    elbo = make_elbo(objective, dataset_size=1000, config=config)
    params = list(vae.parameters())
    if objective == "beta-tcvae":
        elbo.beta = 6.0
    if objective == "annealed":
        elbo.capacity = 5.0
    if objective == "factor-vae":
        elbo.discriminator = Discriminator(4, hidden=32, layers=2)
        params += list(elbo.discriminator.parameters())

    def loss_at_seed():  # the same noise before and after
        pyro.set_rng_seed(123)
        with torch.no_grad():
            return elbo.loss(vae.model, vae.guide, x)

    before = loss_at_seed()
    optim = torch.optim.Adam(params, lr=3e-3)
    for _ in range(40):
        optim.zero_grad()
        elbo.differentiable_loss(vae.model, vae.guide, x).backward()
        optim.step()
    assert loss_at_seed() < 0.9 * before


def test_the_dip_penalty_against_a_hand_computation():
    from pyro_genmodels.infer.disentangle import dip_penalty

    mean = torch.tensor([[1.0, 0.0], [3.0, 2.0], [2.0, 4.0]], dtype=torch.float64)
    posterior_cov = torch.diag_embed(torch.tensor([[0.5, 1.0], [1.5, 1.0], [1.0, 1.0]],
                                                  dtype=torch.float64))  # fmt: skip
    # covariance of the means over the 3 images (dividing by N): centred rows
    # (-1, -2), (1, 0), (0, 2) -> [[2/3, 2/3], [2/3, 8/3]]
    i = dip_penalty(mean, posterior_cov, "i", lambda_od=10.0, lambda_d=100.0)
    expected_i = 10.0 * 2 * (2 / 3) ** 2 + 100.0 * ((2 / 3 - 1) ** 2 + (8 / 3 - 1) ** 2)
    assert i.item() == pytest.approx(expected_i)
    # II adds the mean posterior covariance, diag(1, 1): [[5/3, 2/3], [2/3, 11/3]]
    ii = dip_penalty(mean, posterior_cov, "ii", lambda_od=10.0, lambda_d=10.0)
    expected_ii = 10.0 * 2 * (2 / 3) ** 2 + 10.0 * ((5 / 3 - 1) ** 2 + (11 / 3 - 1) ** 2)
    assert ii.item() == pytest.approx(expected_ii)


def test_dip_vae_loss_is_the_negative_elbo_plus_n_times_the_penalty():
    from pyro_genmodels.infer.disentangle import DIPVAE_ELBO, dip_penalty

    model, guide, loc_scale = make_pair(seed=4)
    x = torch.randn(10, 2, dtype=torch.float64)
    loc, scale = loc_scale(x)
    for variant in ("i", "ii"):
        elbo = DIPVAE_ELBO(variant, lambda_od=3.0)
        assert elbo.lambda_d == (30.0 if variant == "i" else 3.0)  # disentanglement_lib's
        pyro.set_rng_seed(0)
        ours = elbo.differentiable_loss(model, guide, x)
        pyro.set_rng_seed(0)
        plain = pyro.infer.Trace_ELBO().differentiable_loss(model, guide, x)
        penalty = dip_penalty(loc, torch.diag_embed(scale**2), variant, 3.0, elbo.lambda_d)
        assert ours.item() == pytest.approx((plain + 10 * penalty).item())
        pyro.set_rng_seed(0)
        assert elbo.loss(model, guide, x) == pytest.approx(ours.item())  # loss says the same


def test_the_capacity_schedule_and_the_annealed_loss():
    from pyro_genmodels.infer.disentangle import AnnealedELBO, capacity_at

    assert [capacity_at(25.0, 4, s) for s in range(6)] == [6.25, 12.5, 18.75, 25.0, 25.0, 25.0]
    assert capacity_at(25.0, 0, 0) == 25.0
    model, guide, loc_scale = make_pair(seed=5)
    x = torch.randn(8, 2, dtype=torch.float64)
    loc, scale = loc_scale(x)
    kl = torch.distributions.kl_divergence(
        dist.Normal(loc, scale).to_event(1), dist.Normal(torch.zeros(D, dtype=x.dtype), 1.0)
        .expand([8, D]).to_event(1)).mean()  # fmt: skip
    elbo = AnnealedELBO(gamma=100.0, capacity=2.0)
    pyro.set_rng_seed(0)
    ours = elbo.differentiable_loss(model, guide, x)
    pyro.set_rng_seed(0)
    trace = pyro.poutine.trace(guide).get_trace(x)
    z = trace.nodes["z"]["value"]
    log_lik = dist.Normal(z[:, :2], 0.5).to_event(1).log_prob(x).sum()
    assert ours.item() == pytest.approx((-log_lik + 100.0 * 8 * (kl - 2.0).abs()).item())


@pytest.mark.parametrize("objective", ["dip-vae-i", "dip-vae-ii", "annealed", "factor-vae"])
def test_each_objective_trains_through_the_command_line(objective, tmp_path, capsys):
    import json

    from test_cli import run

    code, _, err = run(capsys, "train", "--model", "vae", "--dataset", "digits", "--limit", 256,
                       "--objective", objective, "--epochs", 1, "--latent-dim", 4,
                       "--hidden-dims", "32", "--no-progress", "--out", tmp_path / "r")  # fmt: skip
    assert code == 0, err
    (row,) = [
        json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    ]
    assert row["objective"] == objective


def test_the_annealed_objective_refuses_beta_and_annealing():
    from pyro_genmodels.infer import TrainConfig

    with pytest.raises(ValueError, match="has its own schedule"):
        TrainConfig(objective="annealed", beta=4.0)
    with pytest.raises(ValueError, match="dip_lambda_od must be >= 0"):
        TrainConfig(objective="dip-vae-i", dip_lambda_od=-1.0)


def test_permuting_dimensions_keeps_each_marginal_and_breaks_the_joint():
    from pyro_genmodels.infer.disentangle import permute_dims

    g = torch.Generator().manual_seed(0)
    a = torch.randn(2000, generator=g)
    z = torch.stack([a, a, -a], 1)  # perfectly dependent columns
    p = permute_dims(z, torch.Generator().manual_seed(1))
    for d in range(3):  # each column is a reordering of itself
        assert torch.equal(p[:, d].sort().values, z[:, d].sort().values)
    corr = torch.corrcoef(p.T)
    assert corr[0, 1].abs() < 0.1 and corr[0, 2].abs() < 0.1


def test_factor_vae_gradients_are_each_losss_own():
    from pyro_genmodels.infer.disentangle import Discriminator, FactorVAE_ELBO, permute_dims

    model, guide, _ = make_pair(seed=6)
    torch.manual_seed(0)
    disc = Discriminator(D, hidden=16, layers=2).double()
    disc_params = list(disc.parameters())
    x = torch.randn(12, 2, dtype=torch.float64)
    elbo = FactorVAE_ELBO(gamma=7.0, discriminator=disc)
    pyro.set_rng_seed(0)
    loss = elbo.differentiable_loss(model, guide, x)
    got = torch.autograd.grad(loss, disc_params)
    # the same draws: z from the guide, then the permutation (the model draws nothing)
    pyro.set_rng_seed(0)
    z = pyro.poutine.trace(guide).get_trace(x).nodes["z"]["value"].detach()
    fake = permute_dims(z)
    labels = torch.cat([torch.zeros(12), torch.ones(12)]).long()
    ce = 12 * torch.nn.functional.cross_entropy(disc(torch.cat([z, fake])), labels)
    # the discriminator's gradient is its cross-entropy's alone (no TC term reaches it)
    for g, want in zip(got, torch.autograd.grad(ce, disc_params), strict=True):
        assert torch.allclose(g, want, atol=1e-10)
    # the value: the negative ELBO plus gamma times the TC estimate, nothing of the CE
    pyro.set_rng_seed(0)
    plain = pyro.infer.Trace_ELBO().differentiable_loss(model, guide, x)
    logits = disc(z)
    tc = (logits[:, 0] - logits[:, 1]).sum()
    assert loss.item() == pytest.approx((plain + 7.0 * tc).item())
    assert elbo.last_discriminator_loss.item() == pytest.approx(ce.item() / 12)


def test_factor_vae_keeps_its_discriminator_in_the_checkpoint(tmp_path, capsys):
    from test_cli import run

    from pyro_genmodels.infer import load_checkpoint

    argv = ["train", "--model", "vae", "--dataset", "digits", "--limit", 128, "--objective",
            "factor-vae", "--factor-hidden", 16, "--latent-dim", 4, "--hidden-dims", "16",
            "--no-progress", "--out", tmp_path / "r"]  # fmt: skip
    assert run(capsys, *argv, "--epochs", 1)[0] == 0
    first = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)["state_dict"]
    assert first["discriminator.net.0.weight"].shape == (16, 4)
    assert run(capsys, "train", "--resume", "--out", tmp_path / "r", "--epochs", 2,
               "--no-progress")[0] == 0  # fmt: skip
    second = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)["state_dict"]
    assert not torch.equal(
        first["discriminator.net.0.weight"], second["discriminator.net.0.weight"]
    )  # trained on, from the first
    assert load_checkpoint(tmp_path / "r" / "checkpoint.pt")["epoch"] == 2
    code, _, err = run(capsys, *argv[:-2], "--optimizer", "clipped-adam", "--out", tmp_path / "c")
    assert code != 0 and "use --optimizer adam" in err
