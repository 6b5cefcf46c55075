"""Dataset adapters on small fixture files written in each dataset's official format."""
from __future__ import annotations

import csv
import json
import re
import subprocess
from pathlib import Path

import pytest

from shared.datasets import DatasetError, load_manifest
from shared.datasets.manifest import read_split_list, resolve_inside


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding='utf-8')


def _msrvtt(root: Path, jsfusion: bool = True) -> Path:
    """All 10,000 MSR-VTT videos with three captions each, in the two official json files."""
    d = root / 'msrvtt'

    def info(rng: range, split_of) -> dict:
        return {'info': {}, 'videos': [{'video_id': f'video{i}', 'id': i, 'split': split_of(i), 'category': 0,
                                        'url': '', 'start time': 0.0, 'end time': 10.0} for i in rng],
                'sentences': [{'video_id': f'video{i}', 'caption': f'caption {k} of video {i}', 'sen_id': 3 * i + k}
                              for k in range(3) for i in rng]}

    _write_json(d / 'train_val_videodatainfo.json', info(range(7010), lambda i: 'train' if i < 6513 else 'validate'))
    _write_json(d / 'test_videodatainfo.json', info(range(7010, 10000), lambda i: 'test'))
    if jsfusion:
        with open(d / 'MSRVTT_JSFUSION_test.csv', 'w', newline='') as f:
            w = csv.writer(f)
            w.writerow(['key', 'vid_key', 'video_id', 'sentence'])
            for n, vid in enumerate(read_split_list('msrvtt', 'val_list_jsfusion.txt')):
                k = n % 3
                w.writerow([f'ret{n}', f'msr{vid[5:]}', vid, f'caption {k} of {vid.replace("video", "video ")}'])
    return d


def test_msrvtt_splits_and_captions(tmp_path: Path) -> None:
    _msrvtt(tmp_path)
    m = load_manifest('msrvtt', tmp_path)
    assert len(m) == 10000 and m.video_ids[:3] == ('video0', 'video1', 'video2') and m.video_ids[-1] == 'video9999'
    assert m.captions['video42'] == ('caption 0 of video 42', 'caption 1 of video 42', 'caption 2 of video 42')
    full = m.split('full')
    assert (len(full.train), len(full.val), len(full.test)) == (6513, 497, 2990)
    a = m.split('1k-A')
    assert (len(a.train), len(a.val), len(a.test)) == (9000, 0, 1000)
    first = a.test[0]
    assert a.query_captions[first] == (0,) and a.query_captions[a.test[1]] == (1,)
    b = m.split('1k-B')
    assert (len(b.train), len(b.val), len(b.test)) == (6656, 0, 1000)
    assert set(b.query_captions.values()) == {(0,)}
    assert m.paths[0] == (tmp_path / 'msrvtt' / 'videos' / 'video0.mp4').resolve()


@pytest.mark.parametrize('change', ['drop the last row', 'repeat a row', 'a train video'])
def test_msrvtt_1k_a_needs_one_jsfusion_query_per_test_video(tmp_path: Path, change: str) -> None:
    # a test video without a row would be queried with every caption, not one
    path = _msrvtt(tmp_path) / 'MSRVTT_JSFUSION_test.csv'
    rows = path.read_text().splitlines()
    if change == 'drop the last row':
        rows = rows[:-1]
    elif change == 'repeat a row':
        rows.append(rows[1])
    else:  # every test video keeps its row
        rows.append('ret999,msr0,video0,caption 0 of video 0')
    path.write_text('\n'.join(rows) + '\n')
    said = {'drop the last row': 'have no row', 'repeat a row': 'second query', 'a train video': 'name other videos'}
    with pytest.raises(DatasetError, match=f'MSRVTT_JSFUSION_test.csv.*{said[change]}'):
        load_manifest('msrvtt', tmp_path)


