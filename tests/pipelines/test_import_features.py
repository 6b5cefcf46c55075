"""The importer of the authors' released features: CE pickles and MMT h5 files written here."""
from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipelines.import_features import main as import_main
from shared.datasets import load_manifest
from shared.store import UNKNOWN_TIME, StoreSpec, create_store, open_store, replacement_path, store_path

IDS = ['video0', 'video1', 'video2', 'video7']


def _captions() -> dict[str, list[list[str]]]:
    return {v: [['a', 'caption', str(k), 'of', v] for k in range(3 + i)] for i, v in enumerate(IDS)}


def _ce_release(root: Path) -> dict[str, dict]:
    rng = np.random.default_rng(0)
    scene = {v: rng.normal(size=2208).astype(np.float32) for v in IDS}
    face = {v: rng.normal(size=512).astype(np.float32) for v in IDS}
    face['video1'] = float('nan')  # no face: CE stores a scalar NaN
    scene['video9'] = rng.normal(size=2208).astype(np.float32)  # a video the captions do not know
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
    out = capsys.readouterr().out  # a video of the release that the dataset lacks is said, not dropped silently
    assert 'scene: 1 of the 5 videos of ' in out and 'are not in raw-captions.pkl (e.g. video9): not imported' in out
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
                h['features.speech'] = speech = rng.normal(size=(i + 1, 300)).astype(np.float32)
                if i == 3:  # words listed out of time order: stored in it (a store refuses rows that go back)
                    h['features_t.speech'] = np.array([[3, 4], [1, 2], [2, 3], [0, 1]], np.float32)
                    truth['speech'] = speech[[3, 1, 2, 0]]
                if i == 1:  # a row ending before it starts: the video's times are unknown, its rows kept
                    h['features_t.speech'] = np.array([[0, 1], [2, 1.5]], np.float32)
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
    np.testing.assert_allclose(speech.rows(3), truth['speech'], atol=2e-3)
    np.testing.assert_array_equal(speech.timestamps[3, :4, 0], [0, 1, 2, 3])
    assert (speech.timestamps[1, :2] < 0).all()  # unknown
    m = load_manifest('msvd', data)
    assert m.captions['video7'] == tuple(f'caption {k} of video7' for k in range(12))  # numeric order
    assert m.captions['video0'] == tuple(f'caption {k} of video0' for k in range(4))


def _ce_args(release: Path, data: Path, feats: Path, dataset: str = 'msrvtt') -> list[str]:
    return ['--source', 'ce', '--root', str(release), '--dataset', dataset, '--data-root', str(data),
            '--features-root', str(feats), '--no-progress']


@pytest.mark.parametrize('name', ['../../x', '..', '.', 'a/b', 'ABSOLUTE', ''])
def test_dataset_names_stay_inside_the_roots(name: str, tmp_path: Path, capsys: pytest.CaptureFixture,
                                             repo_root: Path) -> None:
    """Issue 18, item 8: `--dataset ../../x` wrote imported.json outside the data root."""
    release = tmp_path / 'release'
    _ce_release(release)
    data, feats = tmp_path / 'a' / 'b' / 'data', tmp_path / 'a' / 'b' / 'features'
    name = str(tmp_path / 'abs') if name == 'ABSOLUTE' else name
    before = sorted(tmp_path.rglob('*'))
    with pytest.warns(UserWarning, match='pickle'):
        assert import_main(_ce_args(release, data, feats, name)) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and f'dataset name {name!r} is not a plain name' in err
    assert sorted(tmp_path.rglob('*')) == before  # nothing written anywhere
    for other in ('train', 'extract'):  # the same check, from the same place, for the other commands
        from extract.run import main as extract_main
        from train.main import main as train_main

        run = extract_main if other == 'extract' else train_main
        args = ['--expert', 'scene'] if other == 'extract' else \
            ['--config', str(repo_root / 'pipelines' / 'configs' / 'train' / 'mee_demo.yaml')]
        assert run(['--dataset', name, '--data-root', str(data), '--features-root', str(feats), *args]) == 1
        assert 'is not a plain name' in capsys.readouterr().err


