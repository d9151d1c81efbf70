"""A user's own Pyro model built from AutoregressiveImage, the likelihoods and the pixel
networks (no create_model): exact values by brute force, and every wiring mistake refused."""

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_genmodels.distributions import (
    AutoregressiveImage,
    BernoulliLikelihood,
    LogisticMixtureLikelihood,
)
from pyro_genmodels.infer import ais_estimate, log_marginal
from pyro_genmodels.nn import GatedPixelCNNNet, PixelCNNNet

F64 = torch.float64
SHAPE = (1, 3, 3)


def _all_binary_images():
    grid = torch.tensor(list(itertools.product([0.0, 1.0], repeat=9)), dtype=F64)
    return grid.reshape(-1, *SHAPE)  # all 512 binary 3x3 images


class ClassMixture(torch.nn.Module):
    """y ~ Cat(pi) summed out by enumeration, x | y ~ a conditional Gated PixelCNN."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.pi = torch.tensor([0.2, 0.5, 0.3], dtype=F64)
        self.k = num_classes
        self.net = GatedPixelCNNNet(1, 1, 8, 2, context_dim=num_classes).double()
        self.likelihood = BernoulliLikelihood(SHAPE)

    def conditional(self, y):
        one_hot = torch.nn.functional.one_hot(y, self.k).to(F64)
        return AutoregressiveImage(self.net, self.likelihood, SHAPE, context=one_hot)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(self.pi), infer={"enumerate": "parallel"})
            pyro.sample("x", self.conditional(y), obs=x)

    def exact(self, x):
        per_class = torch.stack(
            [self.conditional(torch.full((len(x),), c)).log_prob(x) for c in range(self.k)], -1
        )
        return torch.logsumexp(self.pi.log() + per_class, -1)


def test_a_hand_built_class_mixture_is_exact_by_iw_and_ais_and_normalized():
    torch.manual_seed(0)
    m = ClassMixture()
    with torch.no_grad():
        for p in m.net.parameters():
            p.normal_(0, 0.5)
    x = _all_binary_images()
    exact = m.exact(x)
    assert torch.logsumexp(exact, 0).exp().item() == pytest.approx(1.0, abs=1e-10)
    torch.testing.assert_close(log_marginal(m.model, None, x[:40], 3), exact[:40])
    est = ais_estimate(m.model, None, x[:40], 10, 2)  # its only latent is summed out
    torch.testing.assert_close(est.log_marginal, exact[:40])
    assert est.has_latent and torch.isnan(est.acceptance_rate).all()


def test_integer_and_boolean_images_under_the_bernoulli_likelihood():
    net = PixelCNNNet(1, 1, 4, 1).double()
    image = AutoregressiveImage(net, BernoulliLikelihood(SHAPE), SHAPE)
    x = _all_binary_images()[:20]
    expected = image.log_prob(x)
    torch.testing.assert_close(image.log_prob(x.long()), expected)
    torch.testing.assert_close(image.log_prob(x.bool()), expected)


def test_a_net_with_the_wrong_output_channels_is_refused():
    with pytest.raises(ValueError, match="outputs 3 channels but the bernoulli likelihood .* 1"):
        AutoregressiveImage(PixelCNNNet(1, 3, 4, 1), BernoulliLikelihood(SHAPE), SHAPE)

    class Undeclared(torch.nn.Module):  # a user's net that declares nothing
        def __init__(self):
            super().__init__()
            self.inner = PixelCNNNet(1, 3, 4, 1)

        def forward(self, x, context=None, context_map=None):
            return self.inner(x)

    image = AutoregressiveImage(Undeclared(), BernoulliLikelihood(SHAPE), SHAPE)
    with pytest.raises(ValueError, match=r"returned \(2, 3, 3, 3\).* needs 1 channels"):
        image.log_prob(torch.zeros(2, *SHAPE))
    with pytest.raises(ValueError, match="needs 1 channels"):
        image.sample((2,), cached=False)


def test_channel_aware_masks_under_a_joint_likelihood_are_refused():
    rgb = (3, 2, 2)
    likelihood = LogisticMixtureLikelihood(rgb, num_mixtures=3)  # 30 channels, joint
    net = GatedPixelCNNNet(3, likelihood.param_channels, 6, 1, groups=3)
    with pytest.raises(ValueError, match="groups=3 but the logistic-mixture .* needs groups=1"):
        AutoregressiveImage(net, likelihood, rgb)
    ok = GatedPixelCNNNet(3, likelihood.param_channels, 6, 1, groups=1)
    AutoregressiveImage(ok, likelihood, rgb)


def test_context_mistakes_are_refused():
    likelihood = BernoulliLikelihood(SHAPE)
    net = GatedPixelCNNNet(1, 1, 4, 1, context_dim=3)
    with pytest.raises(ValueError, match="built for a context of size 3 .* none was given"):
        AutoregressiveImage(net, likelihood, SHAPE)
    with pytest.raises(ValueError, match="expects a context with 3 channels .* got shape"):
        AutoregressiveImage(net, likelihood, SHAPE, context=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="context contains NaN"):
        AutoregressiveImage(net, likelihood, SHAPE, context=torch.full((2, 3), math.nan))
    with pytest.raises(ValueError, match="built without a context"):
        AutoregressiveImage(PixelCNNNet(1, 1, 4, 1), likelihood, SHAPE, context=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="reads 3 input channels but the images have 1"):
        AutoregressiveImage(GatedPixelCNNNet(3, 1, 6, 1, groups=1), likelihood, SHAPE)
