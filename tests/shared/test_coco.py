"""The `coco` adapter on fixture COCO 2014 caption files (issue 23, item 2): counts, captions, the
MEE 1k test draw (the same in every run and process) and Karpathy's split with and without its file."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from shared.datasets import DatasetError, load_manifest
from shared.datasets.__main__ import main as datasets_main
from shared.datasets.coco import KARPATHY_FILE, MEE_1K_SEED, mee_1k_choice
from shared.datasets.manifest import AnnotationsMissing

N_TRAIN, N_VAL = 300, 1700
#: captions of fixture image number i: 5 to 7 (COCO has 5 to 7), unicode, one with spaces around it
_ACCENTED = ('un café au lait sur une table', 'ein Mädchen fährt Fahrrad', '东京的街道', 'a skier on a slope ⛷')


def _captions_of(i: int) -> list[str]:
    return [f' {_ACCENTED[k % 4]} #{i}.{k} ' if k == 0 else f'{_ACCENTED[k % 4]} #{i}.{k}' for k in range(5 + i % 3)]


def _coco(root: Path, n_train: int = N_TRAIN, n_val: int = N_VAL, order_seed: int = 0) -> Path:
    """COCO 2014 caption files for `n_train` + `n_val` images, images and annotations in a shuffled
    file order (`order_seed`), annotation ids rising with the caption's number."""
    d = root / 'coco'
    (d / 'annotations').mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(order_seed)
    for name, numbers in (('train2014', range(1, n_train + 1)), ('val2014', range(500_000, 500_000 + n_val))):
        images = [{'id': i, 'file_name': f'COCO_{name}_{i:012d}.jpg', 'width': 640, 'height': 480} for i in numbers]
        anns = [{'id': 10 * i + k, 'image_id': i, 'caption': c} for i in numbers for k, c in enumerate(_captions_of(i))]
        data = {'info': {'year': 2014}, 'licenses': [], 'images': [images[j] for j in rng.permutation(len(images))],
                'annotations': [anns[j] for j in rng.permutation(len(anns))]}
        (d / 'annotations' / f'captions_{name}.json').write_text(json.dumps(data, ensure_ascii=False), encoding='utf-8')
    return d


def _val_id(i: int) -> str:
    return f'COCO_val2014_{i:012d}'


def test_counts_captions_and_paths(tmp_path: Path) -> None:
    d = _coco(tmp_path)
    m = load_manifest('coco', tmp_path)
    assert len(m) == N_TRAIN + N_VAL and m.video_ids == tuple(sorted(m.video_ids))
    assert m.video_ids[0] == 'COCO_train2014_000000000001' and m.video_ids[-1] == _val_id(500_000 + N_VAL - 1)
    assert sum(len(c) for c in m.captions.values()) == sum(len(_captions_of(i)) for i in range(1, N_TRAIN + 1)) + sum(
        len(_captions_of(i)) for i in range(500_000, 500_000 + N_VAL))
    # all captions, in annotation-id order (not file order), stripped, unicode intact
    assert m.captions[_val_id(500_001)] == tuple(c.strip() for c in _captions_of(500_001))
    assert m.captions[_val_id(500_001)][2] == '东京的街道 #500001.2' and len(m.captions[_val_id(500_003)]) == 7
    assert m.path(_val_id(500_001)) == (d / 'val2014' / f'{_val_id(500_001)}.jpg').resolve()
    assert m.path('COCO_train2014_000000000007') == (d / 'train2014' / 'COCO_train2014_000000000007.jpg').resolve()


def test_mee_1k_split(tmp_path: Path) -> None:
    """MEE sec. 4.1: 1,000 val2014 images with one caption each; train is train2014 + the rest of val2014."""
    _coco(tmp_path)
    m = load_manifest('coco', tmp_path)
    s = m.split('mee-1k')
    val_ids = {_val_id(i) for i in range(500_000, 500_000 + N_VAL)}
    assert (len(s.train), len(s.val), len(s.test)) == (N_TRAIN + N_VAL - 1000, 0, 1000)
    assert set(s.test) <= val_ids and not set(s.test) & set(s.train)
    assert set(s.train) | set(s.test) == set(m.video_ids)
    assert set(s.query_captions) == set(s.test)
    picks = [k for v, (k,) in s.query_captions.items()]
    assert all(0 <= s.query_captions[v][0] < len(m.captions[v]) for v in s.test)
    assert len(set(picks)) > 3  # captions are drawn, not always the first