def test_a_failed_reimport_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Issue 18, item 8: a re-import whose second expert's file is bad left the first one replaced."""
    release = tmp_path / 'release'
    _ce_release(release)
    data, feats = tmp_path / 'data', tmp_path / 'features'
    with pytest.warns(UserWarning, match='pickle'):
        assert import_main(_ce_args(release, data, feats)) == 0

    def snapshot() -> dict[str, bytes]:
        return {str(p.relative_to(tmp_path)): p.read_bytes() for p in sorted((tmp_path / 'data').rglob('*'))
                + sorted(feats.rglob('*')) if p.is_file()}

    before = snapshot()
    # new values for two experts; the second one read (audio, after scene: CE_FILES order) has a video of a bad shape
    rng = np.random.default_rng(5)
    for name, dim in (('aggregated_audio_feats/Audio_MSRVTT_new.pickle', 128),
                      ('aggregated_scene_25fps_256px_stride1_offset0/densenet161-avg.pickle', 2208)):
        values = {v: rng.normal(size=(2, dim)).astype(np.float32) for v in IDS}
        if dim == 128:
            values['video2'] = np.zeros((2, 2, dim), np.float32)
        with open(release / name, 'wb') as f:
            pickle.dump(values, f)
    with open(release / 'raw-captions.pkl', 'wb') as f:
        pickle.dump({v: [['new', 'words']] for v in IDS}, f)
    with pytest.warns(UserWarning, match='pickle'):
        assert import_main(_ce_args(release, data, feats)) == 1
    err = capsys.readouterr().err
    assert 'Audio_MSRVTT_new.pickle: video video2: expected (D,) or (T, D) features' in err
    assert snapshot() == before  # every store and imported.json as they were; nothing staged is left
    assert sorted(p.name for p in (feats / 'msrvtt').iterdir()) == sorted(f'{e}.zarr' for e in
                                                                          ('audio', 'face', 'scene', 'speech'))


