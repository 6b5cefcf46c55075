"""DiDeMo (Hendricks et al. 2017), as paragraph-to-video retrieval (CE section 4).

Files under ``{data_root}/didemo/``: ``train_data.json``, ``val_data.json``, ``test_data.json``
(lists of moments: ``video``, ``description``, ``times``); videos in ``videos/{video}`` (the id
carries its extension). A video's moment descriptions, in file order, form its paragraph query.
Each description keeps its moment's seconds (`caption_times`): annotators mark 5-second segments
``[first, last]``; the moment is the marking most annotators gave (the first such in file order),
``[5 * first, 5 * (last + 1)]`` seconds.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from shared.datasets import DATASETS
from shared.datasets.manifest import (DatasetError, Manifest, Split, ordered_unique, read_json, require_files,
                                      resolve_inside)

__all__ = ['didemo', 'FILES']

FILES = {'train': 'train_data.json', 'val': 'val_data.json', 'test': 'test_data.json'}
#: seconds per DiDeMo segment
SEGMENT_SECONDS = 5.0


@DATASETS.register()
def didemo(root: Path) -> Manifest:
    """DiDeMo manifest: videos sorted by id, captions = moment descriptions, paragraph queries."""
    captions: dict[str, list[str]] = {}
    times: dict[str, list[tuple[float, float]]] = {}
    parts: dict[str, tuple[str, ...]] = {}
    for part, path in zip(FILES, require_files(root, tuple(FILES.values()), 'DiDeMo annotation file')):
        try:
            moments = read_json(path, 'a DiDeMo annotation file')
            vids = [str(m['video']) for m in moments]
            for m in moments:
                captions.setdefault(str(m['video']), []).append(str(m['description']).strip())
                times.setdefault(str(m['video']), []).append(_moment_seconds(m['times']))
        except (KeyError, TypeError, ValueError) as err:
            raise DatasetError(f'{path}: not a DiDeMo annotation file ({err!r})') from None
        parts[part] = tuple(ordered_unique(vids))
    ids = tuple(sorted(captions))
    paths = tuple(resolve_inside(root, f'videos/{v}') for v in ids)
    split = Split('official', parts['train'], parts['val'], parts['test'], paragraph=True)
    return Manifest('didemo', root, ids, paths, {v: tuple(captions[v]) for v in ids}, {'official': split},
                    caption_times={v: tuple(times[v]) for v in ids})


def _moment_seconds(marks: object) -> tuple[float, float]:
    """(start, end) seconds of the segment span most annotators marked (a ValueError for none)."""
    spans = [(int(first), int(last)) for first, last in marks]  # type: ignore[union-attr]
    if not spans:
        raise ValueError('a moment without times')
    first, last = Counter(spans).most_common(1)[0][0]  # ties: the first seen, as Counter keeps insertion order
    return first * SEGMENT_SECONDS, (last + 1) * SEGMENT_SECONDS
