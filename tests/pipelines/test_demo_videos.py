"""`make demo VIDEOS=N` with too few videos to fill the demo configs' training batch stops in one line,
before anything is generated, naming the count that works (not after extraction, in the first training)."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.demo import main, min_videos, serve_hint
from shared.config import data_root_default
from shared.datasets.demo import DemoCfg, split_sizes
from train.config import load_run_cfg
from train.main import config_path


@pytest.mark.parametrize('videos', [2, 12, 39])
def test_too_few_videos_stop_before_anything_is_made(videos: int, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    roots = ['--data-root', str(tmp_path / 'data'), '--features-root', str(tmp_path / 'features'),
             '--runs', str(tmp_path / 'runs'), '--report', str(tmp_path / 'report')]
    with pytest.raises(SystemExit) as stop:
        main(['--videos', str(videos), *roots])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    assert f'--videos {videos} gives {split_sizes(videos, DemoCfg().split)[0]} training videos' in err
    assert 'VIDEOS=40' in err
    assert list(tmp_path.iterdir()) == []


def test_the_least_count_fills_every_demo_batch() -> None:
    batch = load_run_cfg(config_path('mee', 'demo', None)).train.batch_size
    least = min_videos(DemoCfg())
    assert split_sizes(least, DemoCfg().split)[0] >= batch > split_sizes(least - 1, DemoCfg().split)[0]
    assert split_sizes(120, DemoCfg().split) == (72, 24, 24)  # README: make demo tests on 24 videos
    assert split_sizes(12, DemoCfg().split) == (7, 2, 3)  # what generate wrote for VIDEOS=12


def test_the_last_line_serves_from_the_roots_the_demo_used(tmp_path: Path) -> None:
    run, index = Path('runs/demo/ce/seed0'), Path('runs/demo/ce/seed0/index/demo')
    hint = serve_hint(run, index, tmp_path / 'data')
    assert f'make serve DATA_ROOT={tmp_path / "data"} (' in hint  # plain `make serve` read ./data
    assert f'--data-root {tmp_path / "data"}' in hint
    assert 'make serve (' in serve_hint(run, index, data_root_default())
    assert 'make serve RUN=elsewhere/ce/seed0 (' in serve_hint(Path('elsewhere/ce/seed0'), index, data_root_default())


def test_the_table_says_what_chance_is_for_its_test_part() -> None:
    """README: 24 test videos, chance t2v R@1 4.2; a `VIDEOS=40` demo tests on 8, where chance is 12.5 and R@5
    is 62.5: the report now says so beside the table."""
    from pipelines.demo import chance_note

    assert chance_note(24, 120) == 'Tested on 24 videos and 120 captions: chance t2v R@1 is 4.2, R@5 20.8.'
    assert chance_note(4, 20).endswith('chance t2v R@1 is 25.0, R@5 100.0.')
