"""beta-TCVAE: the decomposition of the KL is exact, the loss with unit weights is the
negative ELBO, and the minibatch estimate of q(z) is exact on the whole data set and
unbiased over minibatches."""

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_genmodels.infer.tcvae import TCVAE_ELBO, aggregate_log_q

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


@pyro.settings.context(module_local_params=True)  # the VAE's parameters live in it
def test_beta_tcvae_lowers_its_loss_on_a_fixed_batch():
    import pyro_genmodels as pg
    from pyro_genmodels.data import load_dataset

    x = load_dataset("digits", "train", limit=64).fixed()
    torch.manual_seed(0)
    vae = pg.create_model("vae", image_shape=(1, 8, 8), latent_dim=4, hidden_dims=(32,))
    elbo = TCVAE_ELBO(dataset_size=1000, alpha=1.0, beta=6.0, gamma=1.0)

    def loss_at_seed():  # the same noise before and after
        pyro.set_rng_seed(123)
        with torch.no_grad():
            return elbo.loss(vae.model, vae.guide, x)

    before = loss_at_seed()
    optim = torch.optim.Adam(vae.parameters(), lr=3e-3)
    for _ in range(40):
        optim.zero_grad()
        elbo.differentiable_loss(vae.model, vae.guide, x).backward()
        optim.step()
    assert loss_at_seed() < 0.9 * before
