"""CE's optimiser (sec. 4.1: "the Lookahead solver ... in combination with RAdam (implementation by
[59])"): `ranger` takes the steps of that implementation (Ranger 9.3.19, as the CE release copies it),
written out here from its update rule."""
from __future__ import annotations

import io
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


def test_ranger_resumed_from_its_state_dict_takes_the_uninterrupted_steps() -> None:
    """A run resumed part way between two Lookahead syncs (last.pt keeps the optimiser's state_dict)
    continues with its slow weights and its step count, not the fast weights it was rebuilt with."""
    torch.manual_seed(0)
    start = torch.randn(3, 4, dtype=torch.float64)
    grads = [torch.randn(3, 4, dtype=torch.float64) for _ in range(14)]

    def layer(weight: torch.Tensor) -> torch.nn.Linear:
        out = torch.nn.Linear(4, 3, bias=False).double()
        with torch.no_grad():
            out.weight.copy_(weight)
        return out

    def train(model: torch.nn.Linear, steps: list[torch.Tensor], state: dict | None = None) -> dict:
        opt, _ = build_optimizer(TrainCfg(optimizer='ranger', lr=0.1, weight_decay=1e-3), model)
        if state is not None:
            opt.load_state_dict(state)
        for g in steps:
            model.weight.grad = g.clone()
            opt.step()
        buffer = io.BytesIO()  # through a file, as last.pt
        torch.save(opt.state_dict(), buffer)
        return torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)

    whole, part = layer(start), layer(start)
    train(whole, grads)
    state = train(part, grads[:4])  # 4 steps: the slow weights are not the fast ones
    resumed = layer(part.weight.detach())
    train(resumed, grads[4:], state)
    torch.testing.assert_close(resumed.weight.detach(), whole.weight.detach(), rtol=1e-12, atol=1e-14)


def test_adam_decays_weights_as_an_l2_term_and_adamw_apart_from_the_gradient() -> None:
    """One step with a zero gradient: Adam's decay is a gradient wd * w, which its normalised step
    turns into lr * sign(w); AdamW's shrinks w by lr * wd."""
    for name in ('adam', 'adamw'):
        layer = torch.nn.Linear(4, 3).double()
        before = [p.detach().clone() for p in layer.parameters()]
        step, base = build_optimizer(TrainCfg(optimizer=name, lr=0.1, weight_decay=0.01), layer)
        assert step is base
        for p in layer.parameters():
            p.grad = torch.zeros_like(p)
        step.step()
        for p, w in zip(layer.parameters(), before):
            want = w - 0.1 * torch.sign(w) if name == 'adam' else w * (1 - 0.1 * 0.01)
            torch.testing.assert_close(p.detach(), want, rtol=0, atol=1e-5)  # Adam: eps
