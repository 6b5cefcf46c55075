"""`pipelines.compare_features` on small CE-pickle and MMT-h5 releases written here: features equal
to ours (ours stored as float16) give cosine 1; deliberately perturbed ones are the worst videos;
bad input is one error line."""
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


def _ours(path: Path, expert: str = 'scene') -> dict[str, np.ndarray]:
    """A store of 12 videos of 1-5 rows each (video5 has no rows: unavailable); the float32 rows."""
    rng = np.random.default_rng(0)
    rows = {v: rng.normal(size=(0 if v == 'video5' else 1 + i % 5, DIM)).astype(np.float32) + 0.5
            for i, v in enumerate(IDS)}
    spec = StoreSpec(dataset='toy', expert=expert, feature_dim=DIM, max_rows=5, chunk_size=4, model='toy')
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


def _compare(tmp_path: Path, *args: str) -> tuple[int, str, str, dict[str, float]]:
    """main(); its exit code, stdout, stderr and the CSV's cosines (empty when none was written)."""
    out = tmp_path / 'report'
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the pickle warning: tested above
        code = main([*args, '--out', str(out)])
    table = next(out.glob('*.csv'), None) if out.is_dir() else None
    cos = {}
    if table is not None:
        with open(table) as f:
            cos = {r['video_id']: float(r['cosine']) for r in csv.DictReader(f)}
    return code, *_captured(), cos


_CAPTURE: list = []


def _captured() -> tuple[str, str]:
    captured = _CAPTURE[-1].readouterr()
    return captured.out, captured.err


@pytest.fixture(autouse=True)
def _capture(capsys: pytest.CaptureFixture):
    _CAPTURE.append(capsys)
    yield
    _CAPTURE.pop()


def _mmt_release(root: Path, rows: dict[str, np.ndarray], key: str) -> Path:
    """MMT's layout: one {video_id}.h5 per video, the expert's rows under `key`."""
    import h5py

    root.mkdir()
    for v, r in rows.items():
        with h5py.File(root / f'{v}.h5', 'w') as h:
            h.create_dataset(key, data=r)
            h.create_dataset('features.audio', data=np.zeros((1, 128), np.float32))  # another expert beside it
    return root


def test_mmt_h5_release_is_read_under_the_experts_mmt_name(tmp_path: Path) -> None:
    """MMT names our object expert `appearance`: its rows are read from `features.appearance`, for
    `object` and (by its base name) `object.timm_eval`."""
    rows = _ours(tmp_path / 'object.zarr', expert='object')
    release = {v: r for v, r in rows.items() if v != 'video5'}
    release['video3'] = np.random.default_rng(1).normal(size=rows['video3'].shape).astype(np.float32)
    root = _mmt_release(tmp_path / 'mult_h5', release, 'features.appearance')
    for expert in ('object', 'object.timm_eval'):
        code, out, err, cos = _compare(tmp_path, '--ours', str(tmp_path / 'object.zarr'), '--release', str(root),
                                       '--expert', expert, '--worst', '1')
        assert code == 0, err
        assert set(cos) == set(IDS) - {'video5'}
        assert all(c == pytest.approx(1.0, abs=1e-5) for v, c in cos.items() if v != 'video3')
        assert cos['video3'] < 0.9 and out.split('worst 1:')[1].split()[0] == 'video3'
        assert 'features.appearance' in out
    assert "against the release's object" in out


def test_a_dotted_variant_is_compared_with_ces_pickle_of_its_base_expert(tmp_path: Path) -> None:
    rows = _ours(tmp_path / 'object.zarr', expert='object.timm_eval')
    root = tmp_path / 'structured-symlinks' / 'aggregated_imagenet_25fps_256px_stride1_offset0'
    root.mkdir(parents=True)
    with open(root / 'senet154-imagenet-avg.pickle', 'wb') as f:
        pickle.dump(rows, f)
    code, out, err, cos = _compare(tmp_path, '--ours', str(tmp_path / 'object.zarr'), '--release',
                                   str(root.parent), '--expert', 'object.timm_eval')
    assert code == 0, err
    assert len(cos) == 11 and all(c == pytest.approx(1.0, abs=1e-5) for c in cos.values())
    # or named: the release's ResNeXt features for our timm-eval SENet (dimensions agree: it runs)
    (root / 'resnext101_32x48d-avg.pickle').write_bytes((root / 'senet154-imagenet-avg.pickle').read_bytes())
    code, out, err, _ = _compare(tmp_path, '--ours', str(tmp_path / 'object.zarr'), '--release', str(root.parent),
                                 '--expert', 'object.timm_eval', '--release-expert', 'object.resnext101_wsl')
    assert code == 0 and 'resnext101_32x48d-avg.pickle' in out, err


