"""Ordinary Pyro programs with exact log p(x), shared by the tests of issue 19's cases."""

import math

import pyro
import pyro.distributions as dist
import torch

F64 = torch.float64


def normal_normal(x):
    """z ~ N(0, 1), x ~ N(z, 1): log p(x) = log N(x; 0, 2)."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def normal_normal_exact(x):
    return dist.Normal(0.0, math.sqrt(2.0)).log_prob(x)


def normal_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x / 2, math.sqrt(0.5)))  # the exact posterior


class GammaPoisson:
    """z ~ Gamma(a, b) (rate b), x | z ~ Poisson(z), one count per example: negative binomial."""

    def __init__(self, a=2.0, b=0.5):
        self.a, self.b = a, b

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Gamma(x.new_tensor(self.a), x.new_tensor(self.b)))
            pyro.sample("x", dist.Poisson(z), obs=x)

    def exact(self, x):
        a, b = self.a, self.b
        x = x.double()
        return (
            torch.lgamma(a + x)
            - math.lgamma(a)
            - torch.lgamma(x + 1)
            + a * math.log(b / (b + 1))
            - x * math.log(b + 1)
        )


class LogNormalPoisson:
    """z ~ LogNormal(m, s), x | z ~ Poisson(z): log p(x) by quadrature over log z."""

    def __init__(self, m=0.0, s=1.0):
        self.m, self.s = m, s

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.LogNormal(x.new_tensor(self.m), x.new_tensor(self.s)))
            pyro.sample("x", dist.Poisson(z), obs=x)

    def exact(self, x, points=200001):
        w = torch.linspace(self.m - 12 * self.s, self.m + 12 * self.s, points, dtype=F64)
        log_prior = dist.Normal(self.m, self.s).log_prob(w)  # density of w = log z
        log_like = dist.Poisson(w.exp()[:, None]).log_prob(x.double()[None, :])
        return torch.logsumexp(log_prior[:, None] + log_like, 0) + math.log(w[1] - w[0])


class MaskedGammaChain:
    """Per example, a chain of m Gamma rates, each with a Poisson count; positions past the
    example's length are masked (as padding is): log p(x) is the sum of the negative binomial
    terms of the unmasked positions."""

    def __init__(self, lengths, m=4, a=3.0, b=1.0):
        self.lengths, self.m, self.gp = torch.as_tensor(lengths), m, GammaPoisson(a, b)

    def mask(self, x):
        return torch.arange(self.m, device=x.device) < self.lengths.to(x.device)[:, None]

    def model(self, x):  # x (N, m)
        with pyro.plate("data", x.shape[0], dim=-2), pyro.plate("steps", self.m, dim=-1):
            with pyro.poutine.mask(mask=self.mask(x)):
                z = pyro.sample("z", dist.Gamma(x.new_tensor(self.gp.a), x.new_tensor(self.gp.b)))
                pyro.sample("x", dist.Poisson(z), obs=x)

    def exact(self, x):
        return torch.where(self.mask(x), self.gp.exact(x), 0.0).sum(-1)


class LKJNormal:
    """L ~ LKJCholesky(2, eta), x_j ~ N(0, L L^T) for m points per example: log p(x) by
    quadrature over the one correlation rho (L = [[1, 0], [rho, sqrt(1 - rho^2)]])."""

    def __init__(self, eta=2.0, m=6):
        self.eta, self.m = eta, m

    def model(self, x):  # x (N, m, 2)
        with pyro.plate("data", x.shape[0]):
            L = pyro.sample("L", dist.LKJCholesky(2, x.new_tensor(self.eta)))  # (..., N, 2, 2)
            mvn = dist.MultivariateNormal(x.new_zeros(2), scale_tril=L.unsqueeze(-3))
            pyro.sample("x", mvn.to_event(1), obs=x)

    @staticmethod
    def cholesky(rho):
        L = torch.zeros(*rho.shape, 2, 2, dtype=rho.dtype)
        L[..., 0, 0], L[..., 1, 0], L[..., 1, 1] = 1.0, rho, (1 - rho**2).sqrt()
        return L

    def exact(self, x, points=40001):
        rho = torch.linspace(-1, 1, points, dtype=F64)[1:-1]
        L = self.cholesky(rho)
        log_prior = dist.LKJCholesky(2, torch.tensor(self.eta, dtype=F64)).log_prob(L)
        mvn = dist.MultivariateNormal(torch.zeros(2, dtype=F64), scale_tril=L[:, None, None])
        log_like = mvn.log_prob(x.double()[None]).sum(-1)  # (points, N)
        return torch.logsumexp(log_prior[:, None] + log_like, 0) + math.log(rho[1] - rho[0])


class DirichletCategorical:
    """p ~ Dirichlet(alpha), m categorical draws per example: the Dirichlet-multinomial of
    the sequence."""

    def __init__(self, alpha=(1.5, 0.7, 2.0)):
        self.alpha = torch.tensor(alpha, dtype=F64)

    def model(self, x):  # x (N, m) class labels as floats
        with pyro.plate("data", x.shape[0]):
            p = pyro.sample("p", dist.Dirichlet(self.alpha.to(x.dtype)))
            pyro.sample("x", dist.Categorical(p.unsqueeze(-2)).to_event(1), obs=x)

    def exact(self, x):
        counts = torch.stack([(x == k).sum(-1) for k in range(len(self.alpha))], -1).double()
        a = self.alpha
        return (
            torch.lgamma(a.sum())
            - torch.lgamma(a.sum() + counts.sum(-1))
            + (torch.lgamma(a + counts) - torch.lgamma(a)).sum(-1)
        )
