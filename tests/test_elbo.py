"""The training ELBOs that stay on the device: Pyro's loss and gradients, and no read of a
tensor back to the host at any training step."""

import collections

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_genmodels as pg
from pyro_genmodels.infer import TrainConfig, fit
from pyro_genmodels.infer.elbo import TraceELBO, TraceEnumELBO

X = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])


def program(kind: str):
    """A latent z per image, and with ``kind`` ``score-function`` a Bernoulli switch s that
    the guide samples, or with ``enumerated`` one the model sums out."""
    weight = torch.tensor([[0.5, -1.0, 0.3], [1.5, 0.2, -0.7]])

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1))
            logits = z @ weight
            if kind != "reparameterized":
                infer = {"enumerate": "parallel"} if kind == "enumerated" else {}
                s = pyro.sample("s", dist.Bernoulli(0.3), infer=infer)
                logits = logits + 2.0 * s.unsqueeze(-1)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(x):
        a = pyro.param("a", torch.tensor([[0.2, -0.1], [0.4, 0.3], [-0.5, 0.1]]))
        scale = pyro.param("scale", torch.tensor([0.6, 0.9]), constraint=dist.constraints.positive)
        b = pyro.param("b", torch.tensor([0.3, -0.2, 0.1]))  # the switch's (score-function)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ a, scale).to_event(1))
            if kind == "score-function":
                pyro.sample("s", dist.Bernoulli(logits=x @ b))

    return model, guide


def loss_and_grads(elbo, model, guide):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    loss = elbo.differentiable_loss(model, guide, X)
    params = [pyro.param(n).unconstrained() for n in ("a", "scale", "b")]
    return loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)  # b: unused w/o s


@pytest.mark.parametrize("kind", ["reparameterized", "score-function", "enumerated"])
@pytest.mark.parametrize("particles", [1, 3])
@pytest.mark.parametrize("validate", [False, True])
def test_the_loss_and_gradients_are_pyros(kind, particles, validate):
    model, guide = program(kind)
    kwargs = dict(num_particles=particles, vectorize_particles=particles > 1, max_plate_nesting=1)
    ours, pyros = (
        (TraceEnumELBO, pyro.infer.TraceEnum_ELBO)
        if kind == "enumerated"
        else (TraceELBO, pyro.infer.Trace_ELBO)
    )
    with pyro.validation_enabled(validate):
        loss, grads = loss_and_grads(ours(**kwargs), model, guide)
        expected, expected_grads = loss_and_grads(pyros(**kwargs), model, guide)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    for a, b in zip(grads, expected_grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["reparameterized", "score-function"])
def test_svi_steps_as_with_pyros_class(kind):
    """``loss_and_grads`` (what ``pyro.infer.SVI`` calls) returns a float and leaves the
    gradients that Pyro's ``Trace_ELBO`` leaves."""
    model, guide = program(kind)
    results = []
    for elbo in (TraceELBO(max_plate_nesting=1), pyro.infer.Trace_ELBO(max_plate_nesting=1)):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        with pyro.validation_enabled(False):
            loss = elbo.loss_and_grads(model, guide, X)
        grads = [pyro.param(n).unconstrained().grad for n in ("a", "scale", "b")]
        results.append((loss, grads))
    (loss, grads), (expected, expected_grads) = results
    assert isinstance(loss, float) and loss == pytest.approx(expected, rel=1e-6)
    for a, b in zip(grads, expected_grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def _host_reads(monkeypatch, name: str, objective: str, images: int) -> collections.Counter:
    """Reads of a tensor's value by Python (``item``, ``bool``, ``float``, ``int``,
    ``tolist``) while one epoch of batches of 8 trains a small model ``name``."""
    reads = collections.Counter()

    def counted(method):
        original = getattr(torch.Tensor, method)

        def read(self, *args, **kwargs):
            reads[method] += 1
            return original(self, *args, **kwargs)

        return read

    torch.manual_seed(0)
    vae, pixels = {"latent_dim": 2, "hidden_dims": (8,)}, {"hidden_channels": 4, "num_layers": 2}
    sizes = {"vae": vae, "gated-pixelcnn": pixels, "pixelvae": vae | pixels}[name]
    model = pg.create_model(name, image_shape=(1, 4, 4), **sizes)
    x = torch.bernoulli(torch.full((images, 1, 4, 4), 0.4))
    floor = {"free_bits": 0.5} if objective == "free-bits" else {}
    config = TrainConfig(epochs=1, batch_size=8, progress=False, objective=objective, **floor)
    with monkeypatch.context() as patch:
        for method in ("item", "__bool__", "__float__", "__int__", "tolist"):
            patch.setattr(torch.Tensor, method, counted(method))
        fit(model, x, x[:8], config)
    return reads


@pytest.mark.parametrize(
    "name, objective",
    [("vae", o) for o in ("elbo", "meanfield", "iwae", "free-bits", "beta-tcvae", "dip-vae-i",
                          "annealed", "factor-vae")]
    + [("gated-pixelcnn", "auto"), ("pixelvae", "auto")],
)  # fmt: skip
def test_a_training_step_reads_nothing_back_to_the_host(monkeypatch, name, objective):
    """An epoch of 30 steps reads as often as one of 2 (the reads are per epoch: the data
    checks, the metrics row, the finite-loss check at the epoch's last step). Pyro's own
    classes read 2-4 times per step; ``enum`` still reads in Pyro's sum over the enumerated
    values (whether a probability is zero), 3 times per step."""
    few = _host_reads(monkeypatch, name, objective, 16)
    many = _host_reads(monkeypatch, name, objective, 240)
    assert many == few and sum(few.values()) > 0
