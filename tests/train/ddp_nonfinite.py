"""One step of MEE as one rank of `torchrun`, whose loss on rank 1 alone has a term with a NaN
gradient though its value is finite (`Anchored`):

    python -m torch.distributed.run --nproc-per-node 2 -m tests.train.ddp_nonfinite OUT

Each rank writes OUT.<rank>: where `train_epoch` stopped it (`NonFiniteLoss.where()`), or
'finished', for `test_distributed.py` to check that the ranks agree. `tests.train.ddp_step` runs
`nonfinite_step` after its own steps in the same launch; this module's `__main__` runs it alone.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from train.bench import synthetic_split
from train.data import TrainFeed
from tests.train.ddp_step import launch
from train.distributed import Dist, wrap_model
from train.loop import NonFiniteLoss, train_epoch
from train.losses import build_loss
from train.models import create_model
from train.models.config import ExpertSpec, model_cfg
from train.step import TrainStep

CFG = model_cfg('mee', (ExpertSpec('object', 12),), embed_dim=8, text_dim=10, text_clusters=2)


class Anchored(nn.Module):
    """The max-margin loss plus the distance of the weights from where they started (an L2-SP
    style penalty): 0 at the start, where its gradient is inf * 0, NaN, though the loss is finite."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.loss = build_loss('max_margin', 0.1, 0.05)
        self.start = [p.detach().clone() for p in model.parameters()]

    def forward(self, module: nn.Module, out: object) -> torch.Tensor:
        far = torch.cat([(p - s).flatten() for p, s in zip(module.parameters(), self.start)])
        return self.loss(module, out) + 1e-3 * far.square().sum().sqrt()  # sqrt's slope at 0: inf, times 0


def nonfinite_step(out: str, ranks: Dist) -> None:
    """One epoch of one batch of MEE, rank 1 with the `Anchored` loss; each rank writes `out`.<rank>."""
    torch.manual_seed(0)
    model = create_model(CFG).train()
    loss = Anchored(model) if ranks.rank == 1 else build_loss('max_margin', 0.1, 0.05)
    step = TrainStep(wrap_model(model, ranks, torch.device('cpu')), torch.optim.Adam(model.parameters(), lr=1e-3),
                     loss, 0.0, 'cpu', compile=False)
    batches = TrainFeed(synthetic_split(CFG, 16, 7), torch.device('cpu'), 0, ranks.rank, ranks.world)
    try:
        train_epoch(step, [next(batches.epoch(8, np.random.default_rng(0)))], 1)
        outcome = 'finished'
    except NonFiniteLoss as err:
        outcome = err.where()
    Path(f'{out}.{ranks.rank}').write_text(outcome)


if __name__ == '__main__':
    sys.exit(launch(lambda ranks: nonfinite_step(sys.argv[1], ranks)))
