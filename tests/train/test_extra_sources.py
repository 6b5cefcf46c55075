"""train/extra.py: training on several sources (issue 23, item 3; MEE sec. 4.2, alpha): a run's
videos mixed with the items of an image-like dataset written here (one frame row at [0, 0], the
audio expert skipped or with no store at all), in memory, streamed and under torchrun."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from shared.config import ConfigError
from shared.datasets import load_manifest
from shared.store import StoreSpec, VideoResult, create_store, pack_chunk, store_path
from tests.train.test_stream import SMALL, mmt_config, write_dataset
from train.captions import build_caption_encoder
from train.config import load_run_cfg
from train.extra import extra_manifests, load_extra, mix_in
from train.main import main as train_main
from train.stream import StreamFeed, load_part

#: the extra source: an imported-features dataset (msvd's adapter falls back to imported.json)
EXTRA, SPLIT = 'msvd', 'images'
IMAGES = 50  # 40 training images, 10 test
PRIMARY_TRAIN = 64  # write_dataset(80 videos): 80% train
IMAGE_WORDS = ['elephant', 'umbrella', 'baseball', 'train', 'kite']


def write_images(data: Path, features: Path, audio: str = 'skipped', object_dim: int = SMALL['object']) -> None:
    """`IMAGES` captioned still images of dataset EXTRA: an object store of one row each at [0, 0];
    audio: ``skipped`` (every image status 3, as extraction marks a still image) or ``none`` (no store)."""
    rng = np.random.default_rng(7)
    ids = [f'img{i:04d}' for i in range(IMAGES)]
    root = data / EXTRA
    root.mkdir(parents=True, exist_ok=True)
    caps = {v: [' '.join(rng.choice(IMAGE_WORDS, 4))] for v in ids}
    (root / 'imported.json').write_text(json.dumps({'source': 'test', 'videos': ids, 'captions': caps, 'splits': {
        SPLIT: {'train': ids[:40], 'test': ids[40:]}}}))
    spec = StoreSpec(EXTRA, 'object', object_dim, 1, chunk_size=16, weights='random')
    store = create_store(store_path(features, EXTRA, 'object'), ids, spec)
    for c in range(store.n_chunks):
        rows = [VideoResult(rng.standard_normal((1, object_dim)).astype(np.float32), np.zeros((1, 2), np.float32))
                for _ in store.chunk_rows(c)]
        store.write_chunk(c, pack_chunk(rows, 1, object_dim, has_tokens=False))
    if audio == 'skipped':
        store = create_store(store_path(features, EXTRA, 'audio'), ids,
                             StoreSpec(EXTRA, 'audio', SMALL['audio'], 1, chunk_size=16, weights='random'))
        for c in range(store.n_chunks):
            rows = [VideoResult.skipped(SMALL['audio'], 'still image') for _ in store.chunk_rows(c)]
            store.write_chunk(c, pack_chunk(rows, 1, SMALL['audio'], has_tokens=False))


@pytest.fixture(scope='module')
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """80 demo videos (64 training, 6 rows of object + audio, chunks of 16) and the images."""
    data, features = write_dataset(tmp_path_factory.mktemp('mixed'), 80, SMALL, rows=6, chunk=16)
    write_images(data, features)
    return data, features


def _config(tmp: Path, rate: float = 0.5, **train: object) -> Path:
    path = mmt_config(tmp / 'mixed.yaml', SMALL, 6, **train)
    cfg = yaml.safe_load(path.read_text())
    cfg['data']['extra'] = [{'dataset': EXTRA, 'split': SPLIT, 'rate': rate}]
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train_part(mixed: tuple[Path, Path], tmp: Path, **train: object):
    """The training part as train_run builds it (in memory, or streamed), and the run config."""
    data, features = mixed
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = load_run_cfg(_config(tmp, **train))
    manifest = load_manifest('demo', data)
    sources = extra_manifests(cfg.data, data)
    captions = build_caption_encoder(cfg.model.text, cfg.data, data, tmp, lambda: ['red cat elephant'])
    part = load_part(manifest, 'official', 'train', features, cfg.model.experts, captions, cfg.train, False)
    extra = load_extra(sources, len(part), features, 'demo', cfg.model.experts, captions)
    if hasattr(part, 'bounds'):
        part.extra = extra
    else:
        part = mix_in(part, extra)
    return cfg, part


def _is_image(video: dict) -> torch.Tensor:
    """Which batch items are images: their one object row is at [0, 0] (a video's first is [0, 1])."""
    return video['object'].times[:, 0, 1] == 0


@pytest.mark.parametrize('extra, message', [
    ([{'dataset': 'nosuchset', 'split': 'x', 'rate': 0.5}], "unknown dataset 'nosuchset'"),
    ([{'dataset': EXTRA, 'split': SPLIT, 'rate': 0}], 'rate must be a positive number'),
    ([{'dataset': EXTRA, 'split': SPLIT, 'rate': -1.0}], 'rate must be a positive number'),
    ([{'dataset': EXTRA, 'split': SPLIT}, {'dataset': EXTRA, 'split': SPLIT, 'rate': 1.0}], f'{EXTRA}/{SPLIT} twice'),
    ([{'dataset': 'demo', 'split': 'official'}], 'demo/official twice'),
])
def test_a_wrong_extra_source_is_one_line_when_the_config_loads(tmp_path: Path, extra: list, message: str) -> None:
    path = mmt_config(tmp_path / 'c.yaml', SMALL, 6)
    cfg = yaml.safe_load(path.read_text())
    cfg['data']['extra'] = extra
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError) as err:
        load_run_cfg(path)
    assert message in str(err.value) and '\n' not in str(err.value)


