"""MSR-VTT (Xu et al. 2016): official videodatainfo json files; splits full, 1k-A, 1k-B.

Files under ``{data_root}/msrvtt/``: ``train_val_videodatainfo.json``, ``test_videodatainfo.json``,
videos in ``videos/{video_id}.mp4``, and for 1k-A the JSFusion query file
``MSRVTT_JSFUSION_test.csv`` (columns key, vid_key, video_id, sentence).
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from shared.datasets import DATASETS
from shared.datasets.manifest import (DatasetError, Manifest, Split, read_json, read_split_list, read_text,
                                      require_files, resolve_inside)

__all__ = ['msrvtt', 'JSFUSION_FILE']

JSFUSION_FILE = 'MSRVTT_JSFUSION_test.csv'
_ANNOTATIONS = ('train_val_videodatainfo.json', 'test_videodatainfo.json')


def _video_number(vid: str) -> tuple[int, str]:
    m = re.fullmatch(r'video(\d+)', vid)
    return (int(m.group(1)) if m else 1 << 62, vid)


def _norm(text: str) -> str:
    return ' '.join(text.lower().split()).rstrip('.')


def _jsfusion_queries(path: Path, captions: dict[str, tuple[str, ...]], test: tuple[str, ...]
                      ) -> dict[str, tuple[int, ...]]:
    """For each 1k-A `test` video, the index of its JSFusion-chosen caption among its captions.

    The file must give exactly one row to each test video: a video without a row would be queried
    with every caption (`Split.query_captions`), 20 queries in place of one."""
    out: dict[str, tuple[int, ...]] = {}
    rows = csv.DictReader(io.StringIO(read_text(path, 'a JSFusion query CSV'), newline=''))
    try:
        for line_no, row in enumerate(rows, start=2):
            try:
                vid, sentence = row['video_id'].strip(), row['sentence']
            except (KeyError, AttributeError):
                raise DatasetError(f'{path}: expected columns key,vid_key,video_id,sentence') from None
            caps = captions.get(vid)
            if caps is None:
                raise DatasetError(f'{path}:{line_no}: video {vid!r} is not in the MSR-VTT annotations')
            exact = [i for i, c in enumerate(caps) if c.strip() == sentence.strip()]
            loose = exact or [i for i, c in enumerate(caps) if _norm(c) == _norm(sentence)]
            if not loose:
                raise DatasetError(f'{path}:{line_no}: sentence {sentence!r} is none of the captions of {vid}')
            if vid in out:
                raise DatasetError(f'{path}:{line_no}: a second query for video {vid} (1k-A has one per video)')
            out[vid] = (loose[0],)
    except csv.Error as err:
        raise DatasetError(f'{path}: not a JSFusion query CSV ({err})') from None
    tested = set(test)
    missing, stray = [v for v in test if v not in out], [v for v in out if v not in tested]
    if missing or stray:
        raise DatasetError(f'{path}: the 1k-A test set is the {len(test)} videos of val_list_jsfusion.txt, one query '
                           f'each; {len(missing)} have no row (e.g. {missing[:3]}) and {len(stray)} rows name other '
                           f'videos (e.g. {stray[:3]}): put the JSFusion release\'s file there, as released')
    return out


@DATASETS.register()
def msrvtt(root: Path, jsfusion_file: str = JSFUSION_FILE) -> Manifest:
    """MSR-VTT manifest: 10,000 videos, 20 captions each, in the order of their numbers."""
    names: set[str] = set()
    captions: dict[str, list[str]] = {}
    for path in require_files(root, _ANNOTATIONS, 'MSR-VTT annotation file',
                              'Both train_val_videodatainfo.json and test_videodatainfo.json come from the '
                              'MSR-VTT release; put them in ' + str(root)):
        try:
            data = read_json(path, 'an MSR-VTT videodatainfo file')
            names.update(v['video_id'] for v in data['videos'])
            for s in data['sentences']:  # file order is caption order; 1k-A indexes captions by it
                captions.setdefault(s['video_id'], []).append(s['caption'])
        except (KeyError, TypeError) as err:
            raise DatasetError(f'{path}: not an MSR-VTT videodatainfo file ({err!r})') from None
    ids = tuple(sorted(names, key=_video_number))
    caps = {v: tuple(captions.get(v, ())) for v in ids}
    paths = tuple(resolve_inside(root, f'videos/{v}.mp4') for v in ids)

    full = Split('full', read_split_list('msrvtt', 'train_list_full.txt'),
                 read_split_list('msrvtt', 'val_list_full.txt'), read_split_list('msrvtt', 'test_list_full.txt'))
    test_a = read_split_list('msrvtt', 'val_list_jsfusion.txt')
    js_path = root / jsfusion_file
    if js_path.is_file():
        split_a = Split('1k-A', read_split_list('msrvtt', 'train_list_jsfusion.txt'), (), test_a,
                        query_captions=_jsfusion_queries(js_path, caps, test_a))
    else:
        split_a = Split('1k-A', read_split_list('msrvtt', 'train_list_jsfusion.txt'), (), test_a,
                        unavailable=f'the JSFusion query file {js_path} is missing; 1k-A tests on one '
                                    f'JSFusion-chosen caption per video: put {jsfusion_file} '
                                    '(from the JSFusion release) there')
    test_b = read_split_list('msrvtt', 'test_list_miech.txt')
    split_b = Split('1k-B', read_split_list('msrvtt', 'train_list_miech.txt'), (), test_b,
                    query_captions={v: (0,) for v in test_b})
    return Manifest('msrvtt', root, ids, paths, caps, {s.name: s for s in (full, split_a, split_b)})
