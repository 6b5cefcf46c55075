"""Timed captions (issue 22, item 1): ActivityNet sentences and DiDeMo moments keep their seconds,
and their paragraph protocols give the same queries as before."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.datasets import DatasetError, load_manifest
from train.data import split_captions


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding='utf-8')


def test_activitynet_sentences_keep_their_seconds(tmp_path: Path) -> None:
    d = tmp_path / 'activitynet'
    entry = lambda *s: {'duration': 60.0, 'timestamps': [[a, b] for a, b, _ in s],  # noqa: E731
                        'sentences': [x for _, _, x in s]}
    _write_json(d / 'train.json', {'v_a': entry((12.5, 30, 'later'), (0.0, 12.5, ' earlier ')),
                                    'v_b': entry((3, 9.75, 'b'))})
    _write_json(d / 'val_1.json', {'v_c': entry((40, 55.5, 'c two'), (1, 20, 'c one'))})
    # val_2 annotates val_1's videos again (4,885 of its 4,917)
    _write_json(d / 'val_2.json', {'v_c': entry((30, 50, 'again later'), (2, 10, 'c again'))})
    m = load_manifest('activitynet', tmp_path)
    assert m.captions['v_a'] == ('earlier', 'later')
    assert m.caption_times['v_a'] == ((0.0, 12.5), (12.5, 30.0))  # in the sentences' order
    assert m.caption_times['v_b'] == ((3.0, 9.75),) and m.caption_times['v_c'] == ((1.0, 20.0), (40.0, 55.5))
    # the paragraph protocol: one query per test video, its sentences joined in time order, as before
    ids, texts, owner, query = split_captions(m, 'val1', 'test')
    assert (ids, texts, owner.tolist(), query.tolist()) == (['v_c'], ['c one c two'], [0], [0])
    ids, texts, _, _ = split_captions(m, 'val1', 'train')
    assert (ids, texts) == (['v_a', 'v_b'], ['earlier later', 'b'])
    # val2 tests val_2's videos on val_2's sentences; the video's captions and times stay val_1's
    ids, texts, owner, query = split_captions(m, 'val2', 'test')
    assert (ids, texts, owner.tolist(), query.tolist()) == (['v_c'], ['c again again later'], [0], [0])
    assert split_captions(m, 'val2', 'train')[:2] == (['v_a', 'v_b'], ['earlier later', 'b'])
    assert m.captions['v_c'] == ('c one', 'c two') and m.caption_times['v_c'] == ((1.0, 20.0), (40.0, 55.5))
    _write_json(d / 'val_2.json', {'v_d': {'duration': 5, 'timestamps': [[0]], 'sentences': ['d']}})
    with pytest.raises(DatasetError, match=r'val_2.json: not an ActivityNet Captions file'):
        load_manifest('activitynet', tmp_path)


def test_didemo_moments_keep_their_seconds(tmp_path: Path) -> None:
    d = tmp_path / 'didemo'
    moment = lambda v, text, times: {'video': v, 'description': text, 'times': times}  # noqa: E731
    _write_json(d / 'train_data.json', [
        moment('a.mp4', 'first', [[1, 2], [0, 0], [1, 2], [0, 0], [1, 2]]),  # three of five annotators: segments 1-2
        moment('a.mp4', 'second', [[4, 5], [3, 3]]),  # a tie: the first marking
        moment('b.mov', 'x', [[0, 0]])])
    _write_json(d / 'val_data.json', [moment('c.avi', 'y', [[5, 5]])])
    _write_json(d / 'test_data.json', [moment('e.mp4', 'z one', [[2, 3]]), moment('e.mp4', 'z two', [[0, 1]])])
    m = load_manifest('didemo', tmp_path)
    assert m.captions['a.mp4'] == ('first', 'second')
    assert m.caption_times['a.mp4'] == ((5.0, 15.0), (20.0, 30.0))
    assert m.caption_times['b.mov'] == ((0.0, 5.0),) and m.caption_times['c.avi'] == ((25.0, 30.0),)
    assert m.caption_times['e.mp4'] == ((10.0, 20.0), (0.0, 10.0))  # file order, as the captions
    ids, texts, owner, query = split_captions(m, 'official', 'test')  # paragraphs in file order, as before
    assert (ids, texts, owner.tolist(), query.tolist()) == (['e.mp4'], ['z one z two'], [0], [0])
    ids, texts, _, _ = split_captions(m, 'official', 'train')
    assert (ids, texts) == (['a.mp4', 'b.mov'], ['first second', 'x'])
    _write_json(d / 'val_data.json', [moment('c.avi', 'y', [])])
    with pytest.raises(DatasetError, match=r'val_data.json: not a DiDeMo annotation file'):
        load_manifest('didemo', tmp_path)


def test_untimed_datasets_have_no_times_and_mismatched_times_are_refused(tmp_path: Path) -> None:
    from shared.datasets import Manifest, Split

    split = Split('s', ('v',), (), ())
    m = Manifest('x', tmp_path, ('v',), (tmp_path / 'v.mp4',), {'v': ('a', 'b')}, {'s': split})
    assert m.caption_times == {} and 'with timed captions' not in m.describe()
    with pytest.raises(DatasetError, match=r"video 'v' has 1 caption times for 2 captions"):
        Manifest('x', tmp_path, ('v',), (tmp_path / 'v.mp4',), {'v': ('a', 'b')}, {'s': split},
                 caption_times={'v': ((0.0, 1.0),)})
