"""The action-recognition probe (support-set appendix 6.6) on the demo, each video's photo its class."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from train.probe import ProbeCfg, pooled_features, train_linear
from train.probe import main as probe_main


def test_linear_classifier_follows_the_appendix_schedule() -> None:
    """Adam at 1e-4 and weight decay 1e-4, the rate / 10 at the milestones; separable data is learnt."""
    cfg = ProbeCfg(epochs=30, milestones=(10, 20), val_fraction=0.0)
    x = torch.cat([torch.randn(40, 8) + 3 * torch.eye(8)[i % 4] for i in range(4)])
    y = torch.arange(4).repeat_interleave(40)
    seen = []
    orig = torch.optim.lr_scheduler.MultiStepLR.step

    def step(self: torch.optim.lr_scheduler.MultiStepLR) -> None:
        seen.append((self.optimizer.param_groups[0]['lr'], self.optimizer.param_groups[0]['weight_decay']))
        orig(self)

    torch.optim.lr_scheduler.MultiStepLR.step = step
    try:
        layer = train_linear(x, y, 4, cfg)
    finally:
        torch.optim.lr_scheduler.MultiStepLR.step = orig
    seen = seen[1:]  # the scheduler's own first step, in its constructor; then one after each epoch
    assert seen[0] == (1e-4, 1e-4) and seen[10][0] == pytest.approx(1e-5) and seen[20][0] == pytest.approx(1e-6)
    assert len(seen) == 30 and (layer(x).argmax(1) == y).float().mean() > 0.5


@pytest.mark.slow
@pytest.mark.parametrize('pooling', ['head', 'mean'])
def test_probe_on_the_demo_photos_is_above_chance(pooling: str, ssb_demo_run: Path, demo_stores: tuple[Path, Path],
                                                  capsys: pytest.CaptureFixture) -> None:
    data, features = demo_stores
    assert probe_main(['--run', str(ssb_demo_run), '--dataset', 'demo', '--pooling', pooling, '--data-root', str(data),
                       '--features-root', str(features), '--device', 'cpu']) == 0
    assert 'over 1 fold (10 classes)' in capsys.readouterr().out  # the demo's one split
    record = json.loads((ssb_demo_run / 'seed0' / 'probe' / f'demo_{pooling}.json').read_text())
    assert record['classes'] == 10 and list(record['top1']) == ['official']
    assert record['cfg']['lr'] == 1e-4 and record['cfg']['epochs'] == 500 and record['cfg']['milestones'] == [200, 400]
    assert record['mean_top1'] > 2 * 100 / record['classes'], record  # twice chance: 12 test videos, 10 photos


def test_probe_refuses_a_dataset_without_classes(tmp_path: Path) -> None:
    from shared.datasets import DatasetError, Manifest
    from train.probe import probe_run

    bare = Manifest('vatex', tmp_path, (), (), {}, {})
    with pytest.raises(DatasetError, match='vatex has no class labels'):
        probe_run(tmp_path, bare, [], 'head', tmp_path, tmp_path, torch.device('cpu'), ProbeCfg())


class _PerSecond(torch.nn.Module):
    """A model's per-second features of one video: two valid seconds, then padding."""

    def video_features(self, videos: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]]), torch.tensor([[True, True, False]])


def test_mean_pooling_averages_the_valid_seconds_only() -> None:
    data = SimpleNamespace(video_batches=lambda batch: iter([{}]))
    assert pooled_features(_PerSecond(), data, 'mean', torch.device('cpu')).tolist() == [[2.0, 3.0]]


def test_probe_reports_the_accuracy_on_the_folds_test_videos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training videos separable by class, test videos with the other class's features: the classifier is
    right on every training video and wrong on every test one, and the test side is what is reported."""
    import train.probe as probe
    from shared.datasets import Manifest
    from shared.datasets.manifest import Split

    ids = [f'v{i}' for i in range(8)]
    labels = {v: 'ab'[i % 2] for i, v in enumerate(ids)}
    manifest = Manifest('toy', tmp_path, tuple(ids), tuple(tmp_path / f'{v}.mp4' for v in ids), {},
                        {'fold1': Split('fold1', tuple(ids[:4]), (), tuple(ids[4:]))}, labels=labels)
    flip = {v: (labels[v] == 'a') != (v in ids[4:]) for v in ids}

    def split(manifest: Manifest, fold: str, part: str, *_) -> SimpleNamespace:
        return SimpleNamespace(video_ids=list(getattr(manifest.split(fold), part)))

    monkeypatch.setattr(probe, 'run_split', lambda *a: (SimpleNamespace(model=None, cfg=SimpleNamespace(
        model=SimpleNamespace(experts=[]))), None, split(*a[1:4])))
    monkeypatch.setattr(probe, 'load_split', split)
    monkeypatch.setattr(probe, 'pooled_features', lambda model, data, pooling, device: torch.tensor(
        [[1.0, 0.0] if flip[v] else [0.0, 1.0] for v in data.video_ids]))
    cfg = ProbeCfg(lr=0.1, epochs=100, milestones=(), val_fraction=0.0)
    record = probe.probe_run(tmp_path, manifest, ['fold1'], 'mean', tmp_path, tmp_path, torch.device('cpu'), cfg)
    assert record['top1'] == {'fold1': 0.0} and record['classes'] == 2


def test_the_result_line_counts_folds_in_the_singular_and_plural() -> None:
    """`make probe` on the demo (one split) printed 'over 1 folds'."""
    from train.probe import result_line

    one = {'top1': {'official': 50.0}, 'mean_top1': 50.0, 'classes': 10}
    three = {'top1': {'fold1': 40.0, 'fold2': 50.0, 'fold3': 60.0}, 'mean_top1': 50.0, 'classes': 51}
    assert result_line(one) == 'official 50.0; top-1 mean 50.0% over 1 fold (10 classes)'
    assert result_line(three) == 'fold1 40.0 fold2 50.0 fold3 60.0; top-1 mean 50.0% over 3 folds (51 classes)'


def test_a_run_not_trained_yet_is_one_line_saying_what_writes_one(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """`make probe` before `make demo`: 'runs/demo/ssb is not a run directory (no config.yaml)' did not
    say that the folder is missing, nor what makes it."""
    assert probe_main(['--run', str(tmp_path / 'ssb'), '--dataset', 'demo', '--data-root', str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and f'{tmp_path / "ssb"} is not a run directory: it does not exist' in err, err
    assert 'python -m train' in err and 'make demo' in err
    (tmp_path / 'ssb').mkdir()  # there, but no run in it
    assert probe_main(['--run', str(tmp_path / 'ssb'), '--dataset', 'demo', '--data-root', str(tmp_path)]) == 1
    assert f'{tmp_path / "ssb"} is not a run directory (no config.yaml)' in capsys.readouterr().err
