"""Optimisers: Adam, AdamW, and CE's Ranger (RAdam + Lookahead)."""
from __future__ import annotations

from typing import Any

import torch

from train.config import TrainCfg

__all__ = ['Lookahead', 'build_optimizer']


class Lookahead:
    """Lookahead (Zhang et al. 2019) around an optimiser: every k steps the slow weights move
    alpha of the way to the fast ones, and the fast weights restart from there."""

    def __init__(self, base: torch.optim.Optimizer, k: int = 6, alpha: float = 0.5) -> None:
        self.base, self.k, self.alpha, self.steps = base, k, alpha, 0
        self.slow = [p.detach().clone() for g in base.param_groups for p in g['params']]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.base.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        if self.steps == 0:  # the weights the run starts from: loaded after this was made (--init-from), as Ranger
            for p, slow in zip((p for g in self.base.param_groups for p in g['params']), self.slow):
                slow.copy_(p)
        self.base.step()
        self.steps += 1
        if self.steps % self.k == 0:
            for p, slow in zip((p for g in self.base.param_groups for p in g['params']), self.slow):
                slow.add_(p - slow, alpha=self.alpha)
                p.copy_(slow)

    def state_dict(self) -> dict[str, Any]:
        return {'base': self.base.state_dict(), 'slow': self.slow, 'steps': self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state['base'])
        self.steps = state['steps']
        for s, v in zip(self.slow, state['slow']):
            s.copy_(v)


def build_optimizer(cfg: TrainCfg, model: torch.nn.Module) -> tuple[Any, torch.optim.Optimizer]:
    """(the optimiser a step calls, the torch optimiser under it that schedulers drive)."""
    params = [p for p in model.parameters() if p.requires_grad]
    # on CUDA, Adam's fused kernels: a handful of launches for all parameters (RAdam has none)
    fused = {'fused': True} if params and params[0].device.type == 'cuda' else {}
    if cfg.optimizer == 'adam':
        base = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    elif cfg.optimizer == 'adamw':
        base = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    elif cfg.optimizer == 'ranger':
        # CE sec. 4.1 names Ranger's implementation ("implementation by [59]", Ranger 9.3.19, the copy in
        # the CE release): its RAdam has beta1 0.95 and eps 1e-5, and decays weights apart from the
        # gradient (p -= wd * lr * p, as AdamW), not as an L2 term that the adaptive step rescales
        base = torch.optim.RAdam(params, lr=cfg.lr, betas=(0.95, 0.999), eps=1e-5, weight_decay=cfg.weight_decay,
                                 decoupled_weight_decay=True)
        return Lookahead(base, k=6, alpha=0.5), base
    else:
        raise ValueError(f'unknown optimizer {cfg.optimizer!r} (adam, adamw, ranger)')
    return base, base
