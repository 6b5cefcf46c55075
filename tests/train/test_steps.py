"""`train.steps`: a run of N optimisation steps (MMT sec. 4.2 counts steps, not epochs) stops after
N, part way through its last epoch, and a resumed run continues that epoch to the same weights."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from train.main import main as train_main

from tests.train.conftest import Killed, tiny_args

# the tiny set trains 8 videos in batches of 4: 2 steps an epoch. The learning rate halves every
# epoch, so a resumed run that stepped the per-epoch schedule at a stop part way through an epoch
# (or skipped it at that epoch's end) ends with other weights.
_SCHEDULE = ('--set', 'train.lr_step=1', '--set', 'train.lr_gamma=0.5', '--set', 'train.lr=0.01')


def _steps(tiny: Path, run: Path, n: int) -> int:
    return train_main(tiny_args(tiny, run, *_SCHEDULE, '--set', f'train.steps={n}'))


def _last(run: Path) -> dict:
    return torch.load(run / 'seed0' / 'checkpoints' / 'last.pt', weights_only=True)


def _kill_after_step(monkeypatch: pytest.MonkeyPatch, step: int | None) -> list[tuple[int, int]]:
    """Record each last.pt written as (steps, epoch_steps), and die (`Killed`) right after the one of
    `step` (None: never). best.pt, which validation writes, is not recorded."""
    import train.loop

    real, saved = train.loop.save_checkpoint, []

    def saving(model: torch.nn.Module, path: Path, **extra: object) -> None:
        real(model, path, **extra)
        if path.name == 'last.pt':
            saved.append((extra['steps'], extra['epoch_steps']))
            if extra['steps'] == step:
                raise Killed

    monkeypatch.setattr(train.loop, 'save_checkpoint', saving)
    return saved


def _forget_loss_sums(run: Path) -> None:
    """last.pt as written before the epoch's loss sums were kept."""
    last = run / 'seed0' / 'checkpoints' / 'last.pt'
    saved = torch.load(last, weights_only=True)
    del saved['epoch_loss']
    torch.save(saved, last)


def _losses(run: Path) -> dict[int, float]:
    """metrics.jsonl's loss by step."""
    return {r['step']: r['train/loss'] for r in map(json.loads, (run / 'seed0' / 'metrics.jsonl').open())}


@pytest.mark.filterwarnings('error::UserWarning')  # torch's scheduler-order warning on a resume at an epoch's end
def test_a_run_stops_after_its_steps_and_a_resumed_one_at_the_same_step_with_the_same_weights(
        tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    whole = tmp_path / 'whole'
    assert _steps(tiny, whole, 5) == 0
    saved = _last(whole)
    assert saved['steps'] == 5 and saved['epoch_steps'] == 1 and saved['epoch'] == 2  # 2 + 2 + 1 steps
    assert {int(s['step']) for s in saved['optimizer']['state'].values()} == {5}  # Adam's own count: 5 updates
    records = [json.loads(line) for line in (whole / 'seed0' / 'metrics.jsonl').read_text().splitlines()]
    assert [(r['epoch'], r['step']) for r in records] == [(1, 2), (2, 4), (3, 5)]
    assert json.loads((whole / 'seed0' / 'test_metrics.json').read_text())['t2v']['R1'] >= 0

    # stopped part way through epoch 2 (step 3), at the exact end of epoch 2 (step 4), and twice in
    # epoch 1 (steps 1, then 2: the second stop counts the steps of both): each resumed to 5 steps
    # ends where the uninterrupted run did
    for stops in ((3,), (4,), (1, 2)):
        resumed = tmp_path / f'resumed{stops}'
        for stop in stops:
            assert _steps(tiny, resumed, stop) == 0
            assert _last(resumed)['steps'] == stop
        capsys.readouterr()
        assert _steps(tiny, resumed, 5) == 0
        out = capsys.readouterr().out
        # the stop at epoch 2's last step goes on in epoch 3, not "epoch 2, step 3 of the epoch"
        assert {(3,): 'at epoch 2, step 4 (step 2 of the epoch)\n', (4,): 'at epoch 3, step 5\n',
                (1, 2): 'at epoch 2, step 3\n'}[stops] in out, out
        again = _last(resumed)
        assert again['steps'] == 5 and again['epoch'] == 2
        assert again['model'].keys() == saved['model'].keys()
        assert all(torch.equal(again['model'][k], saved['model'][k]) for k in saved['model']), stops
        assert again['scheduler']['last_epoch'] == saved['scheduler']['last_epoch']
        # an epoch's line at its end: the mean loss of all its steps, those before a stop included
        lines = _losses(resumed)
        assert {r['step']: lines[r['step']] for r in records} == {r['step']: r['train/loss'] for r in records}, stops

    # fewer steps than a run has trained: refused, the run left as it was
    assert _steps(tiny, whole, 4) == 1
    assert 'has trained 5 steps, more than train.steps=4' in capsys.readouterr().err
    assert torch.equal(next(iter(_last(whole)['model'].values())), next(iter(saved['model'].values())))


def test_a_streamed_run_resumed_part_way_through_an_epoch_ends_with_the_uninterrupted_weights(
        tiny: Path, tmp_path: Path) -> None:
    # the streamed epoch is a generator over DataLoader workers: stopped by the budget, skipped into on resume
    stream = ('--set', 'train.streaming=on', '--set', 'train.data_workers=1')
    whole, resumed = tmp_path / 'whole', tmp_path / 'resumed'
    for run, n in ((whole, 5), (resumed, 3), (resumed, 5)):
        assert train_main(tiny_args(tiny, run, *_SCHEDULE, *stream, '--set', f'train.steps={n}')) == 0
    a, b = _last(whole), _last(resumed)
    assert a['steps'] == b['steps'] == 5
    assert all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])


