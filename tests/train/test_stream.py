"""train/stream.py: training and evaluation streamed from stores larger than the memory budget."""
from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
import subprocess
import time
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from shared.datasets import load_manifest
from shared.device import torch_threads
from shared.store import ExpertStore, StoreError, StoreSpec, VideoResult, create_store, pack_chunk, store_path
from train.captions import build_caption_encoder
from train.config import TrainCfg, load_run_cfg
from train.data import load_split
from train.main import main as train_main
from train.stream import StreamedPart, StreamFeed, _pack, _unpack, load_part
from train.stream_cache import cache_path

TINY_TEXT = {'weights': 'random', 'tokenizer': 'words', 'vocab_size': 200, 'hidden': 16, 'layers': 1, 'heads': 2,
             'ffn': 32, 'max_positions': 16, 'dropout': 0.0}
WORDS = ['red', 'green', 'blue', 'cat', 'dog', 'car', 'runs', 'sits', 'jumps', 'fast', 'slow', 'big']


def write_dataset(root: Path, videos: int, experts: dict[str, int], rows: int, chunk: int,
                  seed: int = 0, sort_splits: bool = True) -> tuple[Path, Path]:
    """A demo-format manifest of `videos` captioned videos (80/10/10 train/val/test) and one store per
    expert with random features (lengths 0..rows: some videos unavailable), written with shared.store.
    Each split lists its videos in store order, or in random order where not `sort_splits`."""
    rng = np.random.default_rng(seed)
    ids = [f'v{i:05d}' for i in range(videos)]
    data = root / 'data' / 'demo'
    data.mkdir(parents=True)
    caps = {v: [' '.join(rng.choice(WORDS, 5)) for _ in range(2)] for v in ids}
    n_train, n_val = int(videos * 0.8), int(videos * 0.1)
    order = rng.permutation(ids).tolist()
    arrange = sorted if sort_splits else list
    splits = {'train': arrange(order[:n_train]), 'val': arrange(order[n_train:n_train + n_val]),
              'test': arrange(order[n_train + n_val:])}
    (data / 'demo.json').write_text(json.dumps({'videos': [{'id': v, 'file': f'videos/{v}.mp4', 'captions': caps[v]}
                                                           for v in ids], 'splits': splits}))
    features = root / 'features'
    for name, dim in experts.items():
        store = create_store(store_path(features, 'demo', name), ids,
                             StoreSpec('demo', name, dim, rows, chunk_size=chunk, weights='random'))
        for c in range(store.n_chunks):
            results = []
            for _ in store.chunk_rows(c):
                # the first expert has rows for every video: its features tell the videos apart
                n = int(rng.integers(0 if name != next(iter(experts)) else 1, rows + 1))
                times = np.stack([np.arange(n), np.arange(n) + 1.0], 1).astype(np.float32)
                results.append(VideoResult(rng.standard_normal((n, dim)).astype(np.float32), times))
            store.write_chunk(c, pack_chunk(results, rows, dim, has_tokens=False))
    return root / 'data', features


def mmt_config(path: Path, experts: dict[str, int], rows: int, **train: object) -> Path:
    cfg = {'data': {'dataset': 'demo', 'split': 'official', 'max_words': 8},
           'model': {'model': 'mmt', 'text': {'encoder': 'bert', **TINY_TEXT},
                     'transformer': {'layers': 1, 'heads': 2, 'hidden': 16, 'ffn': 32, 'dropout': 0.0,
                                     'max_positions': 8},
                     'experts': [{'name': n, 'dim': d, 'aggregation': 'tokens', 'max_tokens': rows}
                                 for n, d in experts.items()]},
           'train': {'optimizer': 'adam', 'lr': 0.001, 'epochs': 2, 'batch_size': 16, 'selection': 'last', **train}}
    path.write_text(yaml.safe_dump(cfg))
    return path


SMALL = {'object': 24, 'audio': 8}


@pytest.fixture(scope='module')
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """300 videos in 19 chunks of 16 (the last short), 240 of them training videos."""
    return write_dataset(tmp_path_factory.mktemp('stream'), 300, SMALL, rows=6, chunk=16)


def _parts(small: tuple[Path, Path], tmp: Path, **train: object):
    data, features = small
    cfg = load_run_cfg(mmt_config(tmp / 'c.yaml', SMALL, 6), {f'train.{k}': v for k, v in train.items()})
    manifest = load_manifest('demo', data)
    captions = build_caption_encoder(cfg.model.text, cfg.data, data, tmp, lambda: ['red cat'])
    return cfg, manifest, captions


