"""Folder datasets of the same name (`folder:/a/vids`, `folder:/b/vids`) get stores of their own
(issue 18, item 6): real FFmpeg clips, a real expert with random weights, real stores."""
from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import numpy as np
import pytest

from extract.run import main
from shared.datasets import load_manifest
from shared.media import ffmpeg_exe
from shared.store import StoreError, create_store, open_store, store_path
from tests import _store_writer as W
from tests.extract.conftest import TINY


def _clip(path: Path, source: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([ffmpeg_exe(), '-y', '-v', 'error', '-f', 'lavfi', '-i', f'{source}:size=64x48:duration=1',
                    '-c:v', 'libx264', '-pix_fmt', 'yuv420p', str(path)], check=True, capture_output=True)


def test_two_folders_of_one_name_get_their_own_stores(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = tmp_path / 'a' / 'vids', tmp_path / 'b' / 'vids'
    _clip(a / 'clip.mp4', 'testsrc2=rate=5')  # the same file name in both: the same video ids
    _clip(b / 'clip.mp4', 'color=c=red:rate=5')
    ma, mb = load_manifest(f'folder:{a}'), load_manifest(f'folder:{b}')
    assert ma.video_ids == mb.video_ids and ma.name != mb.name
    assert ma.name.startswith('folder-vids-') and mb.name.startswith('folder-vids-')
    assert load_manifest(f'folder:{tmp_path / "a" / "." / "vids"}').name == ma.name  # the resolved path counts
    features = tmp_path / 'features'
    for folder in (a, b):
        assert main(['--dataset', f'folder:{folder}', '--features-root', str(features), '--expert', 'action.r2plus1d_18', *TINY,
                     '--workers', '0', '--no-progress']) == 0
        out = capsys.readouterr().out
        assert 'every chunk is finished' not in out and f'under {folder}' in out  # where the manifest came from
    rows = {m.name: open_store(store_path(features, m.name, 'action.r2plus1d_18'), warn_random=False) for m in (ma, mb)}
    assert rows[ma.name].attrs['source'] == str(a.resolve())
    assert rows[mb.name].attrs['source'] == str(b.resolve())
    fa, fb = (rows[m.name].read().features for m in (ma, mb))
    assert fa.any() and not np.array_equal(fa, fb)  # each folder's own pictures


def test_a_store_of_another_source_is_not_resumed(tmp_path: Path) -> None:
    path = tmp_path / 'toy.zarr'
    spec = dataclasses.replace(W.spec(4), source='/a/vids')
    create_store(path, W.video_ids(10), spec)
    assert create_store(path, W.video_ids(10), spec).n_videos == 10  # the same source resumes
    with pytest.raises(StoreError, match="holds features of '/a/vids', not of '/b/vids'"):
        create_store(path, W.video_ids(10), dataclasses.replace(spec, source='/b/vids'))
    with pytest.raises(StoreError, match='another video list'):
        create_store(path, W.video_ids(9), spec)
