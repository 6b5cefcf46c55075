"""Re-embed the stored words of an OCR or speech store with another word-vector file, without
running OCR or ASR again: the `tokens` array keeps every word with its times.

    python -m extract.reembed features/msrvtt/speech.zarr --word-vectors other-vectors.bin

One re-embedding of a store at a time, and none while an extraction writes it: a second command
started meanwhile is refused (`shared.store.held_store`), as is an extraction of a store being
re-embedded.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import shutil
import sys
import warnings
from pathlib import Path

from shared.files import fsync_dir, remove_stale_temps, signals_deferred, temp_path
from shared.store import (DONE, ExpertStore, RandomWeightsWarning, StoreError, StoreSpec, VideoResult, create_store,
                          finish_swap, held_store, open_store, pack_chunk, recorded_tokens, replacement_path, swap_in)
from shared.text import WordVectors, WordVectorsError, load_word_vectors

__all__ = ['reembed', 'main']


def reembed(path: Path, vectors: Path, out: Path | None = None) -> Path:
    """Write `path`'s words embedded with `vectors` to `out` (default: replace `path`).

    In place, the new store is built beside the old one and swapped in as `extract --overwrite`
    swaps its replacement (`shared.store.swap_in`: two renames that Ctrl-C and SIGTERM wait for);
    a swap that a kill cut short is finished first, by this command or any extraction of the store.
    To `out`, the store is built beside it in a folder of this process's own and renamed into place:
    a kill leaves no half store at `out` (which its rerun refused as one that exists), and the rerun
    builds it again; of two re-embeddings to one `out`, the second to finish is refused.
    """
    if out is not None:
        finish_swap(out)  # a kill between the renames of an earlier run's swap into `out`
    if out is not None and os.path.lexists(out):
        raise StoreError(f'{out} exists: the re-embedded store goes to a new path (or leave out --out to replace '
                         f'{path} itself)')
    finish_swap(path)
    with held_store(path, 'reembed'):
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', RandomWeightsWarning)
            src = open_store(path)
        return _reembed(src, vectors, out)


def _reembed(src: ExpertStore, vectors: Path, out: Path | None) -> Path:
    """`reembed` of the open store `src`, held by this process (`_held`)."""
    path = src.path
    if not src.has_tokens:
        raise StoreError(f'{path} has no tokens (only OCR and speech stores can be re-embedded)')
    if not src.is_complete():
        raise StoreError(f'{path} is incomplete: finish the extraction first')
    wv = load_word_vectors(vectors)
    a = src.attrs
    config = dict(a.get('config', {}), word_vectors=str(Path(vectors).resolve()), feature_dim=wv.dim)
    # the source's layout, row chunks and shards included: its units of work are the copy's
    spec = StoreSpec(dataset=a['dataset'], expert=a['expert'], feature_dim=wv.dim, max_rows=src.max_rows,
                     chunk_size=src.chunk_size, row_chunk=src.row_chunk, chunks_per_shard=src.chunks_per_shard,
                     has_tokens=True, model=a.get('model', ''), weights=a.get('weights', ''),
                     weights_sha256=a.get('weights_sha256', ''), sampling=a.get('sampling', {}),
                     input_size=a.get('input_size', []), config=config)
    # in place, a replacement (`.NAME.reembed-new`: the store is held, so one re-embedding of it at a time) that
    # `swap_in` puts there; to `out`, a folder of this process's own (re-embeddings of other stores may go to the
    # same `out`: with one shared name, each removed the other's), renamed to `out` only if none is there then
    target = replacement_path(path, builder='reembed') if out is None else temp_path(out, unique=True)
    if out is not None:
        remove_stale_temps(out)  # what a killed run to `out` left
    try:
        dst = create_store(target, list(src.video_ids), spec, overwrite=True)
        _write(src, dst, wv)
        if out is None:
            return swap_in(dst).path
        _publish(target, out)
        return out
    except BaseException:  # Ctrl-C included: no half-written store is left behind
        shutil.rmtree(target, ignore_errors=True)
        raise


def _publish(built: Path, out: Path) -> None:
    """Rename the complete store `built` to `out`, which must still be free: a rename onto another
    store fails, so of two re-embeddings to one `out` the second to finish is refused, not mixed in."""
    with signals_deferred():  # Ctrl-C and SIGTERM wait for the rename: never a store at `out` and ours removed
        try:
            os.rename(built, out)
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise
            raise StoreError(f'{out} was made by another process while this re-embedding ran (another re-embedding '
                             'to the same --out?): it is kept and nothing was written; rerun with another '
                             '--out') from None
    fsync_dir(out.parent)  # the rename survives a power cut


def _write(src: ExpertStore, dst: ExpertStore, wv: WordVectors) -> None:
    """Every chunk of `src` with its tokens embedded by `wv`; failed and pending rows kept as they are."""
    for c in range(src.n_chunks):
        rows = src.chunk_rows(c)
        data = src.read(rows=list(rows))
        results = []
        for i in range(len(rows)):
            if data.status[i] == DONE:
                results.append(_reembedded(src, rows.start + i, str(data.tokens[i]), wv))
            else:
                results.append(dataclasses.replace(VideoResult.failed(str(data.errors[i]), wv.dim),
                                                   status=int(data.status[i])))
        dst.write_chunk(c, pack_chunk(results, src.max_rows, wv.dim, True))
    dst.consolidate()


def _reembedded(src: ExpertStore, row: int, recorded: str, wv: WordVectors) -> VideoResult:
    """One done video's recorded words embedded by `wv`; tokens that are not what extraction records
    (`recorded_tokens`: a damaged store) are a StoreError naming the row, not json's or a KeyError's
    traceback, and never a new store with rows that end before they start."""
    # here, not at the top: it imports torch (seconds), which a run refused at its start never needs
    from extract.experts._words import words_result

    try:
        tokens = recorded_tokens(recorded)
    except ValueError as err:
        raise StoreError(f'{src.path}: row {row}: its recorded tokens are damaged ({err}); nothing was '
                         're-embedded. Extract that store again (extract --overwrite)') from None
    return words_result(tokens, wv, src.max_rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog='python -m extract.reembed', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split('\n\n')[1])
    p.add_argument('store', type=Path, help='an OCR or speech store ({expert}.zarr)')
    p.add_argument('--word-vectors', type=Path, required=True, help='word2vec binary (.bin) or text (.txt, .vec) file')
    p.add_argument('--out', type=Path, default=None, help='write a new store here instead of replacing STORE')
    args = p.parse_args(argv)
    try:
        written = reembed(args.store, args.word_vectors, args.out)
    except (StoreError, WordVectorsError, FileNotFoundError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    print(f're-embedded {args.store} with {args.word_vectors} -> {written}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
