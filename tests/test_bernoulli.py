"""The Bernoulli log-likelihood of the image models: equal to torch's, values and gradients."""

import pytest
import torch

from pyro_genmodels.distributions.likelihoods import BernoulliLogits


def _reference(logits, value):
    return -torch.nn.functional.binary_cross_entropy_with_logits(
        logits.double(), value.double().expand_as(logits), reduction="none"
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_values_and_both_gradients_equal_torch(dtype):
    torch.manual_seed(0)
    logits = (torch.randn(3, 5, 1, 4, 4, dtype=dtype) * 30).requires_grad_()  # tails too
    value = (torch.rand(5, 1, 4, 4) < 0.4).to(dtype).requires_grad_()
    out = BernoulliLogits(logits=logits).log_prob(value)
    ref = _reference(logits, value)
    assert out.shape == ref.shape and out.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out.double(), ref, atol=tol * 30, rtol=tol)
    grad_out = torch.randn_like(out)
    g_logits, g_value = torch.autograd.grad(out, (logits, value), grad_out)
    # d/dl = value - sigmoid(l); d/dvalue = l, summed over the 3 broadcast rows
    torch.testing.assert_close(g_logits, grad_out * (value - torch.sigmoid(logits)))
    torch.testing.assert_close(g_value, (grad_out * logits).sum(0))


def test_one_logit_broadcast_to_a_batch_gets_the_summed_gradient():
    logits = torch.tensor([0.3, -2.0], requires_grad=True)
    value = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    out = BernoulliLogits(logits=logits).log_prob(value)
    torch.testing.assert_close(out.double(), _reference(logits.expand(3, 2), value))
    (grad,) = torch.autograd.grad(out.sum(), logits)
    torch.testing.assert_close(grad, (value - torch.sigmoid(logits)).sum(0))


def test_low_precision_logits_are_scored_in_float32():
    """Under autocast the logits come in bfloat16; the density of 784 pixels is summed in
    float32 (a bfloat16 sum would be off by about a nat)."""
    torch.manual_seed(1)
    logits = torch.randn(4, 784) * 3
    value = (torch.rand(4, 784) < 0.5).float()
    low = logits.bfloat16()
    out = BernoulliLogits(logits=low).log_prob(value)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.sum(-1).double(), _reference(low.float(), value).sum(-1))
