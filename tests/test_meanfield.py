"""MeanFieldELBO: Pyro's TraceMeanField_ELBO, the same loss and gradients, without scoring
the latents whose KL has a closed form."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_genmodels.infer.meanfield import MeanFieldELBO

X = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])


def program(prior: str = "normal", auxiliary: bool = False):
    """A tiny VAE: z (2-D) per image, Bernoulli pixels; the guide's parameters are params."""
    weight = torch.tensor([[0.5, -1.0, 0.3], [1.5, 0.2, -0.7]])

    def model(x):
        with pyro.plate("data", x.shape[0]):
            if prior == "normal":
                p = dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1)
            else:  # no closed-form KL(Normal || StudentT)
                p = dist.StudentT(3.0, torch.zeros(2), torch.ones(2)).to_event(1)
            z = pyro.sample("z", p)
            pyro.sample("x", dist.Bernoulli(logits=z @ weight).to_event(1), obs=x)

    def guide(x):
        a = pyro.param("a", torch.tensor([[0.2, -0.1], [0.4, 0.3], [-0.5, 0.1]]))
        s = pyro.param("s", torch.tensor([0.6, 0.9]), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            loc = x @ a
            if auxiliary:  # z pushed forward from an auxiliary draw, scored by its entropy
                u = pyro.sample("u", dist.Normal(loc, s).to_event(1),
                                infer={"is_auxiliary": True})  # fmt: skip
                pyro.sample("z", dist.Delta(u, event_dim=1))
            else:
                pyro.sample("z", dist.Normal(loc, s).to_event(1))

    return model, guide


def loss_and_grads(elbo, model, guide, seed=0):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    loss = elbo.differentiable_loss(model, guide, X)
    params = [pyro.param("a").unconstrained(), pyro.param("s").unconstrained()]
    return loss.detach(), torch.autograd.grad(loss, params)


@pytest.mark.parametrize("particles", [1, 3])
@pytest.mark.parametrize("prior", ["normal", "student-t"])
@pytest.mark.parametrize("validate", [False, True])
def test_the_loss_and_gradients_are_pyros(prior, particles, validate):
    model, guide = program(prior)
    kwargs = dict(num_particles=particles, vectorize_particles=particles > 1)
    with pyro.validation_enabled(validate):
        ours, our_grads = loss_and_grads(MeanFieldELBO(**kwargs), model, guide)
        pyros, pyro_grads = loss_and_grads(pyro.infer.TraceMeanField_ELBO(**kwargs), model, guide)
    torch.testing.assert_close(ours, pyros, rtol=1e-6, atol=1e-6)
    for a, b in zip(our_grads, pyro_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_an_auxiliary_guide_site_is_scored_as_pyro_scores_it():
    model, guide = program("normal", auxiliary=True)
    with pyro.validation_enabled(False):
        ours, our_grads = loss_and_grads(MeanFieldELBO(), model, guide)
        pyros, pyro_grads = loss_and_grads(pyro.infer.TraceMeanField_ELBO(), model, guide)
    torch.testing.assert_close(ours, pyros)
    for a, b in zip(our_grads, pyro_grads, strict=True):
        torch.testing.assert_close(a, b)


def test_the_analytic_kl_latent_is_not_scored():
    model, guide = program("normal")
    pyro.clear_param_store()
    with pyro.validation_enabled(False):  # as the trainer runs it (TrainConfig.validate)
        model_trace, guide_trace = MeanFieldELBO()._get_trace(model, guide, (X,), {})
    assert "log_prob" in model_trace.nodes["x"]
    assert "log_prob" not in model_trace.nodes["z"] and "log_prob" not in guide_trace.nodes["z"]
    with pyro.validation_enabled(True):  # Pyro's own path, its checks and all densities
        model_trace, _ = MeanFieldELBO()._get_trace(model, guide, (X,), {})
    assert "log_prob" in model_trace.nodes["z"]
