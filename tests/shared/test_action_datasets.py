"""HMDB-51 and UCF-101 manifests from split files written in the official formats (three folds each)."""
from __future__ import annotations

from pathlib import Path

import pytest

from shared.datasets import DatasetError, load_manifest


def _hmdb(root: Path) -> None:
    """Two classes; 0/1/2 = unused/train/test per fold, as testTrainMulti_7030_splits has it."""
    folder = root / 'hmdb51' / 'testTrainMulti_7030_splits'
    folder.mkdir(parents=True)
    marks = {'brush_hair': {1: '1 2 0', 2: '2 1 1', 3: '1 1 2'}, 'ride_bike': {1: '2 1 1', 2: '1 2 0', 3: '0 1 2'}}
    for cls, folds in marks.items():
        for fold, m in folds.items():
            lines = [f'{cls}_clip_{i}.avi {x} ' for i, x in enumerate(m.split())]  # the release ends lines with a space
            (folder / f'{cls}_test_split{fold}.txt').write_text('\n'.join(lines) + '\n')


def test_hmdb51_reads_the_three_official_folds(tmp_path: Path) -> None:
    _hmdb(tmp_path)
    m = load_manifest('hmdb51', tmp_path)
    assert list(m.splits) == ['fold1', 'fold2', 'fold3']
    f1 = m.split('fold1')
    assert f1.train == ('brush_hair/brush_hair_clip_0', 'ride_bike/ride_bike_clip_1', 'ride_bike/ride_bike_clip_2')
    assert f1.test == ('brush_hair/brush_hair_clip_1', 'ride_bike/ride_bike_clip_0') and f1.val == ()
    assert m.split('fold3').test == ('brush_hair/brush_hair_clip_2', 'ride_bike/ride_bike_clip_2')
    assert len(m) == 6 and m.labels['ride_bike/ride_bike_clip_0'] == 'ride_bike'
    assert m.captions['brush_hair/brush_hair_clip_1'] == ('brush hair',)
    assert m.path('ride_bike/ride_bike_clip_0') == tmp_path / 'hmdb51' / 'videos' / 'ride_bike' / 'ride_bike_clip_0.avi'


def test_hmdb51_missing_or_bad_split_files_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / 'hmdb51').mkdir()
    with pytest.raises(DatasetError, match='testTrainMulti_7030_splits'):
        load_manifest('hmdb51', tmp_path)
    _hmdb(tmp_path / 'x')
    (tmp_path / 'x' / 'hmdb51' / 'testTrainMulti_7030_splits' / 'ride_bike_test_split2.txt').unlink()
    with pytest.raises(DatasetError, match='ride_bike_test_split2.txt'):
        load_manifest('hmdb51', tmp_path / 'x')
    _hmdb(tmp_path / 'y')
    (tmp_path / 'y' / 'hmdb51' / 'testTrainMulti_7030_splits' / 'ride_bike_test_split2.txt').write_text('clip.avi 7\n')
    with pytest.raises(DatasetError, match=r'ride_bike_test_split2.txt:1: expected "<video>.avi <0\|1\|2>"'):
        load_manifest('hmdb51', tmp_path / 'y')


def _ucf(root: Path) -> Path:
    folder = root / 'ucf101' / 'ucfTrainTestlist'
    folder.mkdir(parents=True)
    (folder / 'classInd.txt').write_text('1 ApplyEyeMakeup\r\n2 HandstandPushups\r\n')  # CRLF, as released
    vids = {'ApplyEyeMakeup': ['v_ApplyEyeMakeup_g01_c01', 'v_ApplyEyeMakeup_g08_c01'],
            'HandstandPushups': ['v_HandStandPushups_g01_c01', 'v_HandStandPushups_g08_c01']}
    for k in (1, 2, 3):
        test_group = f'g0{1 if k != 2 else 8}'
        train, test = [], []
        for i, (cls, names) in enumerate(vids.items()):
            for name in names:
                entry = f'{cls}/{name}.avi'
                (test if test_group in name else train).append(entry)
                if test_group not in name:
                    train[-1] += f' {i + 1}'
        (folder / f'trainlist0{k}.txt').write_text('\r\n'.join(train) + '\r\n')
        (folder / f'testlist0{k}.txt').write_text('\r\n'.join(test) + '\r\n')
    return folder


def test_ucf101_reads_the_three_official_folds(tmp_path: Path) -> None:
    _ucf(tmp_path)
    m = load_manifest('ucf101', tmp_path)
    assert list(m.splits) == ['fold1', 'fold2', 'fold3'] and len(m) == 4
    f2 = m.split('fold2')
    assert f2.train == ('ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01', 'HandstandPushups/v_HandStandPushups_g01_c01')
    assert f2.test == ('ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01', 'HandstandPushups/v_HandStandPushups_g08_c01')
    assert m.split('fold1').test == ('ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01',
                                     'HandstandPushups/v_HandStandPushups_g01_c01')
    assert m.labels['HandstandPushups/v_HandStandPushups_g08_c01'] == 'HandstandPushups'
    assert m.captions['ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01'] == ('apply eye makeup',)
    assert m.path('ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01') == (
        tmp_path / 'ucf101' / 'videos' / 'ApplyEyeMakeup' / 'v_ApplyEyeMakeup_g01_c01.avi')


def test_ucf101_missing_or_bad_list_files_are_one_line_errors(tmp_path: Path) -> None:
    folder = _ucf(tmp_path)
    (folder / 'testlist03.txt').unlink()
    with pytest.raises(DatasetError, match='testlist03.txt not found'):
        load_manifest('ucf101', tmp_path)
    (folder / 'testlist03.txt').write_text('Skiing/v_Skiing_g01_c01.avi\n')
    with pytest.raises(DatasetError, match='testlist03.txt:1: .*a class of classInd.txt'):
        load_manifest('ucf101', tmp_path)
