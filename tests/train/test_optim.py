"""CE's optimiser (sec. 4.1: "the Lookahead solver ... in combination with RAdam (implementation by
[59])"): `ranger` takes the steps of that implementation (Ranger 9.3.19, as the CE release copies it),
written out here from its update rule."""
from __future__ import annotations

import math

import torch

from train.config import TrainCfg
from train.optim import build_optimizer


def _ranger_steps(w: torch.Tensor, grads: list[torch.Tensor], lr: float, wd: float) -> torch.Tensor:
    """Ranger 9.3.19 by hand: RAdam (beta1 0.95, beta2 0.999, eps 1e-5, rectified once the SMA
    length passes 5; weights decayed by wd x lr apart from the gradient), the slow weights pulled
    half way to the fast ones every 6 steps and the fast ones reset to them."""
    b1, b2, eps, k, alpha = 0.95, 0.999, 1e-5, 6, 0.5
    m, v, slow, w = torch.zeros_like(w), torch.zeros_like(w), w.clone(), w.clone()
    rho_inf = 2 / (1 - b2) - 1
    for t, g in enumerate(grads, 1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        rho = rho_inf - 2 * t * b2 ** t / (1 - b2 ** t)
        w = w - wd * lr * w
        if rho > 5:
            rect = math.sqrt((1 - b2 ** t) * (rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            w = w - lr * rect / (1 - b1 ** t) * m / (v.sqrt() + eps)
        else:
            w = w - lr / (1 - b1 ** t) * m
        if t % k == 0:
            slow = slow + alpha * (w - slow)
            w = slow.clone()
    return w


def test_ranger_takes_the_steps_of_the_implementation_ce_names() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3, bias=False).double()
    start = layer.weight.detach().clone()
    grads = [torch.randn(3, 4, dtype=torch.float64) * (1 + t % 3) for t in range(14)]  # past k=6 twice, rho > 5
    step, _ = build_optimizer(TrainCfg(optimizer='ranger', lr=0.1, weight_decay=1e-3), layer)
    for g in grads:
        layer.weight.grad = g.clone()
        step.step()
    torch.testing.assert_close(layer.weight.detach(), _ranger_steps(start, grads, 0.1, 1e-3), rtol=1e-10, atol=1e-12)


def test_ranger_keeps_weights_loaded_after_it_was_made() -> None:
    """--init-from loads the source's weights after the optimiser is built: Lookahead's first sync
    (step 6) pulls towards the weights of step 1, not the fresh initialisation."""
    layer = torch.nn.Linear(4, 3, bias=False).double()
    step, _ = build_optimizer(TrainCfg(optimizer='ranger', lr=1e-9, weight_decay=0.0), layer)
    with torch.no_grad():
        layer.weight.fill_(5.0)  # what init_weights does after build_state
    for _ in range(6):
        layer.weight.grad = torch.zeros_like(layer.weight)
        step.step()
    torch.testing.assert_close(layer.weight.detach(), torch.full((3, 4), 5.0, dtype=torch.float64))