def test_msrvtt_1k_a_names_the_missing_jsfusion_file(tmp_path: Path) -> None:
    _msrvtt(tmp_path, jsfusion=False)
    m = load_manifest('msrvtt', tmp_path)
    assert len(m.split('full').test) == 2990  # other splits still work
    with pytest.raises(DatasetError, match='MSRVTT_JSFUSION_test.csv'):
        m.split('1k-A')


def test_msrvtt_missing_annotation_is_clear(tmp_path: Path) -> None:
    (tmp_path / 'msrvtt').mkdir()
    with pytest.raises(DatasetError, match='train_val_videodatainfo.json'):
        load_manifest('msrvtt', tmp_path)


def test_a_missing_demo_says_how_to_generate_it(tmp_path: Path) -> None:
    """The demo sets are generated, not downloaded: their missing folder names the command that writes
    it (it said to put 'the demo files' there, see README "Datasets", which lists only real releases)."""
    with pytest.raises(DatasetError) as err:
        load_manifest('demo', data_root=tmp_path)
    assert f'python -m shared.datasets.demo --out {tmp_path / "demo"} (make demo-data DATA_ROOT={tmp_path})' \
        in str(err.value), err.value
    with pytest.raises(DatasetError, match=r'shared\.datasets\.demo --images --out \S+demo_images '):
        load_manifest('demo_images', data_root=tmp_path)
    with pytest.raises(DatasetError, match=r'put the msvd files there'):  # a release: where to put it
        load_manifest('msvd', data_root=tmp_path)


def test_msvd(tmp_path: Path) -> None:
    d = tmp_path / 'msvd'
    d.mkdir()
    clips = (read_split_list('msvd', 'train_list.txt') + read_split_list('msvd', 'val_list.txt')
             + read_split_list('msvd', 'test_list.txt'))
    # lines not in vid order (by clip name): rows follow the vid numbers, vid10 after vid9
    mapping = sorted(f'{c} vid{i + 1}\n' for i, c in enumerate(reversed(clips)))
    (d / 'youtube_mapping.txt').write_text(''.join(mapping))
    lines = ['# MSVD descriptions', '# clip description', '']
    lines += [f'{c} a description {k} of {c}' for c in clips for k in range(2)]
    many = [f'description {k} of the last test clip, a long one as some MSVD descriptions are' for k in range(45)]
    lines += [f'{clips[-1]} {text}' for text in many]
    (d / 'AllVideoDescriptions.txt').write_text('\n'.join(lines))
    m = load_manifest('msvd', tmp_path)
    s = m.split('official')
    assert len(m) == 1970 and (len(s.train), len(s.val), len(s.test)) == (1200, 100, 670)
    assert m.video_ids == tuple(reversed(clips))  # vid1, vid2, ...
    assert m.captions[clips[-1]][2:] == tuple(many)  # every caption, whole
    assert m.captions[clips[0]] == (f'a description 0 of {clips[0]}', f'a description 1 of {clips[0]}')
    assert m.paths[0].name == f'{clips[-1]}.avi'


def test_lsmdc(tmp_path: Path) -> None:
    d = tmp_path / 'lsmdc'
    d.mkdir()
    row = '{}\t00.00.01.000\t00.00.03.000\t00.00.01.000\t00.00.03.000\t{}\n'
    (d / 'LSMDC16_annos_training.csv').write_text(
        row.format('0001_American_Beauty_00.00.51.926-00.00.54.129', 'SOMEONE walks in.')
        + row.format('0001_American_Beauty_00.01.01.000-00.01.02.000', 'He sits.')
        + row.format('0001_American_Beauty_00.00.51.926-00.00.54.129', 'SOMEONE stops.'))
    (d / 'LSMDC16_annos_val.csv').write_text(row.format('1010_TITANIC_00.00.01.000-00.00.02.000', 'A ship.'))
    (d / 'LSMDC16_challenge_1000_publictect.csv').write_text(
        row.format('3001_21_JUMP_STREET_00.00.01.000-00.00.02.000', 'They run.')
        + row.format('3001_21_JUMP_STREET_00.00.00.000-00.00.01.000', 'They stop.'))
    m = load_manifest('lsmdc', tmp_path)
    s = m.split('official')
    assert (len(s.train), len(s.val), len(s.test)) == (2, 1, 2)  # a clip with two rows is one video
    assert m.video_ids == tuple(sorted(m.video_ids))  # store rows by name, not file order
    assert m.captions['0001_American_Beauty_00.00.51.926-00.00.54.129'] == ('SOMEONE walks in.', 'SOMEONE stops.')
    assert s.test == ('3001_21_JUMP_STREET_00.00.01.000-00.00.02.000',  # the file's order, not sorted
                      '3001_21_JUMP_STREET_00.00.00.000-00.00.01.000')
    assert m.captions['1010_TITANIC_00.00.01.000-00.00.02.000'] == ('A ship.',)
    p = m.path('3001_21_JUMP_STREET_00.00.01.000-00.00.02.000')
    assert p.parent.name == '3001_21_JUMP_STREET' and p.suffix == '.avi'
    (d / 'LSMDC16_annos_val.csv').write_text('\n\tonly\n')
    with pytest.raises(DatasetError, match='LSMDC16_annos_val.csv:2'):
        load_manifest('lsmdc', tmp_path)


