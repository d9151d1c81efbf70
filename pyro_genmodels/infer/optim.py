"""Adam on normalized gradients, the optimizer of Tomczak & Welling's VampPrior code.

Their ``AdamNormGrad`` (``utils/optimizer.py`` of github.com/jmtomczak/vae_vampprior)
divides each parameter tensor's gradient by its L2 norm (plus 1e-7) before the Adam
update. Adam is invariant to a constant rescaling of the gradient, but not to one that
changes from step to step: with normalized gradients, steps whose gradient is large (a
noisy minibatch) weigh no more in the moment estimates than quiet ones. Neither torch nor
Pyro has it (Pyro's ``ClippedAdam`` clips the norm instead of normalizing it), hence this
class: ``torch.optim.Adam`` with the normalization in front.
"""

from __future__ import annotations

import torch


class AdamNormGrad(torch.optim.Adam):
    """``torch.optim.Adam`` applied to ``g / (||g||_2 + eps_norm)``, per parameter tensor.

    :param eps_norm: added to each norm (1e-7 in the reference code).
    """

    def __init__(self, params, lr: float = 1e-3, eps_norm: float = 1e-7, **kwargs):
        super().__init__(params, lr=lr, **kwargs)
        self.eps_norm = float(eps_norm)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:  # Lightning passes the forward/backward as a closure
            with torch.enable_grad():
                loss = closure()
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if grads:
            norms = torch._foreach_norm(grads)
            torch._foreach_div_(grads, [n + self.eps_norm for n in norms])
        super().step()
        return loss