def _choice_digest(query_captions: dict) -> str:
    return hashlib.sha256(json.dumps(sorted((v, list(k)) for v, k in query_captions.items())).encode()).hexdigest()


def test_mee_1k_choice_is_the_same_in_every_run_and_process(tmp_path: Path, python: str, subprocess_env: dict,
                                                             repo_root: Path) -> None:
    _coco(tmp_path)
    first = load_manifest('coco', tmp_path).split('mee-1k')
    again = load_manifest('coco', tmp_path).split('mee-1k')
    assert first.test == again.test and first.query_captions == again.query_captions
    # the same images listed in another file order: the draw sorts ids first
    shuffled = tmp_path / 'shuffled'
    _coco(shuffled, order_seed=1)
    assert (shuffled / 'coco/annotations/captions_val2014.json').read_bytes() != \
        (tmp_path / 'coco/annotations/captions_val2014.json').read_bytes()
    assert load_manifest('coco', shuffled).split('mee-1k').query_captions == first.query_captions
    # two other processes, with other hash seeds (no Python hash() in the draw)
    code = ('import json, sys; from shared.datasets import load_manifest; '
            's = load_manifest("coco", sys.argv[1]).split("mee-1k"); '
            'print(json.dumps(sorted((v, list(k)) for v, k in s.query_captions.items())))')
    digests = set()
    for hash_seed in ('1', '2'):
        out = subprocess.run([python, '-c', code, str(tmp_path)], capture_output=True, text=True, check=True,
                             env={**subprocess_env, 'PYTHONHASHSEED': hash_seed}, cwd=repo_root)
        digests.add(hashlib.sha256(out.stdout.strip().encode()).hexdigest())
    assert digests == {_choice_digest(first.query_captions)}
    # pinned: a change of seed, of the draw or of NumPy's stream changes the published test set
    assert first.test[:3] == ('COCO_val2014_000000500001', 'COCO_val2014_000000500006', 'COCO_val2014_000000500008')
    assert _choice_digest(first.query_captions)[:16] == '9521f976ab979a9e'
    other = mee_1k_choice(sorted(first.test + first.train[N_TRAIN:]), load_manifest('coco', tmp_path).captions,
                          seed=MEE_1K_SEED + 1)
    assert set(other) != set(first.test)


def test_mee_1k_needs_a_thousand_val_images(tmp_path: Path) -> None:
    _coco(tmp_path, n_train=5, n_val=999)
    m = load_manifest('coco', tmp_path)
    assert len(m) == 1004
    with pytest.raises(DatasetError, match=r"split 'mee-1k' cannot be used: only 999 val2014 images .* draws 1000"):
        m.split('mee-1k')


def _karpathy(d: Path, test: list[str], val: list[str], restval: list[str], train: list[str]) -> None:
    images = [{'filepath': vid.split('_')[1], 'filename': f'{vid}.jpg', 'split': split, 'cocoid': int(vid[-12:]),
               'sentences': [{'raw': 'a caption', 'tokens': ['a', 'caption']}]}
              for split, ids in (('test', test), ('val', val), ('restval', restval), ('train', train)) for vid in ids]
    (d / KARPATHY_FILE).write_text(json.dumps({'dataset': 'coco', 'images': images}), encoding='utf-8')


def test_karpathy_split_with_and_without_its_file(tmp_path: Path) -> None:
    d = _coco(tmp_path)
    m = load_manifest('coco', tmp_path)
    with pytest.raises(DatasetError, match=rf"split 'karpathy' cannot be used: Karpathy's split file "
                                           rf"{d / KARPATHY_FILE} is missing: put {KARPATHY_FILE} .* in {d}"):
        m.split('karpathy')
    val = [_val_id(i) for i in range(500_000, 500_000 + N_VAL)]
    train = [f'COCO_train2014_{i:012d}' for i in range(1, N_TRAIN + 1)]
    _karpathy(d, test=val[:500], val=val[500:1000], restval=val[1000:], train=train)
    s = load_manifest('coco', tmp_path).split('karpathy')
    assert (len(s.train), len(s.val), len(s.test)) == (N_TRAIN + N_VAL - 1000, 500, 500)
    assert set(s.train) == set(train + val[1000:]) and set(s.test) == set(val[:500])
    # the 5k protocol's queries: the first five captions of each test image (the fixture has 5 to 7)
    assert s.query_captions[val[3]] == (0, 1, 2, 3, 4) and len(m.captions[val[3]]) == 7
    _karpathy(d, test=['COCO_val2014_000000999999'], val=[], restval=[], train=[])
    with pytest.raises(DatasetError, match=r'image COCO_val2014_000000999999 is in neither COCO 2014 captions file'):
        load_manifest('coco', tmp_path)
    _karpathy(d, test=val[:2], val=val[1:3], restval=[], train=[])  # val[1] in test and val: test leaks
    with pytest.raises(DatasetError, match=rf"image {val[1]} is listed twice \(splits 'test' and 'val'\)"):
        load_manifest('coco', tmp_path).split('karpathy')
    (d / KARPATHY_FILE).write_text(json.dumps({'images': [{'filename': 'x.jpg'}]}), encoding='utf-8')
    with pytest.raises(DatasetError, match=r"dataset_coco.json: not Karpathy's dataset_coco.json"):
        load_manifest('coco', tmp_path)