def test_each_epoch_draws_rate_times_the_videos_deterministically(mixed: tuple[Path, Path], tmp_path: Path) -> None:
    cfg, part = _train_part(mixed, tmp_path, streaming='off')
    assert len(part) == PRIMARY_TRAIN + 40 and part.epoch_size == PRIMARY_TRAIN + 32  # round(0.5 x 64)

    def epoch(e: int) -> np.ndarray:
        videos, caps = part.epoch_plan(16, np.random.default_rng([0, e]))
        return videos.reshape(-1)

    first = epoch(0)
    assert len(first) == 96 and (first >= PRIMARY_TRAIN).sum() == 32
    assert sorted(first[first < PRIMARY_TRAIN].tolist()) == list(range(PRIMARY_TRAIN))  # every video once
    assert np.array_equal(first, epoch(0)) and not np.array_equal(first, epoch(1))
    assert set(first[first >= PRIMARY_TRAIN].tolist()) != set(epoch(1)[epoch(1) >= PRIMARY_TRAIN].tolist())
    # batches mix videos and images
    plan = first.reshape(6, 16)
    assert any(((b < PRIMARY_TRAIN).any() and (b >= PRIMARY_TRAIN).any()) for b in plan)


def test_a_skipped_expert_and_a_missing_store_are_unavailable_for_the_images(mixed: tuple[Path, Path],
                                                                             tmp_path: Path) -> None:
    cfg, part = _train_part(mixed, tmp_path, streaming='off')
    images = np.arange(PRIMARY_TRAIN, len(part))
    assert not part.experts['audio'].available[images].any()  # status 3 SKIPPED
    assert part.experts['object'].available[images].all()
    assert part.experts['object'].mask[images].sum(1).tolist() == [1] * 40  # one row, padded to the videos' 6
    assert part.experts['object'].x.shape[1:] == (6, SMALL['object'])
    # the same images without any audio store
    data, features = write_dataset(tmp_path / 'nostore', 80, SMALL, rows=6, chunk=16)
    write_images(data, features, audio='none')
    _, bare = _train_part((data, features), tmp_path / 'bare', streaming='off')
    assert not bare.experts['audio'].available[images].any() and not bare.experts['audio'].x[images].any()
    np.testing.assert_array_equal(bare.experts['object'].x[images], part.experts['object'].x[images])


def test_an_extra_source_without_any_store_is_refused(tmp_path: Path) -> None:
    data, features = write_dataset(tmp_path, 80, SMALL, rows=6, chunk=16)
    write_images(data, features)
    shutil.rmtree(features / EXTRA)  # never extracted (or another features root): every item would be empty
    with pytest.raises(Exception) as err:
        _train_part((data, features), tmp_path, streaming='off')
    assert f'data.extra {EXTRA}/{SPLIT}: no store of any of the run\'s experts' in str(err.value)


def test_an_extra_store_of_another_dimension_is_refused(tmp_path: Path) -> None:
    data, features = write_dataset(tmp_path, 80, SMALL, rows=6, chunk=16)
    write_images(data, features, object_dim=12)
    with pytest.raises(Exception) as err:
        _train_part((data, features), tmp_path, streaming='off')
    assert f'data.extra {EXTRA}/{SPLIT}' in str(err.value) and 'D=12' in str(err.value)


def test_a_streamed_epoch_mixes_the_same_draws_with_their_in_memory_inputs(mixed: tuple[Path, Path],
                                                                          tmp_path: Path) -> None:
    _, whole = _train_part(mixed, tmp_path / 'mem', streaming='off')
    _, part = _train_part(mixed, tmp_path / 'stream', streaming='on', shuffle_buffer=20)
    assert part.epoch_size == PRIMARY_TRAIN + 32

    def epoch(e: int) -> list:
        return list(StreamFeed(part, torch.device('cpu'), 20).epoch(16, np.random.default_rng([0, e])))

    batches = epoch(0)
    assert len(batches) == 96 // 16
    kinds = [_is_image(v) for v, _ in batches]
    assert sum(int(k.sum()) for k in kinds) == 32 and any(0 < int(k.sum()) < 16 for k in kinds)
    # the images drawn are those of the in-memory epoch (the same draw of the epoch's generator)
    keys = {whole.experts['object'].x[i].tobytes(): i for i in range(len(whole))}
    drawn = sorted(keys[x.numpy().tobytes()] for (v, _), k in zip(batches, kinds) for x in v['object'].x[k])
    videos, _ = whole.epoch_plan(16, np.random.default_rng([0, 0]))
    assert drawn == sorted(videos[videos >= PRIMARY_TRAIN].tolist())
    for (video, text), k in zip(batches, kinds):
        idx = np.array([keys[x.numpy().tobytes()] for x in video['object'].x])
        expected = whole.videos(idx)
        for name in SMALL:
            for field in ('x', 'available', 'mask', 'times'):
                torch.testing.assert_close(getattr(video[name], field), getattr(expected[name], field), rtol=0, atol=0)
        assert not video['audio'].available[k].any()
    again = epoch(0)
    assert all(torch.equal(a[0]['object'].x, b[0]['object'].x) and torch.equal(a[1].x, b[1].x)
               for a, b in zip(batches, again))