def test_a_streamed_epoch_gives_every_video_once_with_its_in_memory_inputs(small: tuple[Path, Path], tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    cfg, manifest, captions = _parts(small, tmp_path, streaming='on', shuffle_buffer=40, data_workers=2)
    part = load_part(manifest, 'official', 'train', small[1], cfg.model.experts, captions, cfg.train, False)
    assert isinstance(part, StreamedPart) and len(part.bounds) - 1 == 19  # the chunks that hold training videos
    assert 'train part: streamed from the stores' in capsys.readouterr().out
    whole = load_split(manifest, 'official', 'train', small[1], cfg.model.experts, captions, False)
    batches = list(StreamFeed(part, torch.device('cpu'), 40).epoch(16, np.random.default_rng([0, 0])))
    assert len(batches) == 240 // 16
    # which videos: each row's object features identify it (random, so unique) in the in-memory part
    keys = {whole.experts['object'].x[i].tobytes(): i for i in range(len(whole))}
    seen, picked = [], set()
    for video, text in batches:
        for name in SMALL:
            assert video[name].x.shape == (16, 6, SMALL[name])
        idx = np.array([keys[x.numpy().tobytes()] for x in video['object'].x])
        seen += idx.tolist()
        expected = whole.videos(idx)
        for name in SMALL:
            for field in ('x', 'available', 'mask', 'times'):
                torch.testing.assert_close(getattr(video[name], field), getattr(expected[name], field), rtol=0, atol=0)
        # each caption is one of its video's own
        for row, i in zip(text.x, idx):
            own = [torch.equal(whole.captions.batch(np.array([c])).x[0], row) for c in whole.captions_by_video[i]]
            assert any(own)
            picked.add(own.index(True))
    assert sorted(seen) == list(range(240)) and seen != sorted(seen)  # every video once, shuffled
    assert picked == {0, 1}  # each of a video's two captions is drawn (the last one too)


def test_batch_order_depends_on_seed_and_epoch_not_on_the_reader_processes(small: tuple[Path, Path],
                                                                           tmp_path: Path) -> None:
    cfg, manifest, captions = _parts(small, tmp_path, streaming='on', shuffle_buffer=32)
    part = load_part(manifest, 'official', 'train', small[1], cfg.model.experts, captions, cfg.train, False)

    def order(workers: int, epoch: int) -> list[bytes]:
        part.workers = workers
        return [b''.join(x.numpy().tobytes() for x in (v['object'].x, v['audio'].x, t.x)) for v, t in
                StreamFeed(part, torch.device('cpu'), 32).epoch(16, np.random.default_rng([0, epoch]))]

    assert order(0, 0) == order(2, 0) == order(1, 0)
    assert order(1, 1) != order(1, 0)


def test_a_resumed_epoch_builds_the_batches_after_its_skip_and_reads_only_their_units(
        small: tuple[Path, Path], tmp_path: Path) -> None:
    """A run resumed part way through a streamed epoch (at step `skip` of 15) gets the batches an
    uninterrupted epoch gives from there, and does not read again the units whose videos all went
    into the batches before (a preempted HowTo100M job read back up to its whole epoch)."""
    cfg, manifest, captions = _parts(small, tmp_path, streaming='on', shuffle_buffer=32, stream_cache=False)
    part = load_part(manifest, 'official', 'train', small[1], cfg.model.experts, captions, cfg.train, False)
    part.workers = 0
    read: list[int] = []
    chunks = part.chunks
    part.chunks = lambda units, key=None: (read.append(len(units)), chunks(units, key))[1]

    def epoch(skip: int) -> list[bytes]:
        return [b''.join(x.numpy().tobytes() for x in (v['object'].x, v['audio'].x, t.x)) for v, t in
                StreamFeed(part, torch.device('cpu'), 32).epoch(16, np.random.default_rng([0, 3]), skip=skip)]

    whole = epoch(0)
    assert len(whole) == 15
    # 13: a unit's last video is the first one the resumed epoch emits; 16: resumed with more
    # processes, whose epoch has fewer steps
    for skip in (1, 7, 13, 14, 15, 16):
        assert epoch(skip) == whole[skip:], skip
    assert read == [19, 19, 14, 8, 7, 0, 0]  # the units read: all 19 from the start and from step 1, fewer later


def test_an_epochs_reader_processes_draw_nothing_from_torchs_generator(small: tuple[Path, Path],
                                                                       tmp_path: Path) -> None:
    """Dropout on the CPU draws from torch's generator, which last.pt keeps: a run resumed part way
    through a streamed epoch starts that epoch's readers again, so a reader that drew a seed from
    it (a DataLoader's default) shifted every later mask, and the run ended with other weights."""
    cfg, manifest, captions = _parts(small, tmp_path, streaming='on', shuffle_buffer=32, data_workers=1,
                                     stream_cache=False)
    part = load_part(manifest, 'official', 'train', small[1], cfg.model.experts, captions, cfg.train, False)
    assert part.workers == 1
    torch.manual_seed(0)
    before = torch.get_rng_state()
    batches = StreamFeed(part, torch.device('cpu'), 32).epoch(16, np.random.default_rng([0, 3]), skip=7)
    assert len(list(batches)) == 8
    assert torch.equal(torch.get_rng_state(), before)


def test_a_streamed_run_checks_each_chunk_against_its_sums_once(small: tuple[Path, Path], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A unit is read every epoch; its chunks are checked against their sums the first time only,
    and later reads take its lengths and availability from the first (the reader's cost per batch
    is the step's rival for the CPU): they read no other file, and give the same inputs."""
    cfg, manifest, captions = _parts(small, tmp_path, streaming='on', shuffle_buffer=32, data_workers=0)
    part = load_part(manifest, 'official', 'train', small[1], cfg.model.experts, captions, cfg.train, False)
    checked: list[tuple[str, int]] = []
    damage = ExpertStore.damage
    monkeypatch.setattr(ExpertStore, 'damage', lambda self, chunk, data: checked.append((self.path.name, chunk))
                        or damage(self, chunk, data))
    feed = StreamFeed(part, torch.device('cpu'), 32)

    def epoch(k: int) -> list[bytes]:
        return [b''.join(x.numpy().tobytes() for x in (v['object'].x, v['object'].mask, v['audio'].times, t.x))
                for v, t in feed.epoch(16, np.random.default_rng([0, k]))]

    first = epoch(0)
    assert sorted(checked) == sorted({(f'{name}.zarr', c) for name in SMALL for c in range(19)})
    checked.clear()
    assert epoch(1) != first and not checked
    copy = tmp_path / 'features'
    shutil.copytree(small[1], copy)
    part.paths = {name: copy / 'demo' / f'{name}.zarr' for name in SMALL}
    for name in SMALL:  # files that later reads do not open
        for array in ('lengths', 'available', 'chunk_sums'):
            for f in (copy / 'demo' / f'{name}.zarr' / array / 'c').iterdir():
                f.write_bytes(b'\x00garbage')
    assert epoch(0) == first and not checked
    monkeypatch.undo()
    fresh = load_part(manifest, 'official', 'train', copy, cfg.model.experts, captions, cfg.train, False)
    with pytest.raises(StoreError, match='cannot be read'):  # a new run reads them
        next(StreamFeed(fresh, torch.device('cpu'), 32).epoch(16, np.random.default_rng([0, 0])))


def test_a_unit_travels_from_its_reader_as_one_shared_buffer() -> None:
    """A reader process passes a unit's arrays in one shared-memory tensor (the DataLoader sends a
    file descriptor over a socket per tensor); they come back equal, in their dtypes and shapes."""
    rng = np.random.default_rng(0)
    groups = {'a': (rng.standard_normal((3, 5, 7)).astype(np.float32), rng.random(3) < 0.5, None,
                    rng.standard_normal((3, 5, 2)).astype(np.float16)),
              'b': (np.zeros((0, 4), np.float32), np.array([True]), rng.integers(0, 9, (5, 3)).astype(np.int32)[:, 1])}
    buffer, layout = _pack(groups, shared=True)
    assert buffer.is_shared() and not _pack(groups, shared=False)[0].is_shared()
    back = _unpack(*pickle.loads(ForkingPickler.dumps((buffer, layout))))  # as a DataLoader passes it
    for name, arrays in groups.items():
        for a, b in zip(arrays, back[name]):
            if a is None:
                assert b is None
            else:
                assert b.dtype == a.dtype and b.shape == a.shape and np.array_equal(a, b)


def test_a_streamed_part_evaluates_a_chunk_at_a_time_to_the_same_metrics(small: tuple[Path, Path],
                                                                          tmp_path: Path) -> None:
    from train.evaluate import embed_videos, evaluate
    from train.models import create_model

    cfg, manifest, captions = _parts(small, tmp_path, streaming='on', data_workers=1)
    streamed = load_part(manifest, 'official', 'test', small[1], cfg.model.experts, captions, cfg.train)
    whole = load_split(manifest, 'official', 'test', small[1], cfg.model.experts, captions)
    assert isinstance(streamed, StreamedPart) and sorted(streamed.video_ids) == sorted(whole.video_ids)
    sizes = [len(next(iter(v.values())).x) for v in streamed.video_batches(256)]
    assert sizes == np.diff(streamed.bounds).tolist() and max(sizes) <= 16  # a store chunk at a time
    torch.manual_seed(0)
    model = create_model(cfg.model).eval()
    a, b = embed_videos(model, streamed, torch.device('cpu')), embed_videos(model, whole, torch.device('cpu'))
    order = [whole.video_ids.index(v) for v in streamed.video_ids]
    torch.testing.assert_close(a.emb, b.emb[order], rtol=1e-5, atol=1e-6)
    m1, m2 = evaluate(model, streamed, torch.device('cpu')), evaluate(model, whole, torch.device('cpu'))
    for d in m1:
        for k in m1[d]:
            assert m1[d][k] == pytest.approx(m2[d][k], abs=1e-9), (d, k)


def test_evaluation_scores_the_query_captions_only(small: tuple[Path, Path], tmp_path: Path) -> None:
    """A split that names its test queries (MSR-VTT 1k-A: one caption of each video) is scored with
    those captions: the same metrics as a part that holds only them."""
    from train.captions import CaptionData
    from train.evaluate import evaluate
    from train.models import create_model

    cfg, manifest, captions = _parts(small, tmp_path)
    whole = load_split(manifest, 'official', 'test', small[1], cfg.model.experts, captions)
    assert len(whole.query) == len(whole.caption_video) == 2 * len(whole)  # two captions a video
    whole.query = whole.query[1::2]  # each video's second caption
    only = dataclasses.replace(whole, captions=CaptionData(whole.captions.ids[whole.query],
                                                            whole.captions.mask[whole.query]),
                               caption_video=whole.caption_video[whole.query], query=np.arange(len(whole.query)))
    torch.manual_seed(0)
    model = create_model(cfg.model).eval()
    m1, m2 = evaluate(model, whole, torch.device('cpu')), evaluate(model, only, torch.device('cpu'))
    assert m1.keys() == m2.keys() and all(m1[d] == pytest.approx(m2[d]) for d in m1)


def test_a_split_listed_out_of_store_order_keeps_each_caption_with_its_video(tmp_path: Path) -> None:
    """A streamed part holds its videos in store order: each caption still belongs to its own video
    (a split file lists its videos in any order, as MSR-VTT's do), so the metrics are the in-memory part's."""
    from train.evaluate import evaluate
    from train.models import create_model

    data, features = write_dataset(tmp_path / 'ds', 80, SMALL, rows=6, chunk=8, sort_splits=False)
    cfg = load_run_cfg(mmt_config(tmp_path / 'c.yaml', SMALL, 6), {'train.streaming': 'on', 'train.data_workers': 0})
    manifest = load_manifest('demo', data)
    captions = build_caption_encoder(cfg.model.text, cfg.data, data, tmp_path, lambda: ['red cat'])
    streamed = load_part(manifest, 'official', 'train', features, cfg.model.experts, captions, cfg.train, False)
    whole = load_split(manifest, 'official', 'train', features, cfg.model.experts, captions, False)
    assert isinstance(streamed, StreamedPart) and streamed.video_ids != whole.video_ids  # reordered
    owner = [streamed.video_ids[v] for v in streamed.caption_video]
    assert owner == [whole.video_ids[v] for v in whole.caption_video]
    torch.manual_seed(0)
    model = create_model(cfg.model).eval()
    m1, m2 = evaluate(model, streamed, torch.device('cpu')), evaluate(model, whole, torch.device('cpu'))
    assert m1.keys() == m2.keys() and all(m1[d] == pytest.approx(m2[d]) for d in m1)


def test_a_budget_smaller_than_one_chunk_is_one_line(small: tuple[Path, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    data, features = small
    config = mmt_config(tmp_path / 'c.yaml', SMALL, 6, memory_budget='10kB')
    code = train_main(['--config', str(config), '--data-root', str(data), '--features-root', str(features),
                       '--run-dir', str(tmp_path / 'run'), '--device', 'cpu', '--no-progress'])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert 'train.memory_budget 10.0 kB' in err[0] and 'smaller than one store chunk' in err[0]
    with pytest.raises(ValueError, match='not a size'):
        TrainCfg(memory_budget='lots')


def test_off_keeps_a_part_over_the_budget_in_memory(small: tuple[Path, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    cfg, manifest, captions = _parts(small, tmp_path, streaming='off', memory_budget=1000)
    part = load_part(manifest, 'official', 'val', small[1], cfg.model.experts, captions, cfg.train)
    assert not isinstance(part, StreamedPart)
    assert 'val part: in memory (aggregated features' in capsys.readouterr().out


# -------------------------------------------------------------------------- memory, end to end
BIG = {'object': 256, 'audio': 256}
BIG_ROWS, BUDGET = 16, 8 << 20
#: what a training process may hold beyond the same run's on a dataset an eighth the size (the
#: interpreter, torch, zarr, the run's machinery, an eighth of the captions): the budget, the
#: model, and this margin (allocator slack; runs of one command differ by about 2 MB)
MARGIN = 32 << 20


def _memory(pid: int) -> int:
    """Resident anonymous and shared memory of a process, in bytes: what the run allocates. Pages of
    files are left out: torch's CUDA libraries page in some 300 MB as the interpreter exits."""
    fields = dict(line.split(':', 1) for line in Path(f'/proc/{pid}/status').read_text().splitlines() if ':' in line)
    return sum(int(fields[k].split()[0]) for k in ('RssAnon', 'RssShmem')) * 1024


def _train(python: str, env: dict[str, str], root: Path, config: Path, run: str) -> int:
    """The peak `_memory` of the largest process of a training run (its DataLoader workers included),
    sampled every 20 ms: the data a run holds stays for steps, it is no short spike."""
    args = ['-m', 'train', '--config', str(config), '--data-root', str(root / 'data'), '--features-root',
            str(root / 'features'), '--run-dir', str(root / run), '--device', 'cpu', '--no-progress']
    log = root / f'{run}.log'
    with open(log, 'w') as out:  # a file, not a pipe: a full pipe would stop the run
        proc = subprocess.Popen([python, *args], env=env, cwd=Path(__file__).parents[2], stdout=out, stderr=out)
    peak = 0
    while proc.poll() is None:
        tasks = Path(f'/proc/{proc.pid}/task')
        try:
            pids = [proc.pid] + [int(c) for t in tasks.iterdir() for c in (t / 'children').read_text().split()]
        except OSError:  # the run ended meanwhile
            pids = []
        for pid in pids:
            try:
                peak = max(peak, _memory(pid))
            except (OSError, KeyError):
                pass
        time.sleep(0.02)
    assert proc.returncode == 0, log.read_text()[-3000:]
    return peak


@pytest.mark.slow
def test_training_from_stores_six_times_the_budget_stays_within_it_and_repeats(
        tmp_path: Path, python: str, subprocess_env: dict[str, str]) -> None:
    big, small = tmp_path / 'big', tmp_path / 'small'
    write_dataset(big, 2000, BIG, rows=BIG_ROWS, chunk=32)
    write_dataset(small, 250, BIG, rows=BIG_ROWS, chunk=32)
    # two epochs: the second reads the first's aggregated features back from the cache (not mapped)
    config = mmt_config(tmp_path / 'c.yaml', BIG, BIG_ROWS, epochs=2, batch_size=32, memory_budget=BUDGET,
                        shuffle_buffer=64, streaming='on')
    aggregated = 1600 * sum(BIG_ROWS * (d * 4 + 1 + 8) + 1 for d in BIG.values())
    assert aggregated >= 6 * BUDGET
    from train.models import create_model

    params = sum(p.numel() for p in create_model(load_run_cfg(config).model).parameters())
    model = params * 4 * 4  # weights, gradients and Adam's two moments, float32
    base = _train(python, subprocess_env, small, config, 'run0')
    peak = _train(python, subprocess_env, big, config, 'run')
    assert 'aggregated features cached in' in (big / 'run.log').read_text()
    assert peak < base + BUDGET + model + MARGIN, [x >> 20 for x in (peak, base, BUDGET, model, MARGIN)]
    _train(python, subprocess_env, small, config, 'run1')
    runs = [torch.load(small / f'run{k}' / 'seed0' / 'checkpoints' / 'last.pt', weights_only=True)['model']
            for k in range(2)]
    assert runs[0].keys() == runs[1].keys()
    for name in runs[0]:
        assert torch.equal(runs[0][name], runs[1][name]), name


def test_benchmark_times_memory_against_streaming(capsys: pytest.CaptureFixture) -> None:
    """`python -m train.bench` section (c) runs (no timing is asserted): each data path alone and
    the training epochs on each, the first apart from the later ones, a whole run of the config's
    epochs computed from them, and says where the later streamed epochs read from; an unknown model
    is one line."""
    from train.bench import config_run
    from train.bench import main as bench_main
    from train.config import load_run_cfg
    from train.main import CONFIG_DIR

    assert bench_main(['--quick', '--no-train', '--no-retrieval', '--stream-models', 'mee', '--stream-videos', '64',
                       '--stream-epochs', '2', '--stream-repeats', '1']) == 0
    table = capsys.readouterr().out.split('| measurement')[1]
    for row in ('MEE data path alone, in memory', 'MEE data path alone, streaming from the stores',
                'MEE data path alone, streaming from the cache', 'MEE train, in memory, pair 1',
                'MEE train, streaming, pair 1', 'MEE streaming / in memory',
                'MEE a whole run of its config\'s 100 epochs, streaming / in memory'):
        assert row in table
    assert 'in-memory load (read whole, aggregated)' in table
    assert 'later from the cache' in table and 'load ' in table and 'error' not in table
    assert bench_main(['--quick', '--no-train', '--no-retrieval', '--stream-models', 'mee', '--stream-videos', '64',
                       '--stream-epochs', '2', '--stream-repeats', '1', '--no-stream-cache']) == 0
    table = capsys.readouterr().out.split('| measurement')[1]
    assert 'later from the stores' in table and 'streaming from the cache' not in table
    assert bench_main(['--no-train', '--no-retrieval', '--stream-models', 'nope']) == 1
    assert capsys.readouterr().err.strip().count('\n') == 0
    # MMT's paper configs count 50K steps: the whole run is as many epochs of the bench's videos
    mmt = load_run_cfg(CONFIG_DIR / 'mmt_msrvtt_1k_a.yaml').train
    assert config_run(mmt, 128, 640) == (12_500, '50,000 steps (12,500 epochs of 128 videos)')
    ssb = load_run_cfg(CONFIG_DIR / 'ssb_msrvtt_1k_a.yaml').train  # 20 epochs over 20 captions a video
    assert config_run(ssb, 128, 2560) == (400, '800 steps (400 epochs of 128 videos)')


# -------------------------------------------------------------------------- the feature cache
def _run(small: tuple[Path, Path], tmp: Path, run: str, **train: object) -> dict[str, torch.Tensor]:
    """A streamed run of 3 epochs (one reader process) on `small`; its last weights."""
    data, features = small
    config = mmt_config(tmp / f'{run}.yaml', SMALL, 6, epochs=3, streaming='on', shuffle_buffer=32, data_workers=1,
                        **train)
    assert train_main(['--config', str(config), '--data-root', str(data), '--features-root', str(features),
                       '--run-dir', str(tmp / run), '--device', 'cpu', '--no-progress']) == 0
    return torch.load(tmp / run / 'seed0' / 'checkpoints' / 'last.pt', weights_only=True)['model']


def test_a_run_with_the_feature_cache_ends_with_the_weights_of_one_without(small: tuple[Path, Path], tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    """Epochs 2 and 3 read the first epoch's aggregated features back from the cache: the same
    batches, so the same weights to the bit. The file is removed when the run ends; a file that
    a killed run left under the same key is removed unread when the run starts again."""
    with torch_threads(1):  # the step's threads follow the readers (`step_threads`): the same in both runs
        plain = _run(small, tmp_path, 'plain', stream_cache=False)
        assert 'feature cache' not in capsys.readouterr().out
        run = tmp_path / 'cached' / 'seed0'
        stale = cache_path(run, run, 'train', 0)
        run.mkdir(parents=True)
        stale.write_bytes(b'\x00' * 4096)  # what a killed attempt leaves: not this run's to read
        cached = _run(small, tmp_path, 'cached')
    out = capsys.readouterr().out
    assert f'aggregated features cached in {stale}' in out and 'a stale cache of a stopped run was removed' in out
    assert plain.keys() == cached.keys()
    for name in plain:
        assert torch.equal(plain[name], cached[name]), name
    assert not list((tmp_path / 'cached').rglob('videoexperts-stream-cache-*'))  # removed at the end


def test_later_epochs_read_the_cache_not_the_stores(small: tuple[Path, Path], tmp_path: Path) -> None:
    """With a cache, an epoch after the first gives the same batches with the stores' files
    destroyed; without one, it reads them (and fails). Units an epoch did not reach come from the
    stores, and go into the cache then."""
    cfg, manifest, captions = _parts(small, tmp_path, streaming='on', shuffle_buffer=32, data_workers=0)
    copy = tmp_path / 'features'
    shutil.copytree(small[1], copy)
    path = cache_path(tmp_path, tmp_path, 'train', 0)
    part = load_part(manifest, 'official', 'train', copy, cfg.model.experts, captions, cfg.train, False, cache=path)
    assert part.cache is not None

    def epoch(k: int) -> list[bytes]:
        return [b''.join(x.numpy().tobytes() for x in (v['object'].x, v['object'].mask, v['audio'].times, t.x))
                for v, t in StreamFeed(part, torch.device('cpu'), 32).epoch(16, np.random.default_rng([0, k]))]

    first, second = epoch(0), epoch(1)
    assert path.stat().st_size > 0 and len(part.cache.index) == len(part.bounds) - 1
    for name in SMALL:
        for f in (copy / 'demo' / f'{name}.zarr' / 'features' / 'c').rglob('*'):
            if f.is_file():
                f.write_bytes(b'\x00garbage')
    assert epoch(0) == first and epoch(1) == second  # from the cache alone
    assert part.readers(0) == part.workers and part.readers(1) == 0
    part.close()
    assert not path.exists() and part.cache.index == {}
    with pytest.raises(StoreError):  # the stores again, now that the cache is gone
        epoch(1)


def test_a_cache_that_filled_up_part_way_gives_the_batches_of_no_cache(small: tuple[Path, Path], tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk that fills in the first epoch stops the cache growing: later epochs read the units
    it holds from it and the rest from the stores, the batches of a run without a cache."""
    import train.stream_cache as sc

    cfg, manifest, captions = _parts(small, tmp_path, streaming='on', shuffle_buffer=32, data_workers=0)

    def epochs(part: StreamedPart) -> list[bytes]:
        feed = StreamFeed(part, torch.device('cpu'), 32)
        return [b''.join(x.numpy().tobytes() for x in (v['object'].x, v['audio'].mask, t.x))
                for k in (0, 1) for v, t in feed.epoch(16, np.random.default_rng([0, k]))]

    plain = epochs(load_part(manifest, 'official', 'train', small[1], cfg.model.experts, captions, cfg.train, False))
    writes = [0]
    real = sc.os.pwritev

    def filling(fd: int, parts: list, offset: int) -> int:  # the disk is full after 100 videos' records
        writes[0] += 1
        if writes[0] > 100:
            raise OSError(28, 'No space left on device')
        return real(fd, parts, offset)

    monkeypatch.setattr(sc.os, 'pwritev', filling)
    part = load_part(manifest, 'official', 'train', small[1], cfg.model.experts, captions, cfg.train, False,
                     cache=cache_path(tmp_path, tmp_path, 'train', 0))
    assert epochs(part) == plain
    assert part.cache.full and 0 < len(part.cache.index) < len(part.bounds) - 1
    # the records of the unit it failed in are cut off: the space goes back to the run's checkpoints
    assert part.cache.path.stat().st_size == part.cache.end
    part.close()


def test_a_sampled_part_has_no_cache_and_a_full_disk_none(small: tuple[Path, Path], tmp_path: Path) -> None:
    from train.stream_cache import open_cache

    kept, said = open_cache(tmp_path / 'c.bin', 1 << 62)
    assert kept is None and 'no feature cache' in said and not (tmp_path / 'c.bin').exists()
    kept, said = open_cache(tmp_path / 'c.bin', 1000)
    assert kept is not None and 'cached in' in said


@pytest.mark.parametrize('in_flight', [1, 2, 3, 5, 9])
def test_the_readers_keep_at_most_the_chunks_the_budget_holds(in_flight: int) -> None:
    """Each reader's prefetched chunks and the one the main process consumes fit in the budget's
    `in_flight` chunks, however many readers are asked for."""
    from train.stream import _readers

    for asked in (1, 2, 4, 8):
        workers, prefetch = _readers(in_flight, asked)
        assert workers * prefetch + 1 <= in_flight or workers == 0, (asked, workers, prefetch)
        assert workers == min(asked, in_flight - 1)  # as many as asked where the budget holds them


def test_the_cache_leaves_a_tenth_of_a_large_free_space(tmp_path: Path) -> None:
    """On a file system with much free space, the cache leaves a tenth of it free, not only `KEEP_FREE`
    (the run's checkpoints and other jobs' files need room too)."""
    from train.stream_cache import KEEP_FREE, open_cache

    free = shutil.disk_usage(tmp_path).free
    if free < 40 * KEEP_FREE:
        pytest.skip(f'{free} bytes free: a tenth is not far above KEEP_FREE here')
    kept, said = open_cache(tmp_path / 'c.bin', free - free // 20)  # would leave a twentieth free
    assert kept is None and 'no feature cache' in said
    kept, said = open_cache(tmp_path / 'c.bin', free // 2)
    assert kept is not None and 'cached in' in said


def test_the_step_runs_on_the_cpus_the_readers_leave_and_gets_its_threads_back(small: tuple[Path, Path],
                                                                               tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import train.stream as stream

    monkeypatch.setattr(stream, 'cpu_limit', lambda: 4)
    cfg, manifest, captions = _parts(small, tmp_path, streaming='on', data_workers=3)
    part = load_part(manifest, 'official', 'train', small[1], cfg.model.experts, captions, cfg.train, False,
                     cache=cache_path(tmp_path, tmp_path, 'train', 0))
    feed = StreamFeed(part, torch.device('cpu'), 32)
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        with stream.step_threads(feed, 0) as n:
            assert n == torch.get_num_threads() == 1
        assert torch.get_num_threads() == 4
        with stream.step_threads(feed, 1) as n:  # the cache holds the units: no reader runs
            assert n == torch.get_num_threads() == 4
        part.cache = None
        with pytest.raises(RuntimeError), stream.step_threads(feed, 1):
            assert torch.get_num_threads() == 1
            raise RuntimeError('a step failed')
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)


def test_the_cache_survives_short_reads_and_writes_and_says_when_it_was_truncated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A record is read and written whole even where the system calls stop short (a signal, a
    network file system); a cache file cut short is an OSError naming it, not wrong features."""
    import os

    import train.stream_cache as sc

    rng = np.random.default_rng(0)
    unit = {'object': (rng.standard_normal((5, 3, 4), np.float32), rng.random(5) < 0.5, rng.random((5, 3)) < 0.5,
                       None)}
    real_read, real_write = os.preadv, os.pwritev
    # each call moves only its first buffer's bytes
    monkeypatch.setattr(sc.os, 'pwritev', lambda fd, bufs, off: real_write(fd, bufs[:1], off), raising=True)
    monkeypatch.setattr(sc.os, 'preadv', lambda fd, bufs, off: real_read(fd, bufs[:1], off), raising=True)
    cache = sc.UnitCache(tmp_path / 'c.bin')
    cache.put(7, unit)
    got = cache.gather(np.array([7, 7, 7]), np.array([4, 0, 2]))
    for a, b in zip(got['object'], unit['object']):
        assert (a is None and b is None) or np.array_equal(a, b[[4, 0, 2]])
    os.truncate(cache.path, cache.path.stat().st_size - 1)
    with pytest.raises(OSError, match='ends before a record'):
        cache.gather(np.array([7]), np.array([4]))
    cache.close()
    assert not cache.path.exists()


def test_the_shuffle_buffer_is_kept_only_while_it_fits() -> None:
    """An epoch whose share or rows differ from the last one's (a rank's share of the units changes
    with the epoch; sampled rows) gets a buffer of its own shape, not the last epoch's."""
    feed = StreamFeed(None, torch.device('cpu'), buffer=5)  # no part: only its buffer is asked for

    def data(t: int) -> dict:
        return {'object': [np.zeros((2, t, 4), np.float16), np.zeros(2, bool), None]}

    first = feed._slots(data(3), 5)
    assert feed._slots(data(3), 5)['object'][0] is first['object'][0]  # kept from epoch to epoch
    for t, k in ((3, 7), (6, 5)):
        got = feed._slots(data(t), k)['object']
        assert got[0].shape == (k, t, 4) and got[0].dtype == np.float16 and got[1].shape == (k,) and got[2] is None


def test_every_rank_plans_the_same_steps_over_its_own_share_of_the_chunks() -> None:
    """Of two ranks with unequal shares (chunks of 5, 5, 5 and 1 videos), each reads other chunks,
    together all of them, and both take the steps of the smaller share (a rank with a step more
    would wait in its gradient all-reduce for ever)."""
    from train.stream import epoch_plan

    sizes = np.array([5, 5, 5, 1])
    plans = [epoch_plan(sizes, 2, 4, np.random.default_rng([0, 3]), rank, 2) for rank in (0, 1)]
    assert sorted(np.concatenate([p.units for p in plans]).tolist()) == [0, 1, 2, 3]
    counts = [int(sizes[p.units].sum()) for p in plans]
    assert {p.steps for p in plans} == {min(counts) // 2} and len(set(counts)) == 2
    for p, n in zip(plans, counts):
        assert len(p.emit) == p.steps * 2 and sorted(set(p.emit.tolist())) == sorted(p.emit.tolist())
        assert max(p.emit.tolist()) < n


def test_each_part_rank_and_run_has_a_cache_file_of_its_own(tmp_path: Path) -> None:
    """A run's train and val caches (and each rank's) are two files: one shared file is made by the
    first part to write, and the other's O_EXCL open then fails, turning its cache off."""
    runs = [tmp_path / 'a', tmp_path / 'b']
    paths = {cache_path(tmp_path, run, part, rank) for run in runs for part in ('train', 'val') for rank in (0, 1)}
    assert len(paths) == 8 and all(p.parent == tmp_path for p in paths)
    assert cache_path(tmp_path, runs[0], 'val', 1) == cache_path(tmp_path, tmp_path / 'x' / '..' / 'a', 'val', 1)