def test_epochs_over_pairs_train_the_steps_of_every_caption_pass(tiny: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """``train.epoch_unit: pairs`` (the support-set paper's epochs over every video-text pair): the
    tiny set's 8 videos have 2 captions each, so 3 epochs at batch 4 are ceil(3 x 16 / 4) = 12
    steps, 6 epochs of one caption a video; config.yaml keeps what was asked for."""
    run = tmp_path / 'pairs'
    assert train_main(tiny_args(tiny, run, '--set', 'train.epoch_unit=pairs', '--set', 'train.epochs=3')) == 0
    assert 'train.epoch_unit pairs: 3 epochs over the 16 (video, caption) pairs at batch 4 = 12 steps' in (
        capsys.readouterr().out)
    records = [json.loads(line) for line in (run / 'seed0' / 'metrics.jsonl').read_text().splitlines()]
    assert [(r['epoch'], r['step']) for r in records] == [(e, 2 * e) for e in range(1, 7)]
    saved = yaml.safe_load((run / 'seed0' / 'config.yaml').read_text())['train']
    assert (saved['epoch_unit'], saved['epochs'], saved['steps']) == ('pairs', 3, 0)
    # the same command again finds the run finished (its steps counted alike); both settings at once: refused
    assert train_main(tiny_args(tiny, run, '--set', 'train.epoch_unit=pairs', '--set', 'train.epochs=3')) == 0
    assert 'resuming' in capsys.readouterr().out
    assert len((run / 'seed0' / 'metrics.jsonl').read_text().splitlines()) == 6
    assert train_main(tiny_args(tiny, tmp_path / 'both', '--set', 'train.epoch_unit=pairs', '--set',
                                'train.steps=5')) == 1
    assert 'leave train.steps at 0' in capsys.readouterr().err
    # fewer epochs than it trained: refused, with advice in epochs (train.steps is refused beside pairs)
    assert train_main(tiny_args(tiny, run, '--set', 'train.epoch_unit=pairs', '--set', 'train.epochs=2')) == 1
    assert 'more than the 8 steps of train.epochs=2 over its pairs' in (err := capsys.readouterr().err)
    assert 'train.epochs=3 (or more' in err


def test_a_resumed_run_drops_the_metrics_lines_its_checkpoint_does_not_hold(tiny: Path, tmp_path: Path) -> None:
    """A kill after an epoch's metrics line but before its checkpoint (or in the middle of the line)
    leaves lines that the resumed run writes again: they are dropped, never kept twice."""
    run = tmp_path / 'run'
    assert _steps(tiny, run, 3) == 0
    metrics = run / 'seed0' / 'metrics.jsonl'
    with open(metrics, 'a', encoding='utf-8') as f:  # steps 4 and 5's lines of the killed attempt, then one cut short
        f.write(json.dumps({'epoch': 2, 'step': 4, 'train/loss': 9.0}) + '\n'
                + json.dumps({'epoch': 3, 'step': 5, 'train/loss': 9.0}) + '\n{"epoch": 3, "st')
    assert _steps(tiny, run, 5) == 0
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [(r['epoch'], r['step']) for r in records] == [(1, 2), (2, 3), (2, 4), (3, 5)]
    assert 9.0 not in [r['train/loss'] for r in records]


def test_checkpoint_steps_writes_last_pt_part_way_through_an_epoch_and_a_kill_resumes_there(
        tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """train.checkpoint_steps=3 with epochs of 2 steps and checkpoint_every=100: last.pt after step 3
    (part way through epoch 2) and at the run's end; killed right after step 3's, the rerun continues
    epoch 2 at its second step and ends with the weights and metrics of an uninterrupted run."""
    sparse = ('--set', 'train.checkpoint_every=100', '--set', 'train.epochs=3')
    every3 = ('--set', 'train.checkpoint_steps=3')
    saved = _kill_after_step(monkeypatch, 3)
    killed, whole = tmp_path / 'killed', tmp_path / 'whole'
    with pytest.raises(Killed):
        train_main(tiny_args(tiny, killed, *_SCHEDULE, *sparse, *every3))
    assert saved == [(3, 1)]  # epoch 1's end is not one of checkpoint_every's: none before step 3
    monkeypatch.undo()
    capsys.readouterr()
    assert train_main(tiny_args(tiny, killed, *_SCHEDULE, *sparse, *every3)) == 0
    assert 'resuming' in (out := capsys.readouterr().out) and 'step 4 (step 2 of the epoch)' in out
    assert train_main(tiny_args(tiny, whole, *_SCHEDULE, *sparse)) == 0
    a, b = _last(killed), _last(whole)
    assert a['steps'] == b['steps'] == 6 and a['epoch_steps'] == b['epoch_steps'] == 0
    assert all(torch.equal(a['model'][k], b['model'][k]) for k in b['model'])
    assert a['scheduler']['last_epoch'] == b['scheduler']['last_epoch'] == 3
    # the resumed epoch's loss is the mean of all its steps, those before the kill included
    lines = [[(r['epoch'], r['step'], r['train/loss'])
              for r in map(json.loads, (run / 'seed0' / 'metrics.jsonl').read_text().splitlines())]
             for run in (killed, whole)]
    assert lines[0] == lines[1] and [line[:2] for line in lines[0]] == [(1, 2), (2, 4), (3, 6)]
    # every 2 steps: each at an epoch's end, written there (checkpoint_every would not)
    saved = _kill_after_step(monkeypatch, None)
    assert train_main(tiny_args(tiny, tmp_path / 'even', *_SCHEDULE, *sparse, '--set', 'train.checkpoint_steps=2')) == 0
    assert saved == [(2, 0), (4, 0), (6, 0)]


def test_a_checkpoint_without_the_epochs_loss_sum_resumes_part_way(tiny: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """last.pt written before the epoch's loss sum was kept (stopped at step 3, part way through
    epoch 2): the run resumes to the same weights; that epoch's line is the mean of its later steps."""
    old, whole = tmp_path / 'old', tmp_path / 'whole'
    assert _steps(tiny, old, 3) == 0 and _steps(tiny, whole, 5) == 0
    _forget_loss_sums(old)
    assert _steps(tiny, old, 5) == 0
    a, b = _last(old), _last(whole)
    assert all(torch.equal(a['model'][k], b['model'][k]) for k in b['model'])
    lines, whole_lines = _losses(old), _losses(whole)
    assert lines[4] != whole_lines[4] and lines[5] == whole_lines[5]
    # resumed so, and saved again part way through the same epoch: the sum stays unknown, not that of the later steps
    old = tmp_path / 'old4'
    assert train_main(tiny_args(tiny, old, *_SCHEDULE, '--set', 'train.batch_size=2', '--set', 'train.steps=1')) == 0
    _forget_loss_sums(old)
    _kill_after_step(monkeypatch, 2)
    with pytest.raises(Killed):
        train_main(tiny_args(tiny, old, *_SCHEDULE, '--set', 'train.batch_size=2', '--set', 'train.steps=3',
                             '--set', 'train.checkpoint_steps=2'))
    saved = _last(old)  # at step 2, part way through the 4-step epoch
    assert (saved['steps'], saved['epoch_steps']) == (2, 2) and math.isnan(saved['epoch_loss'][0])


def test_a_resumed_run_keeps_the_best_validation_score_of_the_epochs_before(
        tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """best.pt stays the first epoch of the highest selection score over the whole run (a tie, common
    for recalls of a small val part, keeps the earlier): a resumed run compares its epochs with the
    best of those before the resume (last.pt's), not with nothing."""
    import train.loop

    scores = iter([3.0, 3.0, 2.0, 0.0])  # epochs 1-2, then 3-4 after the resume: epoch 1 is the best
    monkeypatch.setattr(train.loop, 'geometric_mean', lambda values: next(scores))
    run = tmp_path / 'run'
    for epochs in (2, 4):
        assert train_main(tiny_args(tiny, run, '--set', f'train.epochs={epochs}')) == 0
    assert torch.load(run / 'seed0' / 'checkpoints' / 'best.pt', weights_only=True)['epoch'] == 0
    assert torch.load(run / 'seed0' / 'gallery.pt', weights_only=True)['checkpoint'] == 'best.pt'
    assert len(_losses(run)) == 4


def test_a_best_checkpoint_saved_after_the_last_one_is_not_overwritten_by_a_lower_score(
        tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """best.pt is written before last.pt: a run stopped between them left a best.pt of epoch 3 scoring
    5, while last.pt knew the best as 1. The resumed epoch 3 (other weights: a GPU's nondeterminism)
    scored 2 and overwrote it; now best.pt stays unless an epoch scores above 5."""
    import train.loop

    scores = iter([1.0, 1.0, 5.0, 2.0, 0.0])  # epochs 1-2, epoch 3 of the stopped attempt, then 3-4 again
    monkeypatch.setattr(train.loop, 'geometric_mean', lambda values: next(scores))
    real = train.loop.save_checkpoint

    def stop_before_last_of_epoch_3(model: torch.nn.Module, path: Path, **extra: object) -> None:
        if path.name == 'last.pt' and extra['epoch'] == 2:
            raise Killed
        real(model, path, **extra)

    run = tmp_path / 'run'
    assert train_main(tiny_args(tiny, run, '--set', 'train.epochs=2')) == 0
    monkeypatch.setattr(train.loop, 'save_checkpoint', stop_before_last_of_epoch_3)
    with pytest.raises(Killed):
        train_main(tiny_args(tiny, run, '--set', 'train.epochs=4'))
    monkeypatch.setattr(train.loop, 'save_checkpoint', real)
    capsys.readouterr()
    assert train_main(tiny_args(tiny, run, '--set', 'train.epochs=4')) == 0
    assert 'best.pt (epoch 3, validation score 5.00) was saved after last.pt' in capsys.readouterr().out
    best = torch.load(run / 'seed0' / 'checkpoints' / 'best.pt', weights_only=True)
    assert (best['epoch'], best['best']) == (2, 5.0)


def test_each_epoch_draws_its_batches_from_a_generator_of_the_seed_and_the_epoch(
        tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Epoch e's order is drawn from default_rng([seed, e]): each epoch shuffles anew, and a resumed
    run draws the orders of the uninterrupted one."""
    import numpy as np

    from train.data import TrainFeed

    real, seen = TrainFeed.epoch, []

    def epoch(self: TrainFeed, batch_size: int, rng: np.random.Generator, skip: int = 0):  # noqa: ANN202
        seen.append(rng.bit_generator.state)
        return real(self, batch_size, rng, skip)

    monkeypatch.setattr(TrainFeed, 'epoch', epoch)
    assert train_main(tiny_args(tiny, tmp_path / 'run', '--set', 'train.epochs=2', '--seeds', '3')) == 0
    assert seen == [np.random.default_rng([3, e]).bit_generator.state for e in (0, 1)]


def test_a_per_step_schedule_steps_once_a_step_and_never_at_an_epochs_end(tiny: Path, tmp_path: Path) -> None:
    """train.lr_step_unit=step (MMT's decay): after 2 epochs of 2 steps the schedule has stepped 4
    times, and the lr halved every train.lr_step=1 of them."""
    run = tmp_path / 'run'
    assert train_main(tiny_args(tiny, run, *_SCHEDULE, '--set', 'train.lr_step_unit=step', '--set', 'train.epochs=2')) == 0
    saved = _last(run)
    assert saved['scheduler']['last_epoch'] == 4
    assert saved['optimizer']['param_groups'][0]['lr'] == pytest.approx(0.01 * 0.5 ** 4)


def test_an_epochs_line_records_the_learning_rate_it_trained_at(tiny: Path, tmp_path: Path) -> None:
    """metrics.jsonl's lr is the one the epoch's steps took (halved every epoch here), not the one
    the schedule set for the next epoch; an epoch stopped part way by train.steps records its own alike."""
    lrs = lambda run: [json.loads(line)['lr'] for line in (run / 'seed0' / 'metrics.jsonl').open()]  # noqa: E731
    assert train_main(tiny_args(tiny, tmp_path / 'epochs', *_SCHEDULE, '--set', 'train.epochs=3')) == 0
    assert lrs(tmp_path / 'epochs') == pytest.approx([0.01, 0.005, 0.0025])
    assert _steps(tiny, tmp_path / 'steps', 3) == 0
    assert lrs(tmp_path / 'steps') == pytest.approx([0.01, 0.005])


def test_tensorboard_has_one_point_an_epoch_after_a_resume_part_way_through_one(tiny: Path, tmp_path: Path) -> None:
    """The epoch that train.steps stopped part way logged a point of its first steps; its end, in
    the resumed run, logs the epoch's: TensorBoard shows the latter alone (it showed both at one
    epoch). metrics.jsonl keeps both lines, told apart by their step; a resume at an epoch's last
    step logs that epoch once."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def points(run: Path) -> list[tuple[int, float]]:
        events = EventAccumulator(str(run / 'seed0' / 'tb'))
        events.Reload()
        return [(e.step, e.value) for e in events.Scalars('train/loss')]

    run = tmp_path / 'part'
    assert _steps(tiny, run, 3) == 0 and _steps(tiny, run, 6) == 0  # 2 steps an epoch: stopped in epoch 2
    assert list(_losses(run)) == [2, 3, 4, 6]
    assert [e for e, _ in points(run)] == [1, 2, 3]
    assert points(run)[1][1] == pytest.approx(_losses(run)[4])
    run = tmp_path / 'end'
    assert _steps(tiny, run, 2) == 0 and _steps(tiny, run, 4) == 0  # stopped at epoch 1's last step
    assert [e for e, _ in points(run)] == [1, 2]


def test_a_per_step_schedules_line_records_the_learning_rate_of_its_last_step(tiny: Path, tmp_path: Path) -> None:
    """The lr halves every step, 2 steps an epoch: epoch 1's steps take 0.01 and 0.005, epoch 2's
    0.0025 and 0.00125; each line records its last step's (it recorded the lr the schedule set
    after that step, 0.0025 for epoch 1, which none of its steps took)."""
    run = tmp_path / 'run'
    assert train_main(tiny_args(tiny, run, *_SCHEDULE, '--set', 'train.lr_step_unit=step', '--set',
                                'train.epochs=2')) == 0
    assert [json.loads(line)['lr'] for line in (run / 'seed0' / 'metrics.jsonl').open()] == pytest.approx(
        [0.005, 0.00125])
