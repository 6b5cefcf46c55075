"""Broken annotation files are one line naming the file, never a traceback (issue 18, item 10):
captions given as a list, a file that is not UTF-8, JSON nested 100,000 deep, binary data where a
CSV or text file belongs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.datasets.__main__ import main as datasets_main
from tests.shared.test_datasets import _msrvtt

BINARY = bytes(range(256)) * 4  # NUL bytes and invalid UTF-8


def _demo(root: Path, captions: object) -> Path:
    d = root / 'demo'
    d.mkdir(parents=True)
    ids = ['demo0000', 'demo0001']
    videos = [{'id': v, 'file': f'videos/{v}.mp4', 'captions': ['a red cat', 'a cat']} for v in ids]
    videos[1]['captions'] = captions
    (d / 'demo.json').write_text(json.dumps({'videos': videos, 'splits': {'train': ids[:1], 'val': [],
                                                                           'test': ids[1:]}}))
    return d / 'demo.json'


def _imported_with_list_captions(root: Path) -> Path:
    d = root / 'msvd'
    d.mkdir(parents=True)
    data = {'videos': ['v0', 'v1'], 'captions': {'v0': ['a cat'], 'v1': [['a', 'dog']]},
            'splits': {'official': {'train': ['v0'], 'test': ['v1']}}}
    (d / 'imported.json').write_text(json.dumps(data))
    return d / 'imported.json'


def _msvd_latin1(root: Path) -> Path:
    d = root / 'msvd'
    d.mkdir(parents=True)
    (d / 'youtube_mapping.txt').write_text('clipA vid1\n')
    (d / 'AllVideoDescriptions.txt').write_bytes('clipA a man in a caf\u00e9\n'.encode('latin-1'))
    return d / 'AllVideoDescriptions.txt'


def _didemo_deep(root: Path) -> Path:
    d = root / 'didemo'
    d.mkdir(parents=True)
    for name in ('train_data.json', 'val_data.json', 'test_data.json'):
        (d / name).write_text('[' * 100_000 + ']' * 100_000)
    return d / 'train_data.json'


def _didemo_empty_id(root: Path) -> Path:
    """A moment whose video is '': its path was the videos folder, and its store row (an empty id) what
    a lost chunk file of a store's ids reads as."""
    d = root / 'didemo'
    d.mkdir(parents=True)
    moment = {'description': 'a man walks', 'times': [[0, 1]]}
    for name in ('train_data.json', 'val_data.json', 'test_data.json'):
        (d / name).write_text(json.dumps([{**moment, 'video': 'a.mp4'}, {**moment, 'video': ''}]))
    return d / 'train_data.json'


def _lsmdc_binary(root: Path) -> Path:
    d = root / 'lsmdc'
    d.mkdir(parents=True)
    for name in ('LSMDC16_annos_training.csv', 'LSMDC16_annos_val.csv', 'LSMDC16_challenge_1000_publictect.csv'):
        (d / name).write_bytes(BINARY)
    return d / 'LSMDC16_annos_training.csv'


def _lsmdc_nul(root: Path) -> Path:
    """Valid UTF-8, but binary: NUL bytes."""
    d = root / 'lsmdc'
    d.mkdir(parents=True)
    for name in ('LSMDC16_annos_training.csv', 'LSMDC16_annos_val.csv', 'LSMDC16_challenge_1000_publictect.csv'):
        (d / name).write_bytes(b'\x00\x01\x02clip_x\t\x00\tA ship.\n')
    return d / 'LSMDC16_annos_training.csv'


def _jsfusion_binary(root: Path) -> Path:
    d = _msrvtt(root, jsfusion=False)
    (d / 'MSRVTT_JSFUSION_test.csv').write_bytes(BINARY)
    return d / 'MSRVTT_JSFUSION_test.csv'


CASES = {
    'demo captions as a string': ('demo', lambda r: _demo(r, 'a dog'), ('demo0001', 'list of strings')),
    'demo captions as lists': ('demo', lambda r: _demo(r, [['a', 'dog']]), ('demo0001', 'list of strings')),
    'imported captions as lists': ('msvd', _imported_with_list_captions, ("'v1'", 'list of strings')),
    'not UTF-8': ('msvd', _msvd_latin1, ('not UTF-8', 'so not an MSVD descriptions file')),
    'JSON 100,000 deep': ('didemo', _didemo_deep, ('not a DiDeMo annotation file', 'nested too deeply')),
    'empty video id': ('didemo', _didemo_empty_id, ('a video id is empty',)),
    'binary CSV': ('lsmdc', _lsmdc_binary, ('not UTF-8', 'so not an LSMDC annotation CSV')),
    'NUL bytes in a CSV': ('lsmdc', _lsmdc_nul, ('binary data',)),
    'binary JSFusion CSV': ('msrvtt', _jsfusion_binary, ('not UTF-8', 'so not a JSFusion query CSV')),
}


@pytest.mark.parametrize('case', list(CASES))
def test_a_broken_annotation_file_is_one_line(case: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dataset, make, words = CASES[case]
    path = make(tmp_path)
    code = datasets_main([dataset, '--data-root', str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and 'Traceback' not in err and err.startswith('error: ') and err.count('\n') == 1, err
    assert path.parent.name in err, err  # names the file (or the dataset folder, for a caption's video)
    for w in words:
        assert w in err, err


def test_msrvtt_captions_given_as_lists_name_the_video(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    d = _msrvtt(tmp_path, jsfusion=False)
    info = json.loads((d / 'test_videodatainfo.json').read_text())
    info['sentences'][0]['caption'] = ['a', 'list']
    (d / 'test_videodatainfo.json').write_text(json.dumps(info))
    assert datasets_main(['msrvtt', '--data-root', str(tmp_path)]) == 1
    err = capsys.readouterr().err
    vid = info['sentences'][0]['video_id']
    assert err.count('\n') == 1 and f'video {vid!r}' in err and 'list of strings' in err, err


@pytest.mark.parametrize('name', ['folder:', 'folder:  '])
def test_folder_with_an_empty_path_is_refused_not_the_working_directory(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Reviewer's defect 2 of issue 18: ``folder:`` became Path('') == '.', and listed the videos of
    the directory the command ran in."""
    (tmp_path / 'a.mp4').write_bytes(b'not looked at')
    monkeypatch.chdir(tmp_path)
    assert datasets_main([name]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f'error: --dataset {name!r} names no directory: give folder:PATH'), err
    assert err.count('\n') == 1, err
    assert datasets_main(['folder:.']) == 0  # the current directory, when asked for
    assert '1 video,' in capsys.readouterr().out