def test_didemo_paragraphs(tmp_path: Path) -> None:
    d = tmp_path / 'didemo'
    moment = lambda v, text: {'video': v, 'description': text, 'times': [[0, 1]], 'annotation_id': 1}  # noqa: E731
    _write_json(d / 'train_data.json', [moment('a.mp4', 'first'), moment('b.mov', 'x'), moment('a.mp4', 'second')])
    _write_json(d / 'val_data.json', [moment('c.avi', 'y')])
    _write_json(d / 'test_data.json', [moment('10052357@N03_7585070382_5762149bfc.', 'z')])
    m = load_manifest('didemo', tmp_path)
    s = m.split('official')
    assert s.paragraph and (s.train, s.val) == (('a.mp4', 'b.mov'), ('c.avi',))  # first-seen order
    assert m.captions['a.mp4'] == ('first', 'second')
    assert m.path('b.mov').name == 'b.mov'
    assert m.video_ids == ('10052357@N03_7585070382_5762149bfc.', 'a.mp4', 'b.mov', 'c.avi')  # sorted, not file order


def test_activitynet_sentences_in_time_order(tmp_path: Path) -> None:
    d = tmp_path / 'activitynet'
    entry = lambda *s: {'duration': 10.0, 'timestamps': [[t, t + 1] for t, _ in s], 'sentences': [x for _, x in s]}  # noqa: E731
    nested = {'duration': 30.0, 'timestamps': [[2, 5], [0, 20], [2, 3]], 'sentences': ['inner', 'outer', 'short']}
    _write_json(d / 'train.json', {'v_a': entry((5, 'later'), (1, 'earlier')), 'v_b': entry((0, 'b')),
                                    'v_e': nested})
    _write_json(d / 'val_1.json', {'v_c': entry((0, 'c'))})
    _write_json(d / 'val_2.json', {'v_d': entry((0, 'd'))})
    (d / 'videos').mkdir()
    (d / 'videos' / 'v_b.mkv').write_bytes(b'')
    m = load_manifest('activitynet', tmp_path)
    assert m.captions['v_a'] == ('earlier', 'later')
    assert m.captions['v_e'] == ('outer', 'short', 'inner')  # by start, then end
    assert m.video_ids == ('v_a', 'v_b', 'v_c', 'v_d', 'v_e')  # sorted, not file order
    assert m.split('val1').test == ('v_c',) and m.split('val2').test == ('v_d',) and m.split('val1').paragraph
    assert m.path('v_b').suffix == '.mkv' and m.path('v_a').suffix == '.mp4'