def test_an_h5_release_without_features_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Issue 18, item 8: h5 files with captions but no `features.*` keys wrote nothing and exited 0."""
    root = tmp_path / 'mult_h5'
    root.mkdir()
    for v in IDS:
        with h5py.File(root / f'{v}.h5', 'w') as h:
            h['raw_captions.0'] = f'a caption of {v}'
    data = tmp_path / 'data'
    assert import_main(['--source', 'mmt', '--root', str(root), '--dataset', 'msvd', '--data-root', str(data),
                        '--features-root', str(tmp_path / 'features'), '--no-progress']) == 1
    assert 'no features.EXPERT datasets in the 4 .h5 files' in capsys.readouterr().err
    assert not data.exists() and not (tmp_path / 'features').exists()


def _files_under(*roots: Path) -> list[Path]:
    return sorted(p for r in roots if r.exists() for p in r.rglob('*') if p.is_file())


BAD_PICKLES = {  # reviewer's defect 1 of issue 18: each gave a traceback
    'captions as a list': ('raw-captions.pkl', lambda f: pickle.dump(['a', 'b'], f), 'holds a list, not CE captions'),
    'features as a list': ('aggregated_audio_feats/Audio_MSRVTT_new.pickle', lambda f: pickle.dump([1, 2], f),
                           'holds a list, not a CE feature pickle'),
    'not a pickle': ('aggregated_audio_feats/Audio_MSRVTT_new.pickle', lambda f: f.write(b'hello, world\n'),
                     'not a readable pickle (UnpicklingError'),
    'cut short': ('raw-captions.pkl', lambda f: f.write(pickle.dumps(_captions())[:50]), 'not a readable pickle ('),
    'a caption that is a number': ('raw-captions.pkl', lambda f: pickle.dump({'video0': 5}, f),
                                   "video 'video0': captions must be a list of token lists"),
    'a feature value that is a dict': ('aggregated_audio_feats/Audio_MSRVTT_new.pickle',
                                       lambda f: pickle.dump({'video0': {'a': 1}}, f), 'video video0: '),
    'ids 1 and "1"': ('raw-captions.pkl', lambda f: pickle.dump({1: [['a']], '1': [['b']]}, f),
                      "video id '1' is there twice"),
    # probe 7: these were imported, exit 0, and every later command refused the dataset (the path escapes)
    'a video id that leads out': ('raw-captions.pkl', lambda f: pickle.dump({**_captions(), '../../x': [['a']]}, f),
                                  "video id '../../x' is not one a video file can have"),
    'a NUL in a video id': ('raw-captions.pkl', lambda f: pickle.dump({**_captions(), 'a\x00b': [['a']]}, f),
                            "video id 'a\\x00b' is not one"),
    # probe 7: the error named no file; a split list with a NUL byte was read as ids
    'a split list not UTF-8': ('train_list_full.txt', lambda f: f.write(b'video0\n\xff\xfe\n'),
                               'not UTF-8 text (byte 7), so not a split list'),
    'a split list of binary data': ('train_list_full.txt', lambda f: f.write(b'video0\x00\x01'),
                                    'binary data (a NUL byte), not a split list'),
    # probe 7: the (0,) set D=0 and the error blamed the next, well-formed video
    'an empty first feature': ('aggregated_audio_feats/Audio_MSRVTT_new.pickle',
                               lambda f: pickle.dump({'video0': np.zeros(0, np.float32),
                                                      'video1': np.ones(128, np.float32)}, f),
                               'video video0: expected (D,) or (T, D) features, got shape (1, 0)'),
}


@pytest.mark.parametrize('case', list(BAD_PICKLES))
def test_a_release_file_of_another_kind_is_one_line(case: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    release = tmp_path / 'release'
    _ce_release(release)
    name, write, said = BAD_PICKLES[case]
    with open(release / name, 'wb') as f:
        write(f)
    data, feats = tmp_path / 'data', tmp_path / 'features'
    with pytest.warns(UserWarning, match='pickle'):
        assert import_main(_ce_args(release, data, feats)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f'error: {release / name}: ') and err.count('\n') == 1 and said in err, err
    assert _files_under(data, feats) == []  # nothing written


def test_features_beyond_float16_name_the_release_file_and_the_video(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    """Probe 7: the error said 'row 1: features beyond the range of float16', naming neither."""
    release = tmp_path / 'release'
    audio = _ce_release(release)['audio']
    audio['video2'] = np.full((3, 128), 1e30, np.float32)
    with open(release / 'aggregated_audio_feats/Audio_MSRVTT_new.pickle', 'wb') as f:
        pickle.dump(audio, f)
    data, feats = tmp_path / 'data', tmp_path / 'features'
    with pytest.warns(UserWarning, match='pickle'):
        assert import_main(_ce_args(release, data, feats)) == 1
    err = capsys.readouterr().err
    assert err.startswith('error: aggregated_audio_feats/Audio_MSRVTT_new.pickle: video video2: features beyond the '
                          'range of float16') and err.count('\n') == 1, err
    assert _files_under(data, feats) == []


def _mmt_release(root: Path) -> None:
    root.mkdir()
    for v in IDS:
        with h5py.File(root / f'{v}.h5', 'w') as h:
            h['features.audio'] = np.ones((3, 16), np.float32)
            h['raw_captions.0'] = f'a caption of {v}'


BAD_H5 = {  # probe 7: each was a line naming neither the file nor the video (a release has ~10k files)
    'not HDF5': (lambda p: p.write_bytes(b'not an hdf5 file'), 'cannot read it as an HDF5 file'),
    'a feature of text': (lambda p: _h5_write(p, {'features.audio': b'abc'}), 'could not convert string to float'),
    'a feature of another D': (lambda p: _h5_write(p, {'features.audio': np.ones((3, 8), np.float32)}),
                               'with D=16, got shape (3, 8)'),
    'a caption key that is no number': (lambda p: _h5_write(p, {'raw_captions.x': b'a'}), "invalid literal for int()"),
    'a caption not UTF-8': (lambda p: _h5_write(p, {'raw_captions.0': np.bytes_(b'\xff\xfe')}), "can't decode byte"),
    # data kept in a file outside the release: HDF5 read it, and a secret's bytes became a caption in imported.json
    'a caption stored in another file': (lambda p: _h5_elsewhere(p, 'storage'), 'keeps its data in other files ('),
    'a feature linked from another file': (lambda p: _h5_elsewhere(p, 'link'), 'is a link to /features.audio in'),
    # a soft link whose target is an external link under a key the importer does not read
    'a caption soft-linked to another file': (lambda p: _h5_elsewhere(p, 'soft'), 'is a soft link to /hidden'),
    # probe 12: complex features imported their real parts (numpy's cast warns only), and a caption dataset
    # of numbers became the caption '1.0 1.0 1.0' in imported.json
    'features of complex numbers': (lambda p: _h5_write(p, {'features.audio': np.ones((2, 16), np.complex64)}),
                                    'features of complex numbers (complex64)'),
    'a caption of numbers': (lambda p: _h5_write(p, {'raw_captions.0': np.ones(3)}),
                             'a caption holds float 1.0, not text'),
}


def _h5_elsewhere(path: Path, how: str) -> None:
    """`path` with data kept outside the release: a caption in a secret's bytes (HDF5 external storage),
    or its features an external link to another HDF5 file, or a caption a soft link to such a link."""
    secret, other = path.parents[1] / 'secret.txt', path.parents[1] / 'other.h5'
    secret.write_bytes(b'TOPSECRET' * 4)
    with h5py.File(other, 'w') as h:
        h['features.audio'] = np.ones((2, 16), np.float32)
    path.unlink()
    with h5py.File(path, 'w') as h:
        if how == 'storage':
            h['features.audio'] = np.ones((2, 16), np.float32)
            h.create_dataset('raw_captions.0', shape=(1,), dtype='S32', external=[(str(secret), 0, 32)])
        elif how == 'soft':
            h['features.audio'] = np.ones((2, 16), np.float32)
            h['hidden'] = h5py.ExternalLink(str(other), '/features.audio')
            h['raw_captions.0'] = h5py.SoftLink('/hidden')
        else:
            h['features.audio'] = h5py.ExternalLink(str(other), '/features.audio')
            h['raw_captions.0'] = 'a caption'


def _h5_write(path: Path, values: dict) -> None:
    path.unlink()
    with h5py.File(path, 'w') as h:
        h['features.audio'] = np.ones((2, 16), np.float32)
        for k, v in values.items():
            if k in h:
                del h[k]
            h[k] = v


@pytest.mark.parametrize('case', list(BAD_H5))
def test_a_bad_mmt_file_is_one_line_naming_it(case: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / 'mult_h5'
    _mmt_release(root)
    write, said = BAD_H5[case]
    write(root / 'video2.h5')
    data, feats = tmp_path / 'data', tmp_path / 'features'
    assert import_main(['--source', 'mmt', '--root', str(root), '--dataset', 'msvd', '--data-root', str(data),
                        '--features-root', str(feats), '--no-progress']) == 1
    err = capsys.readouterr().err
    assert err.startswith(f'error: {root / "video2.h5"}: ') and err.count('\n') == 1 and said in err, err
    assert _files_under(data, feats) == []


@pytest.mark.parametrize('name', ['myset', 'msrvtt.'])
def test_only_a_registered_dataset_can_be_imported(name: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Reviewer's defect 8 of issue 18: any plain name was imported, exit 0, and every later
    command said "unknown dataset"."""
    release = tmp_path / 'release'
    _ce_release(release)
    data, feats = tmp_path / 'data', tmp_path / 'features'
    with pytest.warns(UserWarning, match='pickle'):
        assert import_main(_ce_args(release, data, feats, name)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f'error: unknown dataset {name!r} (known: ') and err.count('\n') == 1, err
    assert 'import as one of them' in err and _files_under(data, feats) == []


