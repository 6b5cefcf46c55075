"""`pipelines.compare_features` on a small CE-pickle release written here: features equal to ours
(ours stored as float16) give cosine 1; deliberately perturbed ones are the worst videos."""
from __future__ import annotations

import csv
import pickle
from pathlib import Path

import numpy as np
import pytest

from pipelines.compare_features import main
from shared.store import StoreSpec, VideoResult, create_store, pack_chunk

DIM = 64
IDS = [f'video{i}' for i in range(12)]
PERTURBED = ('video3', 'video8')


def _ours(path: Path) -> dict[str, np.ndarray]:
    """A store of 12 videos of 1-5 rows each (video5 has no rows: unavailable); the float32 rows."""
    rng = np.random.default_rng(0)
    rows = {v: rng.normal(size=(0 if v == 'video5' else 1 + i % 5, DIM)).astype(np.float32) + 0.5
            for i, v in enumerate(IDS)}
    spec = StoreSpec(dataset='toy', expert='scene', feature_dim=DIM, max_rows=5, chunk_size=4, model='toy')
    store = create_store(path, IDS, spec)
    for c in range(3):
        results = [VideoResult(rows[v], np.stack([np.arange(len(rows[v])), np.arange(len(rows[v])) + 1.0], 1)
                               .astype(np.float32)) for v in IDS[c * 4:(c + 1) * 4]]
        store.write_chunk(c, pack_chunk(results, 5, DIM, False))
    return rows


def test_equal_features_give_cosine_one_and_perturbed_ones_are_the_worst(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    rows = _ours(tmp_path / 'scene.zarr')
    rng = np.random.default_rng(1)
    release = {v: r for v, r in rows.items() if v != 'video11'}  # video11 missing from the release
    release['video4'] = rows['video4'].mean(0)  # CE's aggregated (D,) form of 5 rows
    release['video1'] = float('nan')  # CE's "missing" marker
    for v in PERTURBED:  # another model's features, as a wrong checkpoint gives
        release[v] = rng.normal(size=rows[v].shape).astype(np.float32)
    root = tmp_path / 'structured-symlinks'
    (root / 'aggregated_scene_25fps_256px_stride1_offset0').mkdir(parents=True)
    with open(root / 'aggregated_scene_25fps_256px_stride1_offset0' / 'densenet161-avg.pickle', 'wb') as f:
        pickle.dump(release, f)
    out = tmp_path / 'report'
    with pytest.warns(UserWarning, match='pickle'):
        code = main(['--ours', str(tmp_path / 'scene.zarr'), '--release', str(root), '--expert', 'scene',
                     '--out', str(out), '--worst', '2'])
    text = capsys.readouterr().out
    assert code == 0, text
    with open(out / 'compare_scene.csv') as f:
        cos = {r['video_id']: float(r['cosine']) for r in csv.DictReader(f)}
    # compared: in both, with rows on both sides (not video1: NaN; video5: no rows; video11: absent)
    assert set(cos) == set(IDS) - {'video1', 'video5', 'video11'}
    for v, c in cos.items():
        if v not in PERTURBED:
            assert c == pytest.approx(1.0, abs=1e-5), v  # float16 storage only
        else:
            assert c < 0.9, v
    worst = text.split('worst 2:')[1].split()
    assert set(worst[0:4:2]) == set(PERTURBED), text
    assert '9 videos in both' in text
    assert (out / 'compare_scene.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_a_release_of_another_dimension_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _ours(tmp_path / 'scene.zarr')
    with open(tmp_path / 'other.pickle', 'wb') as f:
        pickle.dump({v: np.ones(DIM + 1, np.float32) for v in IDS}, f)
    with pytest.warns(UserWarning, match='pickle'):
        code = main(['--ours', str(tmp_path / 'scene.zarr'), '--release', str(tmp_path / 'other.pickle'),
                     '--expert', 'scene', '--out', str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and err.count('\n') == 1 and 'dimensions' in err, err