def test_vatex_validation_halves(tmp_path: Path) -> None:
    d = tmp_path / 'vatex'
    _write_json(d / 'vatex_training_v1.0.json', [{'videoID': f't{i}', 'enCap': [f'en {i} {k}' for k in range(10)],
                                                 'chCap': [f'zh {i} {k}' for k in range(10)]} for i in range(5)])
    validation = [f'v{7 * i % 3000:04d}' for i in range(3000)]  # not in id order: halves follow the file
    _write_json(d / 'vatex_validation_v1.0.json', [{'videoID': v, 'enCap': ['e'] * 10, 'chCap': ['z'] * 10}
                                                   for v in validation])
    m = load_manifest('vatex', tmp_path)
    s = m.split('official')
    assert (len(s.train), len(s.val), len(s.test)) == (5, 1500, 1500)
    assert (s.val, s.test) == (tuple(validation[:1500]), tuple(validation[1500:]))
    assert m.captions['t3'] == tuple(f'en 3 {k}' for k in range(10))  # English only
    assert m.video_ids == tuple(sorted(m.video_ids))  # store rows by id, not file order


def test_manifest_refuses_duplicate_ids_and_split_ids_without_a_video(tmp_path: Path) -> None:
    from shared.datasets import Manifest, Split

    paths = (tmp_path / 'a.mp4', tmp_path / 'b.mp4')
    with pytest.raises(DatasetError, match='duplicate video ids'):  # two store rows for one video
        Manifest('x', tmp_path, ('a', 'a'), paths, {}, {})
    with pytest.raises(DatasetError, match=r"split s/test: 1 ids have no video.*'c'"):
        Manifest('x', tmp_path, ('a', 'b'), paths, {}, {'s': Split('s', ('a',), (), ('b', 'c'))})
    # a video twice in a test set is two gallery rows: its queries would find it at rank 1 or 2
    with pytest.raises(DatasetError, match=r"split s/test lists video 'b' twice"):
        Manifest('x', tmp_path, ('a', 'b'), paths, {}, {'s': Split('s', ('a',), (), ('b', 'b'))})


def test_folder_adapter(tmp_path: Path) -> None:
    root = tmp_path / 'My Videos'
    (root / 'trip' / 'day 1').mkdir(parents=True)
    (root / '.cache').mkdir()
    for rel in ('b.mp4', 'a.MKV', 'trip/day 1/c.webm', 'trip/notes.txt', '.hidden.mp4', '.cache/x.mp4'):
        (root / rel).write_bytes(b'')
    m = load_manifest(f'folder:{root}')
    assert m.video_ids == ('a.MKV', 'b.mp4', 'trip/day 1/c.webm')
    assert re.fullmatch(r'folder-My_Videos-[0-9a-f]{8}', m.name) and m.split('all').test == m.video_ids
    assert m.captions['b.mp4'] == ()
    with pytest.raises(DatasetError, match='does not exist'):
        load_manifest(f'folder:{root / "trip" / "day 1" / "none"}')
    (root / 'trip' / 'day 1' / 'none').mkdir()
    with pytest.raises(DatasetError, match='no video or image files'):
        load_manifest(f'folder:{root / "trip" / "day 1" / "none"}')


def test_paths_stay_inside_the_root(tmp_path: Path) -> None:
    assert resolve_inside(tmp_path, 'a/../b.mp4') == (tmp_path / 'b.mp4').resolve()
    for bad in ('../x.mp4', 'a/../../x.mp4', '/etc/passwd', ''):
        with pytest.raises(DatasetError):
            resolve_inside(tmp_path, bad)
    d = tmp_path / 'demo'
    _write_json(d / 'demo.json', {'videos': [{'id': 'x', 'file': '../../etc/passwd', 'captions': []}],
                                  'splits': {'train': [], 'val': [], 'test': ['x']}})
    with pytest.raises(DatasetError, match='escapes the data root'):
        load_manifest('demo', tmp_path)


def test_unknown_names_are_clear(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"unknown dataset 'msrvt'.*did you mean msrvtt"):
        load_manifest('msrvt', tmp_path)
    with pytest.raises(DatasetError, match=r'dataset directory .* pass --data-root \(make: DATA_ROOT=\)'):
        load_manifest('vatex', tmp_path)  # `make caption` beside a demo made with DATA_ROOT=: what to set
    _msrvtt(tmp_path, jsfusion=False)
    with pytest.raises(DatasetError, match=r"unknown split 'fulll'.*full, 1k-A, 1k-B"):
        load_manifest('msrvtt', tmp_path).split('fulll')