def test_an_import_leaves_an_overwrite_in_progress_and_prints_each_verdict(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Reviewer's defect 11 of issue 18: the import built in `.NAME.overwrite-new` and removed the
    replacement an `extract --overwrite` was building there; each store's check printed only its
    first line, with no verdict."""
    release = tmp_path / 'release'
    _ce_release(release)
    data, feats = tmp_path / 'data', tmp_path / 'features'
    scene = store_path(feats, 'msrvtt', 'scene')
    building = create_store(replacement_path(scene), IDS, StoreSpec(dataset='msrvtt', expert='scene', feature_dim=4,
                                                                     max_rows=2, model='torchvision:densenet161'))
    with pytest.warns(UserWarning, match='pickle'):
        assert import_main(_ce_args(release, data, feats)) == 0
    assert open_store(building.path).feature_dim == 4  # the extraction's replacement, untouched
    out = capsys.readouterr().out
    assert out.count('result    VALID, COMPLETE') == 4, out
    assert f'leftover  {building.path.name}' in out  # check names it, as for any store


def test_ctrl_c_during_the_commit_waits_until_the_import_is_whole(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Reviewer's defect 11 of issue 18: the stores were swapped in one after another, so a
    Ctrl-C between two swaps left an import half applied."""
    import os
    import signal

    import pipelines.import_features as imp

    release = tmp_path / 'release'
    _ce_release(release)
    data, feats = tmp_path / 'data', tmp_path / 'features'
    real_swap = imp.swap_in

    def swap_then_ctrl_c(store):
        swapped = real_swap(store)
        os.kill(os.getpid(), signal.SIGINT)  # arrives after the first store is in place
        return swapped

    monkeypatch.setattr(imp, 'swap_in', swap_then_ctrl_c)
    with pytest.warns(UserWarning, match='pickle'), pytest.raises(KeyboardInterrupt):
        import_main(_ce_args(release, data, feats))
    for expert in ('audio', 'face', 'scene', 'speech'):  # every store and imported.json are there
        assert open_store(store_path(feats, 'msrvtt', expert)).attrs['model'] == 'imported:ce'
    assert len(load_manifest('msrvtt', data)) == len(IDS)


class _RunsCode:
    """What a hostile pickle holds: unpickling it calls os.system (here: touch a file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        import os
        return os.system, (f'touch {self.marker}',)


@pytest.mark.parametrize('where', ['raw-captions.pkl', 'aggregated_face_feats/facefeats-avg.pickle'])
def test_a_pickle_that_would_run_code_is_refused_unrun(where: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    release = tmp_path / 'release'
    _ce_release(release)
    marker = tmp_path / 'ran'
    with open(release / where, 'rb') as f:
        good = pickle.load(f)
    good[IDS[1]] = _RunsCode(marker)  # one value among the real ones, as a tampered download would hold it
    with open(release / where, 'wb') as f:
        pickle.dump(good, f)
    with pytest.warns(UserWarning, match='pickle'):
        code = import_main(['--source', 'ce', '--root', str(release), '--dataset', 'msrvtt', '--data-root',
                            str(tmp_path / 'data'), '--features-root', str(tmp_path / 'features'), '--no-progress'])
    err = capsys.readouterr().err
    assert code == 1 and not marker.exists()
    assert f'{where}: refused: the pickle would call posix.system' in err and 'Traceback' not in err
    assert not list((tmp_path / 'features').rglob('zarr.json'))  # no store written


@pytest.mark.parametrize('protocol', [2, 5])
def test_release_pickles_of_every_protocol_still_import(protocol: int, tmp_path: Path) -> None:
    """The restricted unpickler builds what releases hold: numpy arrays and scalars, NaN, OrderedDict,
    in protocol 2 (Python 2's, numpy 1's `numpy.core` names) and 5 (out-of-band `_frombuffer`)."""
    import collections

    release = tmp_path / 'release'
    truth = _ce_release(release)
    scene = collections.OrderedDict((v, x) for v, x in truth['scene'].items())
    scene[IDS[0]] = np.float32(1.5) * scene[IDS[0]]
    for name, data in (('aggregated_scene_25fps_256px_stride1_offset0/densenet161-avg.pickle', scene),
                       ('raw-captions.pkl', _captions())):
        with open(release / name, 'wb') as f:
            pickle.dump(data, f, protocol=protocol)
    with pytest.warns(UserWarning, match='pickle'):
        code = import_main(['--source', 'ce', '--root', str(release), '--dataset', 'msrvtt', '--data-root',
                            str(tmp_path / 'data'), '--features-root', str(tmp_path / 'features'), '--no-progress'])
    assert code == 0
    rows = open_store(store_path(tmp_path / 'features', 'msrvtt', 'scene')).read(ids=IDS)
    assert np.array_equal(rows.rows(0)[0], scene[IDS[0]].astype(np.float16))


def test_lists_nested_deeper_than_rows_are_refused_before_numpy_reads_them(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    """A pickle names one list many times: a few hundred bytes of lists nested 8 deep were 10**8 numbers
    that numpy built (35 s, 0.8 GB) before the shape was refused; 10 deep, 100 times that."""
    release = tmp_path / 'release'
    _ce_release(release)
    nested: list = [0.5] * 10
    for _ in range(6):
        nested = [nested] * 10  # 10**7 numbers here, so that the test is quick even without the guard
    with open(release / 'aggregated_face_feats/facefeats-avg.pickle', 'wb') as f:
        pickle.dump({IDS[0]: nested}, f)
    assert (release / 'aggregated_face_feats/facefeats-avg.pickle').stat().st_size < 1000
    with pytest.warns(UserWarning, match='pickle'):
        code = import_main(['--source', 'ce', '--root', str(release), '--dataset', 'msrvtt', '--data-root',
                            str(tmp_path / 'data'), '--features-root', str(tmp_path / 'features'), '--no-progress'])
    err = capsys.readouterr().err
    assert code == 1 and f'video {IDS[0]}: features are lists nested more than two deep' in err, err


def test_captions_naming_one_text_many_times_are_refused_before_they_are_built(tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture) -> None:
    """A pickle names one string many times (its memo): 1 MB of raw-captions.pkl stood for 400 million
    characters of captions (0.9 GB in the importer), all of which went into imported.json."""
    release = tmp_path / 'release'
    _ce_release(release)
    text = 'word ' * 20_000  # 100 KB, pickled once, then named by the memo
    with open(release / 'raw-captions.pkl', 'wb') as f:
        pickle.dump({v: [text] * 100 for v in IDS}, f)
    assert (release / 'raw-captions.pkl').stat().st_size < 110_000
    with pytest.warns(UserWarning, match='pickle'):
        code = import_main(['--source', 'ce', '--root', str(release), '--dataset', 'msrvtt', '--data-root',
                            str(tmp_path / 'data'), '--features-root', str(tmp_path / 'features'), '--no-progress'])
    err = capsys.readouterr().err
    assert code == 1 and 'more than 16 per byte of the file (the same text named many times)' in err, err
    assert 'Traceback' not in err and not (tmp_path / 'data' / 'msrvtt' / 'imported.json').exists()


def _release_with_face_value(tmp_path: Path, value: object) -> tuple[Path, Path]:
    """A CE release whose face pickle holds `value` for one video among the real ones."""
    release = tmp_path / 'release'
    _ce_release(release)
    pkl = release / 'aggregated_face_feats/facefeats-avg.pickle'
    with open(pkl, 'rb') as f:
        good = pickle.load(f)
    good[IDS[1]] = value
    with open(pkl, 'wb') as f:
        pickle.dump(good, f, protocol=4)
    return release, pkl


class _ForgedArray:
    """numpy.ndarray called with a buffer of the file's choosing: an object array of forged pointers."""

    def __reduce__(self) -> tuple:
        return np.ndarray, ((1,), np.dtype('O'), b'A' * 8)


class _DeclaredArray:
    """An empty object array declared at 2 * 10**8 values by numpy's own _reconstruct (1.6 GB, 9 s)."""

    def __reduce__(self) -> tuple:
        from numpy._core.multiarray import _reconstruct
        return _reconstruct, (np.ndarray, (2 * 10**8,), np.dtype('O'))


@pytest.mark.parametrize('value, said', [
    (_ForgedArray(), 'refused: the pickle would call numpy.ndarray with a buffer of its own'),  # was a segfault
    (_DeclaredArray(), 'an array of 200000000 values of object is declared'),
    ([[0.5] * 2000] * 2000, 'its lists hold'),  # 4 * 10**6 numbers from a few KB: the same row named 2000 times
])
def test_a_pickle_that_stands_for_far_more_than_its_bytes_or_forges_an_array_is_refused(
        value: object, said: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A 107-byte pickle calling numpy.ndarray with its own buffer crashed the importer (SIGSEGV, in a
    child here so that the test survives it); a 141-byte one declared 1.6 GB of object array; two-deep
    lists named many times grow with the square of the file."""
    import subprocess
    import sys

    release, pkl = _release_with_face_value(tmp_path, value)
    args = ['--source', 'ce', '--root', str(release), '--dataset', 'msrvtt', '--data-root', str(tmp_path / 'data'),
            '--features-root', str(tmp_path / 'features'), '--no-progress']
    proc = subprocess.run([sys.executable, '-m', 'pipelines.import_features', *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], timeout=300)
    assert proc.returncode == 1 and said in proc.stderr and 'Traceback' not in proc.stderr, (proc.returncode,
                                                                                               proc.stderr[-800:])


class _ShortObjectState:
    """An object array whose pickled state lists fewer objects than its shape: numpy's __setstate__
    reads past the list (a segfault), whatever the unpickler allows."""

    def __reduce__(self) -> tuple:
        from numpy._core.multiarray import _reconstruct
        return _reconstruct, (np.ndarray, (0,), np.dtype('O')), (1, (1000,), np.dtype('O'), False, [])


class _HexChain:
    """_codecs.encode(x, 'hex_codec') nested: each doubles x (64 B * 2**30 from a few hundred bytes)."""

    def __init__(self, depth: int) -> None:
        self.depth = depth

    def __reduce__(self) -> tuple:
        import _codecs
        return _codecs.encode, (_HexChain(self.depth - 1) if self.depth else b'A' * 64, 'hex_codec')


@pytest.mark.parametrize('value, said', [
    (_ShortObjectState(), 'reading it crashed (SIGSEGV)'),
    (_HexChain(30), 'reading it ran out of its limits (MemoryError)'),
])
def test_a_pickle_that_crashes_or_exhausts_its_reader_is_one_line_and_imports_nothing(
        value: object, said: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Pickles within the allow-list that still crash numpy or take gigabytes (a reviewer built six):
    each pickle is read by a child process under memory and time limits, so the import says which
    file and stops; before, the first killed the importer (SIGSEGV) and the second took 64 GB."""
    release, pkl = _release_with_face_value(tmp_path, value)
    with pytest.warns(UserWarning, match='pickle'):
        code = import_main(['--source', 'ce', '--root', str(release), '--dataset', 'msrvtt', '--data-root',
                            str(tmp_path / 'data'), '--features-root', str(tmp_path / 'features'), '--no-progress'])
    err = capsys.readouterr().err
    assert code == 1 and f'{pkl}: {said}' in err and 'Traceback' not in err, err
    assert not list((tmp_path / 'features').rglob('zarr.json'))  # no store written


def test_a_protocol_2_pickle_of_a_set_imports(tmp_path: Path) -> None:
    """Python 3 writes a set as __builtin__.set in protocol 2, which the allow-list refused."""
    from pipelines.release_pickle import _read_pickle

    path = tmp_path / 'p2.pkl'
    with open(path, 'wb') as f:
        pickle.dump({'v': {1, 2}, 'a': np.arange(3, dtype=np.float32)}, f, protocol=2)
    got = _read_pickle(path)
    assert got['v'] == {1, 2} and np.array_equal(got['a'], np.arange(3, dtype=np.float32))


def test_an_h5_dataset_far_larger_than_its_file_is_refused_unread(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """An HDF5 dataset never written reads as its fill value: a 6 KB file declaring (100000, 2048) float32
    features took 76 s and 1.7 GB to import as a store of zeros (10**6 rows: 8 GB). Its size is checked
    against what the file holds of it first. (The free size is lowered here to keep the test small.)"""
    import pipelines.import_features as imp

    monkeypatch.setattr(imp, '_H5_FREE_BYTES', 1 << 20, raising=False)
    root = tmp_path / 'mult_h5'
    root.mkdir()
    with h5py.File(root / 'video0.h5', 'w') as h:
        h.create_dataset('features.motion', shape=(2000, 1024), dtype='f4', chunks=(100, 1024), compression='gzip')
        h['raw_captions.0'] = 'a caption'
    with h5py.File(root / 'video1.h5', 'w') as h:  # written data far over the free size is fine
        h['features.motion'] = np.random.default_rng(0).normal(size=(600, 1024)).astype(np.float32)
        h['raw_captions.0'] = 'another caption'
    assert (root / 'video0.h5').stat().st_size < 20_000
    code = import_main(['--source', 'mmt', '--root', str(root), '--dataset', 'msvd', '--data-root',
                        str(tmp_path / 'data'), '--features-root', str(tmp_path / 'features'), '--no-progress'])
    err = capsys.readouterr().err
    assert code == 1 and f'{root / "video0.h5"}: features.motion declares (2000, 1024) values' in err, err
    assert 'refused, not read' in err and 'video1' not in err