def _args(mixed: tuple[Path, Path], config: Path, run: Path) -> list[str]:
    data, features = mixed
    return ['--config', str(config), '--data-root', str(data), '--features-root', str(features), '--run-dir', str(run),
            '--device', 'cpu', '--no-progress']


@pytest.mark.slow
@pytest.mark.parametrize('streaming', ['off', 'on'])
def test_a_run_reports_the_extra_test_part_and_resumes_to_the_same_result(mixed: tuple[Path, Path], tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture,
                                                                         streaming: str) -> None:
    config = _config(tmp_path, epochs=2, streaming=streaming, shuffle_buffer=20)
    assert train_main(_args(mixed, config, tmp_path / 'whole')) == 0
    out = capsys.readouterr().out
    seed = tmp_path / 'whole' / 'seed0'
    assert f'data.extra {EXTRA}/{SPLIT}: 40 training items, 32 drawn each epoch' in out
    assert f'{EXTRA}/{SPLIT} (data.extra) test part' in out
    extra = json.loads((seed / 'test_metrics_extra.json').read_text())
    assert set(extra) == {f'{EXTRA}/{SPLIT}'} and 0 <= extra[f'{EXTRA}/{SPLIT}']['t2v']['R1'] <= 100
    assert f'## {EXTRA}/{SPLIT} (data.extra), test part' in (seed / 'results.md').read_text()
    # the words tokenizer knows the images' captions
    assert set(IMAGE_WORDS) <= set(json.loads((seed / 'tokenizer.json').read_text())['words'])
    # one epoch, then resumed to two: the same weights as two epochs at once
    one = yaml.safe_load(config.read_text())
    one['train']['epochs'] = 1
    (tmp_path / 'one.yaml').write_text(yaml.safe_dump(one))
    assert train_main(_args(mixed, tmp_path / 'one.yaml', tmp_path / 'resumed')) == 0
    assert train_main(_args(mixed, config, tmp_path / 'resumed')) == 0
    a = torch.load(seed / 'checkpoints' / 'last.pt', weights_only=True)['model']
    b = torch.load(tmp_path / 'resumed' / 'seed0' / 'checkpoints' / 'last.pt', weights_only=True)['model']
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / 'resumed' / 'seed0' / 'test_metrics_extra.json').read_text() == json.dumps(extra, indent=1)


@pytest.mark.slow
def test_two_torchrun_processes_train_with_an_extra_source(mixed: tuple[Path, Path], tmp_path: Path,
                                                           subprocess_env: dict, repo_root: Path) -> None:
    from tests.train.test_distributed import _torchrun

    for streaming in ('off', 'on'):
        config = _config(tmp_path, epochs=1, streaming=streaming, shuffle_buffer=20)
        run = subprocess.run(_torchrun(2, '-m', 'train', *_args(mixed, config, tmp_path / streaming)), cwd=repo_root,
                             env=subprocess_env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        assert 'x 2 processes' in run.stdout and f'{EXTRA}/{SPLIT} (data.extra) test part' in run.stdout
        assert (tmp_path / streaming / 'seed0' / 'test_metrics_extra.json').is_file()


def test_the_coco_recipes_load_once_coco_is_registered(capsys: pytest.CaptureFixture) -> None:
    from tests.train.test_train import pending_extra_configs
    from train.main import CONFIG_DIR

    recipes = {'mee_msrvtt_1k_b_coco', 'mee_msrvtt_1k_b_coco_face', 'mee_lsmdc_coco', 'mee_lsmdc_coco_face'}
    pending = pending_extra_configs()
    assert pending <= recipes  # only the coco recipes wait for a dataset
    if pending:
        pytest.skip('the coco dataset (issue 23 item 2) is not registered on this branch yet')
    for name in sorted(recipes):
        cfg = load_run_cfg(CONFIG_DIR / f'{name}.yaml')
        assert [(e.dataset, e.split) for e in cfg.data.extra] == [('coco', 'mee-1k')]
        assert cfg.data.extra[0].rate == (0.5 if 'msrvtt' in name else 0.82)
        assert ('face' in [e.name for e in cfg.model.experts]) == name.endswith('_face')
