"""Training never reports NaN as results: settings that make the loss non-finite are refused up
front, a loss that becomes non-finite stops the run naming the epoch and step, and a repeated seed
is refused (it gave a "± 0.0")."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from train.loop import NonFiniteLoss, train_epoch
from train.main import main

from tests.train.conftest import tiny_args
from tests.train.ddp_nonfinite import CFG, Anchored


def _one_line_error(capsys: pytest.CaptureFixture, *words: str) -> str:
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith('error: ') and err.count('\n') == 1 and 'Traceback' not in err, err
    assert 'R@1' not in captured.out and '±' not in captured.out
    for w in words:
        assert w in err, err
    return err


@pytest.mark.parametrize('setting', ['train.margin=nan', 'train.lr=nan', 'train.lr=inf', 'train.temperature=nan',
                                     'train.weight_decay=inf'])
def test_a_setting_that_makes_the_loss_non_finite_is_refused_up_front(
        setting: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(['--model', 'mee', '--dataset', 'demo', '--data-root', str(tmp_path / 'none'),
                 '--features-root', str(tmp_path / 'none'), '--run-dir', str(tmp_path / 'run'), '--set', setting])
    assert code == 1
    _one_line_error(capsys, setting.split('=')[0], 'finite')
    assert not (tmp_path / 'run').exists()  # refused before anything is made


def test_repeated_seeds_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(['--model', 'mee', '--dataset', 'demo', '--data-root', str(tmp_path / 'none'),
                 '--features-root', str(tmp_path / 'none'), '--run-dir', str(tmp_path / 'run'), '--seeds', '0,0'])
    assert code == 1
    _one_line_error(capsys, '--seeds 0,0', 'seed 0')


class _Step:
    """A training step whose losses are given (device tensors, as TrainStep's), counting the calls."""

    def __init__(self, losses: list[float]) -> None:
        self.losses, self.calls = losses, 0

    def __call__(self, video: object, text: object) -> torch.Tensor:
        self.calls += 1
        return torch.tensor(self.losses[self.calls - 1])


@pytest.mark.parametrize('log', [True, False])
def test_a_non_finite_loss_stops_the_epoch_at_the_next_read_naming_the_steps(log: bool) -> None:
    step = _Step([1.0, 1.0, 1.0, float('nan'), 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    seen = []
    with pytest.raises(NonFiniteLoss) as err:
        train_epoch(step, [(None, None)] * 10, 3, (lambda n, m: seen.append(n)) if log else None)
    assert (err.value.after, err.value.step) == (3, 6) and err.value.where() == 'steps 4-6'
    assert step.calls == 6 and seen == ([3] if log else [])  # read at the log_every reads, not every step


def test_a_loss_non_finite_only_in_the_last_steps_is_caught_at_the_epochs_end() -> None:
    step = _Step([1.0, 1.0, float('inf')])
    with pytest.raises(NonFiniteLoss) as err:
        train_epoch(step, [(None, None)] * 3, 2)
    assert err.value.where() == 'step 3'
    assert train_epoch(_Step([1.0, 3.0, 2.0]), [(None, None)] * 3, 2) == pytest.approx((2.0, 6.0))
    # the rest of an epoch resumed after its 5th step: its steps are counted from the epoch's start
    assert train_epoch(_Step([1.0, 3.0]), [(None, None)] * 2, 2, before=(4.0, 5)) == pytest.approx((8.0 / 7, 8.0))
    with pytest.raises(NonFiniteLoss) as err:
        train_epoch(_Step([1.0, float('nan')]), [(None, None)] * 2, 2, before=(4.0, 5))
    assert err.value.where() == 'steps 6-7'


def test_a_checkpoint_part_way_through_an_epoch_is_never_written_after_a_non_finite_loss(
        tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """train.checkpoint_steps=1 reads the loss sum at every step: once it is non-finite the weights
    are too, and the run stops there, last.pt left at the last step with finite weights (it was
    replaced by NaN weights until the next log read, and a rerun resumed from them)."""
    run = tmp_path / 'run'
    # at lr 1e30 the first update leaves finite weights whose loss is not; 4 steps an epoch
    assert main(tiny_args(tiny, run, '--set', 'train.lr=1e30', '--set', 'train.batch_size=2', '--set',
                          'train.checkpoint_steps=1', '--set', 'train.log_every=100')) == 1
    err = _one_line_error(capsys, 'non-finite', 'epoch 1, step 2')
    assert 'steps 1-2' not in err
    saved = torch.load(run / 'seed0' / 'checkpoints' / 'last.pt', weights_only=True)
    assert saved['steps'] == 1
    assert all(torch.isfinite(v).all() for v in saved['model'].values() if v.is_floating_point())


@pytest.mark.parametrize('clip', [0.0, 1.0])
def test_a_step_whose_gradients_are_non_finite_stops_the_epoch_before_any_checkpoint(
        clip: float, tmp_path: Path) -> None:
    """A finite loss with NaN gradients: the update made the weights NaN; the step's loss reads as
    NaN, so the run stops at that step, as for a non-finite loss, and last.pt is never written (it
    held NaN weights, and the run trained on, its losses NaN from the next step)."""
    import numpy as np

    from train.bench import synthetic_split
    from train.checkpoints import save_checkpoint
    from train.config import TrainCfg
    from train.data import TrainFeed
    from train.loop import TrainState, _step_checkpoints
    from train.models import create_model
    from train.step import TrainStep

    torch.manual_seed(0)
    model = create_model(CFG).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    step = TrainStep(model, opt, Anchored(model), clip, 'cpu', False)
    state = TrainState(model, opt, opt, None, step)
    last = tmp_path / 'last.pt'
    between = _step_checkpoints(state, TrainCfg(checkpoint_steps=1), lambda n, _, loss: save_checkpoint(
        model, last, steps=n))
    batches = TrainFeed(synthetic_split(CFG, 16, 7), torch.device('cpu'), 0).epoch(4, np.random.default_rng(0))
    with pytest.raises(NonFiniteLoss) as err:
        train_epoch(step, batches, 100, between=between)
    assert not last.exists()
    assert err.value.where() == 'step 1'


def test_an_update_that_overflows_the_weights_stops_the_run_before_it_saves_them(tmp_path: Path) -> None:
    """SGD at lr 3e38: the epoch's one step has a finite loss and finite gradients, and its update
    makes weights inf. The epoch stops there, naming the weight, before validation (best.pt) and
    last.pt (which held inf weights, the loss of the step that made them being finite)."""
    from shared.config import ConfigError
    from train.bench import synthetic_split
    from train.config import TrainCfg
    from train.data import TrainFeed
    from train.loop import TrainState, train_one_epoch
    from train.losses import build_loss
    from train.models import create_model
    from train.step import TrainStep

    torch.manual_seed(0)
    model = create_model(CFG).train()
    opt = torch.optim.SGD(model.parameters(), lr=3e38)
    state = TrainState(model, opt, opt, None, TrainStep(model, opt, build_loss('max_margin', 0.1, 0.05), 0.0, 'cpu',
                                                        False))
    feed = TrainFeed(synthetic_split(CFG, 8, 7), torch.device('cpu'), 0)
    with pytest.raises(ConfigError, match=r'weights became non-finite .* epoch 1, by step 1 \(first: '):
        train_one_epoch(state, feed, TrainCfg(batch_size=8, epochs=1), 0, False, tmp_path)
