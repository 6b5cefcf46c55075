"""A store writer run as a real process by the store tests: deterministic rows, optional delays.

    python -m tests._store_writer PATH --videos 40 --chunk 4 [--shard I --num-shards N] [--delay S]
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from shared.store import (DONE, FAILED, SKIPPED, StoreSpec, VideoResult, create_store, pack_chunk,
                          shard_chunks)

DIM, MAX_ROWS = 8, 6


def spec(chunk: int) -> StoreSpec:
    return StoreSpec(dataset='toy', expert='toy', feature_dim=DIM, max_rows=MAX_ROWS, chunk_size=chunk,
                     has_tokens=True, model='toy', weights='random')


def video_ids(n: int) -> list[str]:
    return [f'vid{i:04d}' for i in range(n)]


def result_for(row: int) -> VideoResult:
    """Row `row`'s result: a function of the row only, covering every status."""
    if row % 11 == 5:
        return VideoResult.failed(f'cannot decode video {row % 3}', DIM)
    if row % 13 == 7:
        return VideoResult.skipped(DIM, 'no audio stream')
    length = row % (MAX_ROWS + 1)
    rng = np.random.default_rng(row)
    feats = rng.standard_normal((length, DIM)).astype(np.float32)
    times = np.stack([np.arange(length), np.arange(length) + 1.0], axis=1)
    tokens = [{'word': f'w{row}', 'start': 0.0, 'end': 1.0, 'conf': 0.9}] if length else []
    return VideoResult(feats, times, DONE, tokens=tokens)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument('path')
    p.add_argument('--videos', type=int, default=40)
    p.add_argument('--chunk', type=int, default=4)
    p.add_argument('--shard', type=int, default=0)
    p.add_argument('--num-shards', type=int, default=1)
    p.add_argument('--delay', type=float, default=0.0)
    a = p.parse_args(argv)
    store = create_store(a.path, video_ids(a.videos), spec(a.chunk))
    mine = shard_chunks(store.n_chunks, a.shard, a.num_shards)
    for c in store.pending_chunks(mine):
        results = [result_for(r) for r in store.chunk_rows(c)]
        store.write_chunk(c, pack_chunk(results, MAX_ROWS, DIM, has_tokens=True))
        print(f'chunk {c}', flush=True)
        time.sleep(a.delay)
    return 0


if __name__ == '__main__':
    sys.exit(main())
