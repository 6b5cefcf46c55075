"""`python -m train.index` (issue 25 item 1) on runs of every model: embeddings of every demo video in a
resumable, shardable store, thumbnails, and an index whose top k is brute-force `model.similarity`'s."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from shared.datasets import load_manifest
from shared.store import StoreError
from train.captions import build_caption_encoder
from train.data import load_split
from train.evaluate import embed_videos
from train.index import EMBEDDINGS, FAISS, THUMBS, EmbeddingStore, build_index, embed_collection
from train.index import main as index_main
from train.main import main as train_main
from train.runs import load_run

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
            '--out', str(out), '--chunk-size', '16', '--num-shards', '2']
    assert index_main([*args, '--shard', '0']) == 0  # 2 of the 4 chunks
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
    assert len({tuple(a) for a in video.available.tolist()}) >= (1 if model == 'ssb' else 2)  # audio missing in some

    texts = [c for v in manifest.video_ids[:12] for c in manifest.captions[v][:2]]
    with torch.no_grad():
        text = loaded.model.encode_text(captions.encode(texts).batch(np.arange(len(texts))))
        brute = loaded.model.similarity(text, video)
    scores, top = build_index(out).search(text, 10)
    np.testing.assert_allclose(scores, torch.topk(brute, 10).values.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(brute.numpy(), top, 1), scores, atol=1e-5)


@pytest.mark.slow
def test_a_rerun_embeds_only_unfinished_chunks(runs: dict[str, Path], demo_stores: tuple[Path, Path],
                                               tmp_path: Path) -> None:
    data, features = demo_stores
    out = tmp_path / 'index'
    args = ['--run', str(runs['ce']), '--dataset', 'demo', '--data-root', str(data), '--features-root', str(features),
            '--out', str(out), '--chunk-size', '16']
    assert index_main(args) == 0
    first = np.asarray(zarr.open_group(str(out / EMBEDDINGS), mode='r')['emb'][:])
    group = zarr.open_group(str(out / EMBEDDINGS), mode='r+')
    group['status'][16:32] = np.zeros(16, np.uint8)  # chunk 1 cut short by a kill
    group['emb'][16:32] = np.zeros_like(first[16:32])
    (out / THUMBS / '0.jpg').unlink()
    (out / THUMBS / '20.jpg').unlink()
    shutil.rmtree(out / FAISS)
    assert index_main(args) == 0
    np.testing.assert_array_equal(np.asarray(group['emb'][:]), first)
    assert (out / THUMBS / '20.jpg').is_file() and not (out / THUMBS / '0.jpg').is_file()  # chunk 0 was skipped
    assert json.loads((out / FAISS / 'index.json').read_text())['shape'][0] == 60
    # another run's embeddings are never resumed
    assert index_main([*args[:1], str(runs['mee']), *args[2:]]) == 1
    # nor are expert stores whose rows are not the manifest's videos in order (rows are read by position)
    manifest = load_manifest('demo', data)
    shuffled = dataclasses.replace(manifest, video_ids=manifest.video_ids[::-1], paths=manifest.paths[::-1])
    with pytest.raises(StoreError, match='holds other videos than the demo manifest'):
        embed_collection(runs['ce'], shuffled, features, tmp_path / 'other')
