"""`python -m train.index` (issue 25 item 1) on runs of every model: embeddings of every demo video in a
resumable, shardable store, thumbnails, and an index whose top k is brute-force `model.similarity`'s."""
from __future__ import annotations

import dataclasses
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

import shared.store
from shared.datasets import load_manifest
from shared.files import sha256_file
from shared.store import StoreError
from train.captions import build_caption_encoder
from train.data import load_split
from train.evaluate import embed_videos, evaluate
from train.index import EMBEDDINGS, FAISS, THUMBS, EmbeddingStore, build_index, embed_collection
from train.index import main as index_main
from train.main import main as train_main
from train.models.base import TextEmbedding
from train.runs import load_run
from train.search import Searcher

from tests.train.test_train import _args, _config

MODELS = ('mee', 'ce', 'mmt', 'ssb')


@pytest.fixture(scope='module')
def runs(demo_stores: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One epoch of each model on the demo stores: random-ish weights, real runs."""
    data, features = demo_stores
    tmp = tmp_path_factory.mktemp('index_runs')
    out = {}
    for model in MODELS:
        assert train_main(_args(data, features, _config(tmp, model, epochs=1), tmp / model)) == 0
        out[model] = tmp / model / 'seed0'
    return out


@pytest.mark.slow
@pytest.mark.parametrize('model', MODELS)
def test_index_of_every_demo_video_ranks_as_the_model(model: str, runs: dict[str, Path], demo_stores: tuple[Path, Path],
                                                      tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data, features = demo_stores
    out = tmp_path / 'index'
    args = ['--run', str(runs[model]), '--dataset', 'demo', '--data-root', str(data), '--features-root', str(features),
            '--out', str(out), '--chunk-size', '32', '--num-shards', '2']
    assert index_main([*args, '--shard', '0']) == 0  # 1 of the 2 chunks
    assert 'once every shard is' in capsys.readouterr().out and not (out / FAISS).exists()
    assert index_main([*args, '--shard', '1']) == 0
    assert 'serve it: python -m pipelines.serve' in capsys.readouterr().out
    manifest = load_manifest('demo', data)
    n = len(manifest.video_ids)
    ids, paths, video = EmbeddingStore(out / EMBEDDINGS).read()
    assert ids == list(manifest.video_ids) and all((manifest.root / p).is_file() for p in paths)
    thumbs = sorted(int(p.stem) for p in (out / THUMBS).glob('*.jpg'))
    assert thumbs == list(range(n)) and Image.open(out / THUMBS / '0.jpg').size[0] == 240

    loaded = load_run(runs[model])
    cfg = loaded.cfg
    captions = build_caption_encoder(cfg.model.text, cfg.data, data, runs[model], None)
    test = load_split(manifest, 'official', 'test', features, cfg.model.experts, captions)
    # the stored embeddings are the model's own, as evaluation computes them
    rows = [manifest.video_ids.index(v) for v in test.video_ids]
    own = embed_videos(loaded.model, test, torch.device('cpu'))
    torch.testing.assert_close(video.emb[rows], own.emb, atol=1e-5, rtol=1e-5)
    assert torch.equal(video.available[rows], own.available)
    # audio missing in some: two patterns, but one for the support-set model (one embedding) and MMT (every
    # expert enters its score, eq. 6)
    patterns = len({tuple(a) for a in video.available.tolist()})
    assert patterns == 1 if model in ('ssb', 'mmt') else patterns >= 2

    texts = [c for v in manifest.video_ids[:12] for c in manifest.captions[v][:2]]
    with torch.no_grad():
        text = loaded.model.encode_text(captions.encode(texts).batch(np.arange(len(texts))))
        brute = loaded.model.similarity(text, video)
    scores, top = build_index(out).search(text, 10)
    np.testing.assert_allclose(scores, torch.topk(brute, 10).values.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(brute.numpy(), top, 1), scores, atol=1e-5)
    # train.search over the run's gallery (its test videos): the model's ranking of all of them (k past their
    # number), each named by its own id
    searcher = Searcher(runs[model], data)
    hits = searcher.search(texts[0], k=len(test.video_ids) + 5)
    best = torch.sort(loaded.model.similarity(TextEmbedding(text.emb[:1], text.weights[:1]), own)[0], descending=True)
    assert [v for v, _ in hits] == [test.video_ids[i] for i in best.indices]
    np.testing.assert_allclose([s for _, s in hits], best.values.numpy(), atol=1e-5)
    # a query the text encoder sees nothing of would rank alike with any other such query: refused
    with pytest.raises(ValueError, match='word vector' if model in ('mee', 'ce') else "run's vocabulary"):
        searcher.search('zzzzqqq xxyy')
    # validation hands evaluate the model in training mode: it scores in eval mode (no dropout, as the test does)
    evaluate(loaded.model.train(), test, torch.device('cpu'))
    assert not any(m.training for m in loaded.model.modules())


@pytest.mark.slow
def test_a_rerun_embeds_only_unfinished_chunks(runs: dict[str, Path], demo_stores: tuple[Path, Path],
                                               tmp_path: Path) -> None:
    data, features = demo_stores
    out = tmp_path / 'index'
    args = ['--run', str(runs['ce']), '--dataset', 'demo', '--data-root', str(data), '--features-root', str(features),
            '--out', str(out), '--chunk-size', '32']
    assert index_main(args) == 0
    first = np.asarray(zarr.open_group(str(out / EMBEDDINGS), mode='r')['emb'][:])
    group = zarr.open_group(str(out / EMBEDDINGS), mode='r+')
    group['status'][32:60] = np.zeros(28, np.uint8)  # chunk 1 cut short by a kill
    group['emb'][32:60] = np.zeros_like(first[32:60])
    (out / THUMBS / '0.jpg').unlink()
    (out / THUMBS / '40.jpg').unlink()
    shutil.rmtree(out / FAISS)
    assert index_main(args) == 0
    np.testing.assert_array_equal(np.asarray(group['emb'][:]), first)
    assert (out / THUMBS / '40.jpg').is_file() and not (out / THUMBS / '0.jpg').is_file()  # chunk 0 was skipped
    assert json.loads((out / FAISS / 'index.json').read_text())['shape'][0] == 60
    # another run's embeddings are never resumed
    assert index_main([*args[:1], str(runs['mee']), *args[2:]]) == 1
    # nor are expert stores whose rows are not the manifest's videos in order (rows are read by position)
    manifest = load_manifest('demo', data)
    shuffled = dataclasses.replace(manifest, video_ids=manifest.video_ids[::-1], paths=manifest.paths[::-1])
    with pytest.raises(StoreError, match='holds other videos than the demo manifest'):
        embed_collection(runs['ce'], shuffled, features, tmp_path / 'other')


def _retrain_in_place(checkpoint: Path) -> None:
    """What a resumed or repeated run does to its checkpoint: same file name, other weights."""
    state = torch.load(checkpoint, map_location='cpu', weights_only=True)
    g = torch.Generator().manual_seed(0)
    state['model'] = {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
                      for k, v in state['model'].items()}
    torch.save(state, checkpoint)


@pytest.mark.slow
def test_an_index_of_an_older_checkpoint_state_is_refused_or_made_again(
        runs: dict[str, Path], demo_stores: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data, features = demo_stores
    args = ['--run', str(runs['ce']), '--dataset', 'demo', '--data-root', str(data), '--features-root', str(features)]
    out = tmp_path / 'index'
    assert index_main([*args, '--out', str(out)]) == 0
    old = EmbeddingStore(out / EMBEDDINGS).read()[2].emb
    checkpoint = load_run(runs['ce']).checkpoint
    saved = checkpoint.read_bytes()
    try:
        _retrain_in_place(checkpoint)
        capsys.readouterr()
        assert index_main([*args, '--out', str(out)]) == 1
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith('error: ')]
        assert len(errors) == 1 and "another state of the run's checkpoint" in errors[0] and '--overwrite' in errors[0]
        assert index_main([*args, '--out', str(out), '--overwrite']) == 0
        assert index_main([*args, '--out', str(tmp_path / 'fresh')]) == 0
        again = EmbeddingStore(out / EMBEDDINGS).read()[2].emb
        torch.testing.assert_close(again, EmbeddingStore(tmp_path / 'fresh' / EMBEDDINGS).read()[2].emb)
        assert not torch.allclose(again, old, atol=1e-3)
        assert build_index(out).source == {'checkpoint_sha256': sha256_file(checkpoint)}
        assert len(list((out / THUMBS).glob('*.jpg'))) == 60
        # a FAISS index left from other embeddings is not served as this store's
        shutil.rmtree(out / FAISS)
        shutil.copytree(tmp_path / 'fresh' / FAISS, out / FAISS)
        zarr.open_group(str(out / EMBEDDINGS), mode='r+').attrs['checkpoint_sha256'] = 'older'
        with pytest.raises(StoreError, match='built from other embeddings'):
            build_index(out)
    finally:
        checkpoint.write_bytes(saved)


@pytest.mark.slow
def test_index_chunks_read_each_expert_store_unit_once(runs: dict[str, Path], demo_stores: tuple[Path, Path],
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk smaller than the stores' units (32 videos here; 512 in a sharded store) is rounded up to them."""
    data, features = demo_stores
    reads: Counter = Counter()
    real = shared.store.ExpertStore._read_chunk

    def counted(store, chunk, *rest, **kw):
        reads[store.path.name, chunk] += 1
        return real(store, chunk, *rest, **kw)

    monkeypatch.setattr(shared.store.ExpertStore, '_read_chunk', counted)
    store = embed_collection(runs['ce'], load_manifest('demo', data), features, tmp_path / 'index', chunk_size=16)
    assert store.chunk_size == 32 and store.complete()
    expected = Counter({(f'{e}.zarr', c): 1 for e in ('object', 'scene', 'audio') for c in (0, 1)})
    expected.update((f'{e}.zarr', 0) for e in ('object', 'scene', 'audio'))  # the probe of row 0: the shape
    assert reads == expected


@pytest.mark.slow
def test_a_chunk_size_below_one_is_one_line_and_a_failed_store_leaves_nothing(
        runs: dict[str, Path], demo_stores: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data, features = demo_stores
    args = ['--run', str(runs['ce']), '--dataset', 'demo', '--data-root', str(data), '--features-root', str(features),
            '--out', str(tmp_path / 'index')]
    for size in ('0', '-4'):
        capsys.readouterr()
        assert index_main([*args, '--chunk-size', size]) == 1
        err = capsys.readouterr().err
        assert err == f'error: --chunk-size must be >= 1 video, got {size}\n', err
    assert not (tmp_path / 'index').exists()
    with pytest.raises(ValueError):  # Zarr refuses a negative dimension: the half-made store is removed
        EmbeddingStore.create(tmp_path / 'index' / EMBEDDINGS, load_manifest('demo', data), -1, 8,
                              {'run': '', 'checkpoint': '', 'checkpoint_sha256': ''})
    assert list((tmp_path / 'index').iterdir()) == []


def test_a_store_of_the_same_videos_in_another_order_or_checkpoint_state_is_refused(tmp_path: Path) -> None:
    """Rows are read by position: a manifest listing the same videos in another order is another video list."""
    from shared.datasets import Manifest

    def manifest(ids: tuple[str, ...]) -> Manifest:
        return Manifest('toy', tmp_path, ids, tuple(tmp_path / f'{v}.mp4' for v in ids), {}, {})

    attrs = {'run': 'runs/x', 'checkpoint': 'best.pt', 'checkpoint_sha256': 'abc'}
    store = EmbeddingStore.create(tmp_path / EMBEDDINGS, manifest(('b', 'a', 'c')), 2, 4, attrs, chunk_size=2)
    assert store.made_by_other(attrs, ['b', 'a', 'c']) == ''
    assert 'another state' in store.made_by_other({**attrs, 'checkpoint_sha256': 'def'}, ['b', 'a', 'c'])
    with pytest.raises(StoreError, match='another video list'):
        EmbeddingStore.create(tmp_path / EMBEDDINGS, manifest(('a', 'b', 'c')), 2, 4, attrs, chunk_size=2)


def test_what_builds_killed_with_minus_9_left_goes_at_the_next_build(tmp_path: Path) -> None:
    """A build killed with -9 left its `.faiss.tmp-PID` (a copy of the index) or its embedding store's
    `.embeddings.zarr.tmp-PID-HEX` folder for ever: only files had a cleanup. The next build removes
    those of processes of this host that are gone; a live process's stays, as does another host's."""
    import subprocess
    import sys

    from shared.datasets import Manifest
    from shared.files import _host
    from train.models.base import VideoEmbedding

    ids = ('a', 'b', 'c')
    out = tmp_path / 'index'
    gone = int(subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True,
                              text=True, check=True).stdout)
    live = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        dead = [out / f'.{FAISS}.{_host()}-{gone}.tmp', out / f'.{EMBEDDINGS}.{_host()}-{gone}-0badcafe.tmp']
        kept = [out / f'.{FAISS}.{_host()}-{live.pid}.tmp', out / f'.{EMBEDDINGS}.0000abcd-{gone}-0badcafe.tmp']
        for p in (*dead, *kept):
            (p / 'sub').mkdir(parents=True)
            (p / 'sub' / 'x.bin').write_bytes(b'half')
        manifest = Manifest('toy', tmp_path, ids, tuple(tmp_path / f'{v}.mp4' for v in ids), {}, {})
        store = EmbeddingStore.create(out / EMBEDDINGS, manifest, 2, 4,
                                      {'run': 'r', 'checkpoint': 'c', 'checkpoint_sha256': 'x'}, chunk_size=2)
        assert not dead[1].exists() and dead[0].exists()
        g = torch.Generator().manual_seed(0)
        for c in range(store.n_chunks):
            n = len(store.chunk_rows(c))
            store.write(c, VideoEmbedding(torch.randn(n, 2, 4, generator=g), torch.ones(n, 2, dtype=torch.bool)))
        build_index(out)
        assert not any(p.exists() for p in dead) and all(p.exists() for p in kept)
        assert sorted(p.name for p in out.iterdir() if not p.name.startswith('.')) == [EMBEDDINGS, FAISS]
    finally:
        live.kill()
        live.wait()


@pytest.mark.slow
def test_mmt_masks_made_before_eq6_are_refused_by_serve_remade_by_overwrite_and_fixed_in_a_gallery(
        runs: dict[str, Path], demo_stores: tuple[Path, Path], tmp_path: Path) -> None:
    """Before 7909de1 MMT marked a video's missing experts, and the searches renormalised the mixture
    weights over the rest; the embeddings were the same. Such an index was served with the old scores
    (no marker told it apart), and --overwrite kept it (same run, checkpoint and videos)."""
    from pipelines.serve import Collection
    from shared.config import ConfigError

    data, features = demo_stores
    run = tmp_path / 'run'
    shutil.copytree(runs['mmt'], run)
    out = tmp_path / 'index'
    args = ['--run', str(run), '--dataset', 'demo', '--data-root', str(data), '--features-root', str(features),
            '--out', str(out)]
    assert index_main(args) == 0
    _, _, video = EmbeddingStore(out / EMBEDDINGS).read()
    stale = video.available.clone()
    stale[::3, 1] = False  # as the earlier version marked videos without audio
    shutil.rmtree(out / FAISS)
    zarr.open_group(str(out / EMBEDDINGS), mode='r+')['available'][:] = stale.numpy()
    shutil.rmtree(out / EMBEDDINGS / 'chunk_sums')  # made before the chunk sums too: else refused as damaged
    with pytest.raises(ConfigError, match=r'MMT masks of an earlier version.*index it again: python -m train.index'):
        Collection(run, out, data)
    assert index_main([*args, '--overwrite']) == 0
    assert EmbeddingStore(out / EMBEDDINGS).read()[2].available.all()
    assert Collection(run, out, data).video.available.all()

    query = load_manifest('demo', data).captions[load_manifest('demo', data).video_ids[0]][0]
    before = Searcher(run, data).search(query, k=20)
    gallery = torch.load(run / 'gallery.pt', weights_only=True)
    gallery['available'][::2, 1] = False
    torch.save(gallery, run / 'gallery.pt')
    searcher = Searcher(run, data)
    assert 'scored with every expert' in searcher.note
    assert searcher.search(query, k=20) == before  # the embeddings hold: only the mask was stale


@pytest.mark.slow
def test_sigterm_stops_as_ctrl_c_keeping_finished_chunks_and_no_half_thumbnail(tiny: Path, tmp_path: Path,
                                                                               subprocess_env: dict,
                                                                               repo_root: Path) -> None:
    """SIGTERM (a cluster shard's time limit) while thumbnails are cut: one line saying how to go on and
    exit 130, as at Ctrl-C, no thumbnail cut short left beside the others; its default had killed the
    process silently (and Ctrl-C ended in a traceback). The rerun finishes the index."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from shared.media import ffmpeg_exe
    from tests.train.conftest import tiny_args

    root = tmp_path / 'tiny'
    shutil.copytree(tiny, root)
    ids = [v['id'] for v in json.loads((root / 'data' / 'demo' / 'demo.json').read_text())['videos']]
    (root / 'data' / 'demo' / 'videos').mkdir()
    for i, v in enumerate(ids):  # real files for FFmpeg's thumbnails
        subprocess.run([ffmpeg_exe(), '-loglevel', 'error', '-f', 'lavfi', '-i',
                        'testsrc=size=64x48:rate=10:duration=2', '-vf', f'hue=h={30 * i}',
                        str(root / 'data' / 'demo' / 'videos' / f'{v}.mp4')], check=True)
    assert train_main(tiny_args(root, tmp_path / 'run', '--set', 'train.epochs=1')) == 0
    out = tmp_path / 'index'
    cmd = [sys.executable, '-m', 'train.index', '--run', str(tmp_path / 'run'), '--dataset', 'demo', '--data-root',
           str(root / 'data'), '--features-root', str(root / 'features'), '--out', str(out)]
    proc = subprocess.Popen(cmd, cwd=repo_root, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while not (out / THUMBS).is_dir() or len(list((out / THUMBS).glob('*.jpg'))) < 2:
        assert proc.poll() is None and time.time() < deadline, 'the index was made before it could be stopped'
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and 'Traceback' not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == 'interrupted: finished chunks are kept; rerun the same command to continue'
    assert not list((out / THUMBS).glob('.*')) and not (out / FAISS).exists()
    again = subprocess.run(cmd, cwd=repo_root, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert EmbeddingStore(out / EMBEDDINGS).complete() and len(list((out / THUMBS).glob('*.jpg'))) == len(ids)
