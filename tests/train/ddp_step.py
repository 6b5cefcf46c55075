"""One optimisation step of each model, in one process or as one rank of `torchrun` (issue 21):

    python -m torch.distributed.run --nproc-per-node 2 -m tests.train.ddp_step OUT.pt [NONFINITE]

Each rank trains on its share of the global batch through `train.distributed` (DistributedDataParallel,
the losses' gather); rank 0 saves every model's loss (averaged over the ranks) and weights after
the step to OUT.pt, for `test_distributed.py` to compare with one process at the whole batch. With
NONFINITE, the same ranks then take `ddp_nonfinite`'s step and write NONFINITE.<rank> (one torchrun
start, three processes' imports, serves both tests).
"""
from __future__ import annotations

import sys
from typing import Callable

import numpy as np
import torch
from torch import nn

from train.bench import synthetic_split
from train.data import TrainFeed
from train.distributed import SINGLE, Dist, average, barrier, convert_batch_norm, init_distributed, teardown, wrap_model
from train.losses import build_loss
from train.models import create_model
from train.models.config import ExpertSpec, ModelCfg, TextCfg, TransformerCfg, model_cfg
from train.step import TrainStep

BATCH = 8
_TEXT = dict(weights='random', tokenizer='words', vocab_size=60, hidden=16, layers=1, heads=2, ffn=32,
             max_positions=16, dropout=0.0)
_POOLED = (ExpertSpec('object', 12), ExpertSpec('audio', 6, 'vlad', clusters=2, max_tokens=4))
_TOKENS = (ExpertSpec('object', 12, 'tokens', max_tokens=5), ExpertSpec('audio', 6, 'tokens', max_tokens=4))
_SMALL = TransformerCfg(layers=1, heads=2, hidden=16, ffn=32, dropout=0.0, max_positions=8)

#: name -> (model config, loss)
CASES: dict[str, tuple[ModelCfg, str]] = {
    'mee': (model_cfg('mee', _POOLED, embed_dim=8, text_dim=10, text_clusters=2), 'max_margin'),
    'ce': (model_cfg('ce', _POOLED, embed_dim=8, text_dim=10, text_clusters=2, projection=True,
                     gating='collaborative'), 'max_margin'),
    'mmt': (model_cfg('mmt', _TOKENS, text=TextCfg(encoder='bert', **_TEXT), transformer=_SMALL), 'info_nce'),
    # the support-set configs' loss: summed over the global batch, which every rank gathers
    'ssb': (model_cfg('ssb', _TOKENS, text=TextCfg(encoder='t5', **_TEXT), transformer=_SMALL, max_seconds=4),
            'hard_negative_sum'),
    'ssb-local': (model_cfg('ssb', _TOKENS, text=TextCfg(encoder='t5', **_TEXT), transformer=_SMALL, max_seconds=4,
                            support_scope='local'), 'hard_negative'),
}


def one_step(name: str, ranks: Dist = SINGLE) -> tuple[float, dict[str, torch.Tensor]]:
    """The loss of the first step of an epoch at global batch `BATCH` (averaged over the ranks)
    and the weights after it: SGD, batch norm held in eval mode (CPU ranks cannot synchronise it)."""
    cfg, loss = CASES[name]
    torch.manual_seed(0)
    model = convert_batch_norm(create_model(cfg), ranks, torch.device('cpu')).train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    step = TrainStep(wrap_model(model, ranks, torch.device('cpu')), torch.optim.SGD(model.parameters(), lr=0.5),
                     build_loss(loss, 0.2, 0.1), 0.0, 'cpu', compile=False)
    data = synthetic_split(cfg, 2 * BATCH, 7)
    video, text = next(TrainFeed(data, torch.device('cpu'), 0, ranks.rank, ranks.world)
                       .epoch(BATCH, np.random.default_rng(0)))
    value = average(ranks, step(video, text).item())
    return value, {k: v.detach().clone() for k, v in model.state_dict().items()}


def launch(*works: Callable[[Dist], None]) -> int:
    """Join torchrun's process group, run each of `works` with this rank's `Dist` in turn, then leave
    together: a rank that destroys its gloo group while the other still works aborted once in CI
    ("terminate called without an active exception", exit -6) with the work done."""
    ranks, _ = init_distributed('cpu')
    try:
        for work in works:
            work(ranks)
        barrier(ranks)
    finally:
        teardown()
    return 0


def save_steps(out: str, ranks: Dist) -> None:
    """Every case's `one_step` on these ranks; rank 0 saves them to `out`."""
    results = {name: one_step(name, ranks) for name in CASES}
    if ranks.main:
        torch.save(results, out)


def main(out: str, nonfinite: str | None = None) -> int:
    works = [lambda ranks: save_steps(out, ranks)]
    if nonfinite is not None:
        from tests.train.ddp_nonfinite import nonfinite_step

        works.append(lambda ranks: nonfinite_step(nonfinite, ranks))
    return launch(*works)


if __name__ == '__main__':
    sys.exit(main(*sys.argv[1:3]))