def test_missing_or_broken_files_are_clear(tmp_path: Path) -> None:
    d = _coco(tmp_path, n_train=3, n_val=3)
    (d / 'annotations' / 'captions_val2014.json').unlink()
    with pytest.raises(AnnotationsMissing, match=r'annotations/captions_val2014.json not found.*COCO 2014 release'):
        load_manifest('coco', tmp_path)
    train = d / 'annotations' / 'captions_train2014.json'
    (d / 'annotations' / 'captions_val2014.json').write_text(train.read_text(encoding='utf-8'), encoding='utf-8')
    with pytest.raises(DatasetError, match='image ids repeat'):  # the train file twice: ids clash
        load_manifest('coco', tmp_path)
    bad = {'images': [{'id': 1, 'file_name': '../../escape.jpg'}], 'annotations': []}
    (d / 'annotations' / 'captions_val2014.json').write_text(json.dumps(bad), encoding='utf-8')
    with pytest.raises(DatasetError, match='escapes the data root'):
        load_manifest('coco', tmp_path)
    bad = {'images': [{'id': 1, 'file_name': 'a.jpg'}], 'annotations': [{'id': 1, 'image_id': 2, 'caption': 'x'}]}
    (d / 'annotations' / 'captions_val2014.json').write_text(json.dumps(bad), encoding='utf-8')
    with pytest.raises(DatasetError, match='captions_val2014.json: caption 1 is of image 2, which the file does not'):
        load_manifest('coco', tmp_path)
    (d / 'annotations' / 'captions_val2014.json').write_text(json.dumps({'images': []}), encoding='utf-8')
    with pytest.raises(DatasetError, match='captions_val2014.json: not a COCO captions file'):
        load_manifest('coco', tmp_path)
    # one image id twice: the later entry would silently take the earlier image's captions
    bad = {'images': [{'id': 1, 'file_name': 'a.jpg'}, {'id': 1, 'file_name': 'b.jpg'}], 'annotations': []}
    (d / 'annotations' / 'captions_val2014.json').write_text(json.dumps(bad), encoding='utf-8')
    with pytest.raises(DatasetError, match=r'captions_val2014.json: image id 1 is listed twice \(a.jpg, b.jpg\)'):
        load_manifest('coco', tmp_path)
    bad = {'images': [{'id': 1, 'file_name': None}], 'annotations': []}
    (d / 'annotations' / 'captions_val2014.json').write_text(json.dumps(bad), encoding='utf-8')
    with pytest.raises(DatasetError, match='image 1 has file_name None, not a string'):
        load_manifest('coco', tmp_path)


def test_datasets_cli_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`make datasets DATASET=coco`: counts per split, and the image files found."""
    d = _coco(tmp_path)
    (d / 'val2014').mkdir()
    for i in range(500_000, 500_003):
        (d / 'val2014' / f'{_val_id(i)}.jpg').write_bytes(b'\xff\xd8\xff')
    assert datasets_main(['coco', '--data-root', os.fspath(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f'coco: {N_TRAIN + N_VAL} still images' in out
    assert f'split mee-1k: train {N_TRAIN + N_VAL - 1000}, val 0, test 1000' in out
    assert "split karpathy: train 0, val 0, test 0 (unavailable: Karpathy's split file" in out
    assert f'3 found, {N_TRAIN + N_VAL - 3} missing' in out
