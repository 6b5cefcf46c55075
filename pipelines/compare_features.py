"""`python -m pipelines.compare_features`: compare features extracted here with the ones the
papers' authors released for the same videos, so that a wrong weight file or preprocessing shows
at once.

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

from pipelines.import_features import CE_FILES, MMT_EXPERTS, release_rows
from shared.config import int_at_least
from shared.store import StoreError, open_store

__all__ = ['compare', 'main']


def compare(ours: dict[str, np.ndarray], release: dict[str, np.ndarray | None]
            ) -> tuple[dict[str, float], list[str]]:
    """Cosine similarity of time-averaged features per video found in both (non-empty rows).

    Returns:
        (cosines, zero): cosine per video, and the videos whose mean is all zero on one side, for
        which a cosine means nothing (they are listed, not scored).

    Raises:
        ValueError: the two have different feature dimensions.
    """
    out, zero = {}, []
    for vid, rows in ours.items():
        theirs = release.get(vid)
        if theirs is None or not len(theirs) or not len(rows):
            continue
        a, b = rows.astype(np.float64).mean(0), theirs.astype(np.float64).mean(0)
        if a.shape != b.shape:
            raise ValueError(f'features of {a.shape[0]} dimensions here and {b.shape[0]} in the release '
                             f'(video {vid}): is --expert the release\'s expert?')
        norm = np.linalg.norm(a) * np.linalg.norm(b)
        if norm > 0:
            out[vid] = float(a @ b / norm)
        else:
            zero.append(vid)
    return out, zero


def _store_rows(path: Path) -> tuple[dict[str, np.ndarray], str]:
    """Each available video's time-averaged features, as one (1, D) row, read a store chunk at a
    time: a whole store can be gigabytes (MSR-VTT's scene at T=128 is ~5 GB), its means are not."""
    store = open_store(path)
    ours = {}
    for c in range(store.n_chunks):
        rows = store.read(rows=list(store.chunk_rows(c)))
        for i, v in enumerate(rows.video_ids):
            if rows.available[i] and rows.lengths[i]:
                ours[str(v)] = rows.rows(i).astype(np.float64).mean(0, keepdims=True)
    return ours, str(store.attrs.get('expert', ''))


def _release_expert(expert: str, asked: str | None) -> str:
    """The release's expert to compare with: `asked` (--release-expert), else `expert` where the
    releases have it, else its base name (``object.timm_eval`` -> ``object``: another input to
    the same weights, compared with the features CE and MMT released for them)."""
    if asked:
        return asked
    released = {name for _, name in CE_FILES} | set(MMT_EXPERTS.values())
    return expert if expert in released else expert.split('.')[0]


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
    p.add_argument('--release-expert', default=None,
                   help="the release's expert to compare with, by our name (default: --expert where the release "
                        'has it, else its base name: object.timm_eval is compared with object)')
    p.add_argument('--out', type=Path, default=Path('.'),
                   help='directory for compare_EXPERT.png (histogram) and compare_EXPERT.csv (per video); default: '
                        'the current one')
    p.add_argument('--worst', type=int_at_least(0), default=10,
                   help='how many of the least similar videos to list (default: 10)')
    args = p.parse_args(argv)
    from extract.experts import expert_names

    known = expert_names()
    for flag, name in (('--expert', args.expert), ('--release-expert', args.release_expert)):
        if name is not None and name not in known:
            print(f'error: {flag} {name!r} is not an expert (one of {", ".join(known)})', file=sys.stderr)
            return 1
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
        theirs = _release_expert(args.expert, args.release_expert)
        release, origin = release_rows(args.release.resolve(), theirs)
        cos, zero = compare(ours, release)
    except (FileNotFoundError, ValueError, OSError, StoreError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    if not cos:
        print(f'error: no video has features both in {args.ours} and in {origin}: are they of the same dataset?',
              file=sys.stderr)
        return 1
    ids = sorted(cos, key=cos.__getitem__)
    values = np.array([cos[v] for v in ids])
    png, table = args.out / f'compare_{args.expert}.png', args.out / f'compare_{args.expert}.csv'
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        _histogram(values, png, f'{args.expert}: {len(values)} videos')
        with open(table, 'w', newline='') as f:
            w = csv.writer(f)
            w.writerow(['video_id', 'cosine'])
            w.writerows((v, f'{cos[v]:.6f}') for v in ids)
    except OSError as err:
        print(f'error: cannot write the report into {args.out}: {err.strerror or err}', file=sys.stderr)
        return 1
    versus = '' if theirs == args.expert else f' (against the release\'s {theirs})'
    print(f'{args.expert}{versus}: {len(values)} videos in both ({len(ours)} here, '
          f'{sum(r is not None for r in release.values())} in {origin})')
    if zero:
        print(f'{len(zero)} videos not scored: their mean features are all zero here or in the release '
              f'(e.g. {", ".join(zero[:3])})')
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
