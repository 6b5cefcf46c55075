"""The howto100m adapter on fixture files in the release's format (issue 22, items 2 and 5): partial
downloads counted, timed captions read lazily from an index rebuilt when caption.json changes,
HowTo100M's stop words shipped."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest

from shared.datasets import DatasetError, load_manifest
from shared.datasets.__main__ import main as datasets_main
from shared.datasets.caption_index import iter_json_object
from shared.text import remove_stop_words, stop_words

CAPTIONS = {
    'vidA': {'start': [0.0, 4.5], 'end': [4.5, 9.25], 'text': ['cut the onion', 'fry it slowly']},
    'vidB': {'start': [1, 3, 7], 'end': [3, 7, 8], 'text': ['', 'naïve café 日本 😀', '   ']},  # empties dropped
    'vidC': {'start': [0], 'end': [2], 'text': ['listed, captioned, never downloaded']},
    'vidE': {'start': [0, 1], 'end': [1, 2], 'text': ['', '']},  # only empty captions: none
    'vidZ': {'start': [5], 'end': [6], 'text': ['in caption.json, not listed']},
}


def _howto100m(root: Path, captions: dict = CAPTIONS) -> Path:
    d = root / 'howto100m'
    (d / 'videos').mkdir(parents=True)
    rows = ['video_id,category_1,category_2,rank,task_id'] + [f'{v},Food,Cooking,{k},{100 + k}' for k, v in
                                                            enumerate(('vidE', 'vidD', 'vidC', 'vidB', 'vidA'))]
    (d / 'HowTo100M_v1.csv').write_text('\n'.join(rows) + '\n', encoding='utf-8')
    for name in ('vidA.mp4', 'vidB.webm', 'vidB.mkv', 'vidD.mkv', 'vidE.mp4', 'vidZ.mp4', 'vidA.txt'):
        (d / 'videos' / name).write_bytes(b'')
    (d / 'caption.json').write_text(json.dumps(captions, ensure_ascii=False), encoding='utf-8')
    return d


def test_partial_download_counts_and_timed_captions(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    d = _howto100m(tmp_path)
    m = load_manifest('howto100m', tmp_path)
    assert m.video_ids == ('vidA', 'vidB', 'vidD', 'vidE')  # vidC has no file; vidZ is not listed
    assert [p.name for p in m.paths] == ['vidA.mp4', 'vidB.webm', 'vidD.mkv', 'vidE.mp4']  # mp4, webm, mkv
    assert m.path('vidB') == d / 'videos' / 'vidB.webm'
    assert m.split('pretrain').train == ('vidA', 'vidB') and not m.split('pretrain').test
    assert m.captions['vidA'] == ('cut the onion', 'fry it slowly')
    assert m.caption_times['vidA'] == ((0.0, 4.5), (4.5, 9.25))
    assert m.captions['vidB'] == ('naïve café 日本 😀',) and m.caption_times['vidB'] == ((3.0, 7.0),)
    assert 'vidD' not in m.captions and 'vidE' not in m.captions and m.captions.get('vidE', ()) == ()
    assert list(m.captions) == ['vidA', 'vidB', 'vidC', 'vidZ'] and len(m.caption_times) == 4
    assert datasets_main(['howto100m', '--data-root', str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert 'howto100m: 4 videos, 5 captions (4 videos with timed captions)' in out
    assert 'listed in HowTo100M_v1.csv: 5; skipped for want of a file in videos/: 1' in out
    assert 'videos with a file but no captions in caption.json (not in pretrain): 2' in out
    assert '4 videos with captions, 1 with only empty ones' in out and 'split pretrain: train 2, val 0, test 0' in out
    # lazy: what goes to a DataLoader worker is the index's path, not its entries
    assert len(pickle.dumps(m.captions)) < 1000
    assert pickle.loads(pickle.dumps(m.caption_times))['vidA'] == ((0.0, 4.5), (4.5, 9.25))


def test_index_is_built_once_and_rebuilt_when_caption_json_changes(tmp_path: Path) -> None:
    d = _howto100m(tmp_path)
    load_manifest('howto100m', tmp_path)
    meta = d / 'caption.json.index' / 'meta.json'
    built = meta.stat().st_mtime_ns
    os.utime(meta, ns=(built - 10**9, built - 10**9))
    load_manifest('howto100m', tmp_path)
    assert meta.stat().st_mtime_ns == built - 10**9  # unchanged source: the index is read, not rebuilt
    changed = {**CAPTIONS, 'vidD': {'start': [2], 'end': [3], 'text': ['now captioned']}}
    (d / 'caption.json').write_text(json.dumps(changed), encoding='utf-8')
    m = load_manifest('howto100m', tmp_path)
    assert m.split('pretrain').train == ('vidA', 'vidB', 'vidD') and m.caption_times['vidD'] == ((2.0, 3.0),)
    # the same size, another text, a new mtime: rebuilt too
    st = (d / 'caption.json').stat()
    (d / 'caption.json').write_text(json.dumps(changed).replace('now captioned', 'now CAPTIONED'), encoding='utf-8')
    os.utime(d / 'caption.json', ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert load_manifest('howto100m', tmp_path).captions['vidD'] == ('now CAPTIONED',)
    assert sorted(p.name for p in d.iterdir()) == ['HowTo100M_v1.csv', 'caption.json', 'caption.json.index', 'videos']


def test_raw_captions_picked_by_option_and_bad_files_are_one_line(tmp_path: Path) -> None:
    d = _howto100m(tmp_path)
    (d / 'raw_caption.json').write_text(json.dumps({'vidA': {'start': [0], 'end': [9], 'text': ['so now we cut the '
                                                                                              'onion']}}))
    m = load_manifest('howto100m', tmp_path, captions='raw_caption.json')
    assert m.split('pretrain').train == ('vidA',) and m.captions['vidA'] == ('so now we cut the onion',)
    assert remove_stop_words(m.captions['vidA'][0]) == 'cut onion'
    with pytest.raises(DatasetError, match=r"captions='caption.txt': use one of caption.json, raw_caption.json"):
        load_manifest('howto100m', tmp_path, captions='caption.txt')
    (d / 'caption.json').write_text(json.dumps(CAPTIONS)[:-30])  # cut short
    with pytest.raises(DatasetError, match=r'caption.json: not a HowTo100M caption.json file \(invalid JSON'):
        load_manifest('howto100m', tmp_path)
    (d / 'caption.json').write_text(json.dumps({'vidA': {'start': [0, 1], 'end': [1], 'text': ['a', 'b']}}))
    with pytest.raises(DatasetError, match=r"video 'vidA' needs lists \"start\", \"end\" and \"text\""):
        load_manifest('howto100m', tmp_path)
    (d / 'HowTo100M_v1.csv').write_text('id,category_1\nvidA,Food\n')
    with pytest.raises(DatasetError, match=r'HowTo100M_v1.csv: not the HowTo100M video list \(no video_id column'):
        load_manifest('howto100m', tmp_path)


def test_stream_parser_reads_across_chunk_boundaries(tmp_path: Path) -> None:
    data = {'k\u00e9y': {'start': [12345.678, 1e-3], 'text': ['a "quoted" \\ text', 'ü' * 40]}, 'n': 1234567,
            'empty': {}, 'deep': [[[-0.5]]]}
    path = tmp_path / 'x.json'
    path.write_text(' \n' + json.dumps(data, indent=1, ensure_ascii=False) + '\n ', encoding='utf-8')
    for chunk in (1, 3, 7, 1 << 20):  # values and numbers cut by every chunk boundary
        assert dict(iter_json_object(path, 'x', chunk_chars=chunk)) == data
    path.write_text('{"n": 1234567, "m": -2.5e3}')
    for chunk in range(1, 12):  # a number that ends a chunk goes on in the next
        assert dict(iter_json_object(path, 'x', chunk_chars=chunk)) == {'n': 1234567, 'm': -2500.0}
    path.write_text('{"a": 1} {"b": 2}')
    with pytest.raises(DatasetError, match=r'x.json: not x \(extra data after the object'):
        dict(iter_json_object(path, 'x', chunk_chars=3))
    path.write_text('[1, 2]')
    with pytest.raises(DatasetError, match=r"expected '\{'"):
        dict(iter_json_object(path, 'x'))


def test_stop_words_are_howto100ms_list_shipped_with_the_package() -> None:
    words = stop_words()
    assert len(words) == 370 and {'the', 'a', "don't", 'youtube'} <= words and 'onion' not in words
    assert remove_stop_words("The Onion, I'm sure, is  ON the board!") == 'Onion, board!'
    assert remove_stop_words('') == '' and remove_stop_words('the and of') == ''


def test_caption_file_setting_reaches_the_adapter_from_every_command(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    """`--dataset-option captions=raw_caption.json` (datasets, extract) and `data.dataset_options` (train)."""
    from extract.run import main as extract_main
    from train.main import main as train_main

    d = _howto100m(tmp_path)
    (d / 'raw_caption.json').write_text(json.dumps({'vidA': {'start': [0], 'end': [9], 'text': ['so now we cut']}}))
    raw = ['--dataset-option', 'captions=raw_caption.json']
    assert datasets_main(['howto100m', '--data-root', str(tmp_path), *raw]) == 0
    out = capsys.readouterr().out
    assert 'howto100m: 4 videos, 1 captions' in out and 'split pretrain: train 1' in out
    for bad, says in (('caption=raw_caption.json', 'dataset howto100m has no option caption (its options: captions)'),
                      ('captions', "--dataset-option 'captions': expected KEY=VALUE")):
        assert datasets_main(['howto100m', '--data-root', str(tmp_path), '--dataset-option', bad]) == 1
        assert capsys.readouterr().err.strip().startswith(f'error: {says}')
    (d / 'raw_caption.json').unlink()  # each command must now name the file the setting picked
    assert extract_main(['--dataset', 'howto100m', '--data-root', str(tmp_path), '--features-root',
                         str(tmp_path / 'features'), '--expert', 'scene', '--weights', 'random', '--no-progress',
                         '--dataset-option', 'captions=raw_caption.json']) == 1
    err = capsys.readouterr().err.strip()
    assert 'raw_caption.json not found' in err and '\n' not in err
    assert train_main(['--config', 'pipelines/configs/train/mmt_demo.yaml', '--dataset', 'howto100m', '--data-root',
                       str(tmp_path), '--features-root', str(tmp_path / 'features'), '--device', 'cpu', '--run-dir',
                       str(tmp_path / 'run'), '--set', 'data.dataset_options.captions=raw_caption.json', '--set', 'data.split=pretrain']) == 1
    err = capsys.readouterr().err.strip()
    assert 'raw_caption.json not found' in err and '\n' not in err


def test_evaluate_reads_the_runs_own_dataset_with_the_runs_dataset_options(tmp_path: Path, repo_root: Path) -> None:
    """`python -m train.evaluate --run RUN` on the run's own dataset reads it as the run did: with its
    `data.dataset_options` (here the caption file), not the adapter's defaults."""
    import argparse

    import yaml

    from train.evaluate import resolve_target

    d = _howto100m(tmp_path)
    (d / 'raw_caption.json').write_text(json.dumps({'vidA': {'start': [0], 'end': [9], 'text': ['so now we cut']}}))
    run = tmp_path / 'run'
    run.mkdir()
    cfg = yaml.safe_load((repo_root / 'pipelines/configs/train/mmt_demo.yaml').read_text())
    cfg['data'].update(dataset='howto100m', split='pretrain', dataset_options={'captions': 'raw_caption.json'})
    (run / 'config.yaml').write_text(yaml.safe_dump(cfg))
    args = argparse.Namespace(run=run, dataset=None, split=None, data_root=tmp_path)
    seeds, manifest, split = resolve_target(args)
    assert seeds == [run] and split == 'pretrain'
    assert manifest.captions['vidA'] == ('so now we cut',) and 'vidB' not in manifest.captions
    # another dataset is read with its own defaults: the run's options are for its own dataset only
    args.dataset = f'folder:{d / "videos"}'
    assert resolve_target(args)[1].name != 'howto100m'