def test_cli_describes_and_fails_cleanly(tmp_path: Path, python: str, subprocess_env: dict, repo_root: Path) -> None:
    _msrvtt(tmp_path, jsfusion=False)
    ok = subprocess.run([python, '-m', 'shared.datasets', 'msrvtt', '--data-root', str(tmp_path)],
                        capture_output=True, text=True, env=subprocess_env, cwd=repo_root)
    assert ok.returncode == 0 and 'split full: train 6513, val 497, test 2990' in ok.stdout
    assert '1k-A' in ok.stdout and 'unavailable' in ok.stdout and '10000 missing' in ok.stdout
    bad = subprocess.run([python, '-m', 'shared.datasets', 'lsmdc', '--data-root', str(tmp_path)],
                         capture_output=True, text=True, env=subprocess_env, cwd=repo_root)
    assert bad.returncode == 1 and 'Traceback' not in bad.stderr and 'dataset directory' in bad.stderr


def _imported(d: Path, ids: tuple[str, ...] = ('video0', 'video1')) -> None:
    """The imported.json that `pipelines.import_features` writes: a 2-video dataset."""
    _write_json(d / 'imported.json', {'source': 'ce', 'videos': list(ids), 'captions': {v: ['a caption'] for v in ids},
                                      'splits': {'full': {'train': [ids[0]], 'val': [], 'test': [ids[1]]}}})


def test_imported_json_stands_in_only_for_absent_official_files(tmp_path: Path) -> None:
    """Issue 18, item 5: an old imported.json never hides broken or partial official files."""
    d = tmp_path / 'msrvtt'
    _imported(d)
    m = load_manifest('msrvtt', tmp_path)  # no official file at all: the import stands in, and says so
    assert len(m) == 2 and 'imported.json' in m.origin and 'ce release' in m.origin
    (d / 'train_val_videodatainfo.json').write_text('{"videos": [', encoding='utf-8')  # cut short
    with pytest.raises(DatasetError, match=r'test_videodatainfo.json not found'):  # partial: one of the two
        load_manifest('msrvtt', tmp_path)
    _write_json(d / 'test_videodatainfo.json', {'videos': [], 'sentences': []})
    with pytest.raises(DatasetError, match=r'train_val_videodatainfo.json: not an MSR-VTT videodatainfo file'):
        load_manifest('msrvtt', tmp_path)  # broken
    video = {'video_id': '../../etc/passwd', 'id': 0, 'split': 'train'}
    _write_json(d / 'train_val_videodatainfo.json', {'videos': [video], 'sentences': []})
    with pytest.raises(DatasetError, match='escapes the data root'):  # a ../ path is an error, not masked
        load_manifest('msrvtt', tmp_path)
    _msrvtt(tmp_path, jsfusion=False)  # whole official files win over the import
    m = load_manifest('msrvtt', tmp_path)
    assert len(m) == 10000 and m.origin == 'official annotation files'
    _imported(tmp_path / 'msvd')  # the same rule for every dataset: one of its two files is there
    (tmp_path / 'msvd' / 'youtube_mapping.txt').write_text('clip vid1\n', encoding='utf-8')
    with pytest.raises(DatasetError, match='AllVideoDescriptions.txt not found'):
        load_manifest('msvd', tmp_path)


def test_cli_says_where_the_manifest_came_from(tmp_path: Path, python: str, subprocess_env: dict,
                                               repo_root: Path) -> None:
    _imported(tmp_path / 'msrvtt')
    out = subprocess.run([python, '-m', 'shared.datasets', 'msrvtt', '--data-root', str(tmp_path)],
                         capture_output=True, text=True, env=subprocess_env, cwd=repo_root)
    assert out.returncode == 0 and 'msrvtt: 2 videos' in out.stdout
    assert f'read from: {tmp_path / "msrvtt" / "imported.json"}' in out.stdout
