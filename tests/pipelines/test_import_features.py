"""The importer of the authors' released features: CE pickles and MMT h5 files written here."""
from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipelines.import_features import main as import_main
from shared.datasets import load_manifest
from shared.store import UNKNOWN_TIME, StoreSpec, create_store, open_store, store_path

IDS = ['video0', 'video1', 'video2', 'video7']


def _captions() -> dict[str, list[list[str]]]:
    return {v: [['a', 'caption', str(k), 'of', v] for k in range(3 + i)] for i, v in enumerate(IDS)}


def _ce_release(root: Path) -> dict[str, dict]:
    rng = np.random.default_rng(0)
    scene = {v: rng.normal(size=2208).astype(np.float32) for v in IDS}
    face = {v: rng.normal(size=512).astype(np.float32) for v in IDS}
    face['video1'] = float('nan')  # no face: CE stores a scalar NaN
    audio = {v: rng.normal(size=(n, 128)).astype(np.float32) for v, n in zip(IDS, [5, 1, 9, 3])}
    speech = {v: rng.normal(size=(n, 300)).astype(np.float32) for v, n in zip(IDS[:3], [2, 0, 4])}  # video7 absent
    files = {'aggregated_scene_25fps_256px_stride1_offset0/densenet161-avg.pickle': scene,
             'aggregated_face_feats/facefeats-avg.pickle': face,
             'aggregated_audio_feats/Audio_MSRVTT_new.pickle': audio,
             'aggregated_speech/speech-w2v.pickle': speech,
             'raw-captions.pkl': _captions()}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        with open(root / name, 'wb') as f:
            pickle.dump(data, f)
    (root / 'train_list_full.txt').write_text('video0\nvideo1\n')
    (root / 'val_list_full.txt').write_text('video2\n')
    (root / 'test_list_full.txt').write_text('video7\n')
    return {'scene': scene, 'face': face, 'audio': audio, 'speech': speech}


def test_import_ce_pickles(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    release = tmp_path / 'MSRVTT' / 'structured-symlinks'
    truth = _ce_release(release)
    data, feats = tmp_path / 'data', tmp_path / 'features'
    with pytest.warns(UserWarning, match='pickle'):
        code = import_main(['--source', 'ce', '--root', str(release), '--dataset', 'msrvtt', '--data-root', str(data),
                            '--features-root', str(feats), '--no-progress'])
    assert code == 0
    for expert, values in truth.items():
        rows = open_store(store_path(feats, 'msrvtt', expert)).read(ids=IDS)
        for i, v in enumerate(IDS):
            value = values.get(v)
            arr = None if value is None else np.asarray(value, np.float32)
            if arr is None or arr.ndim == 0 or arr.size == 0:
                assert not rows.available[i] and rows.lengths[i] == 0, (expert, v)
                continue
            arr = arr.reshape(-1, arr.shape[-1])
            assert rows.available[i] and rows.lengths[i] == len(arr), (expert, v)
            np.testing.assert_allclose(rows.rows(i), arr, atol=2e-3)  # float16 storage
            assert np.all(rows.timestamps[i, : len(arr)] == UNKNOWN_TIME)
    # captions, in the release's order, reach the manifest (no official annotation files here)
    m = load_manifest('msrvtt', data)
    assert m.captions['video2'] == tuple(f'a caption {k} of video2' for k in range(5))
    s = m.split('full')
    assert (s.train, s.val, s.test) == (('video0', 'video1'), ('video2',), ('video7',))
    with pytest.raises(Exception, match='JSFusion'):
        m.split('1k-A').ids('test')
    # importing again replaces the imported stores; a store extracted here is kept unless --overwrite
    args = ['--source', 'ce', '--root', str(release), '--dataset', 'msrvtt', '--data-root', str(data),
            '--features-root', str(feats), '--no-progress']
    with pytest.warns(UserWarning, match='pickle'):
        assert import_main(args) == 0
    scene = store_path(feats, 'msrvtt', 'scene')
    spec = StoreSpec(dataset='msrvtt', expert='scene', feature_dim=4, max_rows=2, model='torchvision:densenet161')
    create_store(scene, IDS, spec, overwrite=True)
    with pytest.warns(UserWarning, match='pickle'):
        assert import_main(args) == 1
    assert 'holds features extracted here (torchvision:densenet161)' in capsys.readouterr().err
    assert open_store(scene).feature_dim == 4  # untouched
    with pytest.warns(UserWarning, match='pickle'):
        assert import_main([*args, '--overwrite']) == 0
    assert open_store(scene).feature_dim == 2208


def test_import_mmt_h5(tmp_path: Path) -> None:
    root = tmp_path / 'mult_h5'
    root.mkdir()
    rng = np.random.default_rng(1)
    truth = {}
    for i, v in enumerate(IDS):
        with h5py.File(root / f'{v}.h5', 'w') as h:
            motion = rng.normal(size=(2 + 3 * i, 1024)).astype(np.float32)
            h['features.motion'] = motion
            h['features_t.motion'] = np.stack([np.arange(len(motion)), np.arange(len(motion)) + 1.0], -1)
            if i != 2:  # video2 has no speech
                h['features.speech'] = rng.normal(size=(i + 1, 300)).astype(np.float32)
            else:
                h['features.speech'] = np.float32(np.nan)
            for k in range(12 if v == 'video7' else 4):  # 12: raw_captions.10 sorts before .2 as a string
                h[f'raw_captions.{k}'] = f'caption {k} of {v}'
            truth[v] = motion
    data, feats = tmp_path / 'data', tmp_path / 'features'
    assert import_main(['--source', 'mmt', '--root', str(root), '--dataset', 'msvd', '--data-root', str(data),
                        '--features-root', str(feats), '--no-progress']) == 0
    rows = open_store(store_path(feats, 'msvd', 'action')).read(ids=IDS)
    for i, v in enumerate(IDS):
        assert rows.lengths[i] == len(truth[v])
        np.testing.assert_allclose(rows.rows(i), truth[v], atol=2e-3)
        np.testing.assert_array_equal(rows.timestamps[i, : len(truth[v]), 1], np.arange(len(truth[v])) + 1.0)
    speech = open_store(store_path(feats, 'msvd', 'speech')).read(ids=IDS)
    assert speech.available.tolist() == [True, True, False, True]
    assert speech.lengths.tolist() == [1, 2, 0, 4]
    m = load_manifest('msvd', data)
    assert m.captions['video7'] == tuple(f'caption {k} of video7' for k in range(12))  # numeric order
    assert m.captions['video0'] == tuple(f'caption {k} of video0' for k in range(4))