def test_an_all_zero_mean_is_reported_not_scored(tmp_path: Path) -> None:
    rows = _ours(tmp_path / 'scene.zarr')
    release = dict(rows, video2=np.zeros_like(rows['video2']))
    with open(tmp_path / 'r.pickle', 'wb') as f:
        pickle.dump(release, f)
    code, out, err, cos = _compare(tmp_path, '--ours', str(tmp_path / 'scene.zarr'), '--release',
                                   str(tmp_path / 'r.pickle'), '--expert', 'scene')
    assert code == 0, err
    assert 'video2' not in cos and len(cos) == 10
    assert '1 videos not scored: their mean features are all zero' in out and 'video2' in out


@pytest.mark.parametrize('case', ['not_a_dict', 'unknown_expert', 'slash_expert', 'negative_worst', 'bad_h5'])
def test_bad_input_is_one_error_line(tmp_path: Path, case: str) -> None:
    rows = _ours(tmp_path / 'scene.zarr')
    args = ['--ours', str(tmp_path / 'scene.zarr'), '--expert', 'scene']
    if case == 'not_a_dict':
        with open(tmp_path / 'r.pickle', 'wb') as f:
            pickle.dump([rows['video0']], f)
        args += ['--release', str(tmp_path / 'r.pickle')]
        expect = 'not a CE feature pickle'
    elif case in ('unknown_expert', 'slash_expert'):
        with open(tmp_path / 'r.pickle', 'wb') as f:
            pickle.dump(rows, f)
        args = ['--ours', str(tmp_path / 'scene.zarr'), '--release', str(tmp_path / 'r.pickle'), '--expert',
                'scenery' if case == 'unknown_expert' else 'scene/x']
        expect = 'is not an expert'
    elif case == 'negative_worst':
        with open(tmp_path / 'r.pickle', 'wb') as f:
            pickle.dump(rows, f)
        with pytest.raises(SystemExit) as stop:
            main([*args, '--release', str(tmp_path / 'r.pickle'), '--worst', '-2'])
        err = _captured()[1]
        assert stop.value.code == 2 and "--worst: '-2': give a whole number >= 0" in err, err
        return
    else:
        root = _mmt_release(tmp_path / 'mult_h5', {v: r for v, r in rows.items() if v != 'video5'}, 'features.scene')
        (root / 'video7.h5').write_bytes(b'not hdf5 at all')
        args += ['--release', str(root)]
        expect = 'video7.h5: cannot read it as an HDF5 file'
    code, out, err, cos = _compare(tmp_path, *args)
    assert code == 1 and err.count('\n') == 1 and expect in err and 'Traceback' not in err, err
    assert not cos


def test_the_store_is_read_a_chunk_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the means are kept: a store of gigabytes is never read into memory whole."""
    from shared.store import ExpertStore

    rows = _ours(tmp_path / 'scene.zarr')
    with open(tmp_path / 'r.pickle', 'wb') as f:
        pickle.dump(rows, f)
    read = ExpertStore.read
    sizes: list[int] = []

    def reading(self, rows=None, ids=None):
        out = read(self, rows, ids)
        sizes.append(len(out.video_ids))
        return out

    monkeypatch.setattr(ExpertStore, 'read', reading)
    code, _, err, cos = _compare(tmp_path, '--ours', str(tmp_path / 'scene.zarr'), '--release',
                                 str(tmp_path / 'r.pickle'), '--expert', 'scene')
    assert code == 0 and len(cos) == 11, err
    assert sizes == [4, 4, 4]
