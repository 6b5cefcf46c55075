"""`python -m pipelines.compare_features`: compare features extracted here with the ones the
papers' authors released for the same videos, so that a wrong weight file or preprocessing shows
at once (issue 19).

    python -m pipelines.compare_features --ours features/msrvtt/scene.zarr \\
        --release ~/ce/MSRVTT/structured-symlinks --expert scene
    python -m pipelines.compare_features --ours features/msrvtt/audio.zarr --release ~/mmt/MSRVTT/mult_h5 --expert audio

For every video that both have, the features are averaged over time (CE's aggregation for most
experts) and the cosine similarity of the two means is reported: a summary, the worst videos, a
histogram PNG and a CSV of all of them. Features from the same weights and input give cosines
near 1; a wrong checkpoint or preprocessing drops most videos far below.

--release is what `pipelines.import_features` reads: a CE release directory (the expert's pickle
is found by name, e.g. ``aggregated_scene*/densenet161*.pickle``) or one CE pickle file, or a
directory of MMT's ``{video_id}.h5`` files (``features.{expert}`` in MMT's names: appearance,
motion, audio, scene, ocr, face, speech). Pickle files can run code when loaded: they are read
only after a warning; compare only releases you trust.
"""
from __future__ import annotations

import argparse
import csv
import sys
import warnings
from pathlib import Path

import numpy as np

from pipelines.import_features import release_rows
from shared.store import StoreError, open_store

__all__ = ['compare', 'main']


def compare(ours: dict[str, np.ndarray], release: dict[str, np.ndarray | None]) -> dict[str, float]:
    """Cosine similarity of time-averaged features per video found in both (non-empty rows).

    Raises:
        ValueError: the two have different feature dimensions.
    """
    out = {}
    for vid, rows in ours.items():
        theirs = release.get(vid)
        if theirs is None or not len(theirs) or not len(rows):
            continue
        a, b = rows.astype(np.float64).mean(0), theirs.astype(np.float64).mean(0)
        if a.shape != b.shape:
            raise ValueError(f'features of {a.shape[0]} dimensions here and {b.shape[0]} in the release '
                             f'(video {vid}): is --expert the release\'s expert?')
        norm = np.linalg.norm(a) * np.linalg.norm(b)
        out[vid] = float(a @ b / norm) if norm > 0 else 0.0
    return out


def _store_rows(path: Path) -> tuple[dict[str, np.ndarray], str]:
    store = open_store(path)
    rows = store.read()
    ours = {str(v): rows.rows(i) for i, v in enumerate(rows.video_ids) if rows.available[i] and rows.lengths[i]}
    return ours, str(store.attrs.get('expert', ''))


def _histogram(cosines: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use('Agg')  # no display: a file only
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(cosines, bins=np.linspace(min(-1.0, cosines.min()), 1.0, 81))
    ax.set_xlabel('cosine similarity of time-averaged features (ours vs release)')
    ax.set_ylabel('videos')
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _quantised(release: dict[str, np.ndarray | None]) -> bool:
    """Whole numbers in 0..255: AudioSet's 8-bit post-processed VGGish format."""
    sample = [r for r in list(release.values())[:200] if r is not None and len(r)]
    return bool(sample) and all(np.all((r >= 0) & (r <= 255) & (r == np.round(r))) for r in sample)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog='python -m pipelines.compare_features', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split('\n\n', 1)[1])
    p.add_argument('--ours', type=Path, required=True, help='the expert store extracted here (…/EXPERT.zarr)')
    p.add_argument('--release', type=Path, required=True,
                   help='the CE release directory or pickle file, or the directory of MMT h5 files')
    p.add_argument('--expert', required=True, help='our name of the expert (object, scene, audio, face, ...)')
    p.add_argument('--out', type=Path, default=Path('.'),
                   help='directory for compare_EXPERT.png (histogram) and compare_EXPERT.csv (per video)')
    p.add_argument('--worst', type=int, default=10, help='how many of the least similar videos to list')
    args = p.parse_args(argv)
    if not args.release.exists():
        print(f'error: {args.release} does not exist: give the release directory or pickle file', file=sys.stderr)
        return 1
    try:
        ours, stored_expert = _store_rows(args.ours)
        if stored_expert and stored_expert.split('.')[0] != args.expert.split('.')[0]:
            print(f'warning: {args.ours} holds expert {stored_expert!r}, compared as {args.expert!r}', file=sys.stderr)
        if args.release.is_file() or not any(args.release.glob('*.h5')):  # CE's pickles
            warnings.warn(f'reading pickle files from {args.release}: unpickling can run code from the file; '
                          'compare only releases you trust', stacklevel=1)
        release, origin = release_rows(args.release.resolve(), args.expert)
        cos = compare(ours, release)
    except (FileNotFoundError, ValueError, OSError, StoreError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    if not cos:
        print(f'error: no video has features both in {args.ours} and in {origin}: are they of the same dataset?',
              file=sys.stderr)
        return 1
    ids = sorted(cos, key=cos.__getitem__)
    values = np.array([cos[v] for v in ids])
    args.out.mkdir(parents=True, exist_ok=True)
    png, table = args.out / f'compare_{args.expert}.png', args.out / f'compare_{args.expert}.csv'
    _histogram(values, png, f'{args.expert}: {len(values)} videos')
    with open(table, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['video_id', 'cosine'])
        w.writerows((v, f'{cos[v]:.6f}') for v in ids)
    print(f'{args.expert}: {len(values)} videos in both ({len(ours)} here, '
          f'{sum(r is not None for r in release.values())} in {origin})')
    print(f'cosine: mean {values.mean():.4f}, median {np.median(values):.4f}, min {values.min():.4f}; '
          f'{(values < 0.9).mean():.1%} of videos below 0.9')
    print(f'worst {min(args.worst, len(ids))}:')
    for v in ids[:args.worst]:
        print(f'  {v}\t{cos[v]:.4f}')
    if args.expert.split('.')[0] == 'audio' and _quantised(release):
        print('note: the release holds whole numbers in 0..255, the 8-bit post-processed VGGish format: '
              'extract with --set audio.postprocess=pca to compare like with like')
    print(f'histogram: {png}\nper video: {table}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
