"""train/sampling.py: window sampling (MMT sec. 4.2) and segment sampling (support-set appendix 6.3) of
HowTo100M-format videos, in memory and streamed; data.stop_words in training and evaluation (issue 22,
items 4 and 5)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from shared.datasets import load_manifest
from shared.store import ExpertRows, StoreSpec, VideoResult, create_store, pack_chunk, store_path
from shared.text import stop_words
from tests.train.test_stream import WORDS, mmt_config, write_dataset
from train.captions import SubwordCaptions, WordTokenizer, build_caption_encoder
from train.config import load_run_cfg, saved_run_cfg
from train.data import TrainFeed, load_split
from train.main import main as train_main
from train.sampling import make_sampler
from train.stream import StreamedPart, StreamFeed, load_part

VIDEOS, SEGMENT_WORDS, DIM = 24, 4, 8


def _segments(v: int) -> tuple[list[float], list[float], list[str]]:
    """Video v's ASR segments: 3-4 s each with gaps, 4 words each; word k of the video is 'v{v}w{k}'
    (so the words tell their video and place). Durations 40..270 s: some shorter than a window."""
    rng = np.random.default_rng(v)
    duration = 40 + 10 * v
    starts, ends, texts, t, k = [], [], [], float(rng.uniform(0, 5)), 0
    while t + 4 < duration:
        starts.append(round(t, 2))
        ends.append(round(t + float(rng.uniform(3, 4)), 2))
        texts.append(' '.join(f'v{v}w{k + i}' for i in range(SEGMENT_WORDS)))
        k += SEGMENT_WORDS
        t = ends[-1] + float(rng.uniform(0, 2))
    return starts, ends, texts


@pytest.fixture(scope='module')
def howto(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A HowTo100M-format dataset (list, caption.json, video files) and an object store of one row a
    second (row t holds t in its first feature, so a batch tells which seconds it kept)."""
    root = tmp_path_factory.mktemp('howto')
    d = root / 'data' / 'howto100m'
    (d / 'videos').mkdir(parents=True)
    ids = [f'vid{v:02d}' for v in range(VIDEOS)]
    (d / 'HowTo100M_v1.csv').write_text('video_id,category_1,category_2,rank,task_id\n'
                                        + ''.join(f'{v},Food,Cooking,1,1\n' for v in ids))
    captions = {}
    for v, vid in enumerate(ids):
        (d / 'videos' / f'{vid}.mp4').write_bytes(b'')
        starts, ends, texts = _segments(v)
        captions[vid] = {'start': starts, 'end': ends, 'text': texts}
    (d / 'caption.json').write_text(json.dumps(captions))
    rows = 40 + 10 * (VIDEOS - 1)
    store = create_store(store_path(root / 'features', 'howto100m', 'object'), ids,
                         StoreSpec('howto100m', 'object', DIM, rows, chunk_size=8, weights='random'))
    for c in range(store.n_chunks):
        results = []
        for r in store.chunk_rows(c):
            n = 40 + 10 * r
            feats = np.random.default_rng(r).standard_normal((n, DIM)).astype(np.float32)
            feats[:, 0] = np.arange(n)
            results.append(VideoResult(feats, np.stack([np.arange(n), np.arange(n) + 1.0], 1).astype(np.float32)))
        store.write_chunk(c, pack_chunk(results, rows, DIM, has_tokens=False))
    return root / 'data', root / 'features'


def _cfg(tmp: Path, sample: str, **settings: object):
    path = mmt_config(tmp / 'c.yaml', {'object': DIM}, 100)
    overrides = {'data.dataset': 'howto100m', 'data.split': 'pretrain', 'data.sample': sample,
                 'data.max_words': 120, 'model.text.vocab_size': 2000, 'model.text.max_positions': 128,
                 'model.transformer.max_positions': 128,
                 'train.batch_size': 8, **settings}
    return load_run_cfg(path, overrides)


def _parts(howto: tuple[Path, Path], tmp: Path, sample: str, **settings: object):
    cfg = _cfg(tmp, sample, **settings)
    manifest = load_manifest('howto100m', howto[0])
    ids = manifest.split('pretrain').ids('train')
    words = sorted({w for v in ids for t in manifest.captions[v] for w in t.split()})
    # every word its own id (the fitted tokenizer keeps the most frequent only), so that batches decode whole
    captions = SubwordCaptions('bert', cfg.data.max_words, words=WordTokenizer(words))
    return cfg, manifest, captions, make_sampler(cfg.data, manifest, ids)


def _decode(text_ids: torch.Tensor, mask: torch.Tensor, tok: WordTokenizer) -> list[str]:
    return [tok.words[i] for i, m in zip(text_ids.tolist(), mask.tolist()) if m][1:-1]  # [CLS] ... [SEP]


def _samples(feed, cfg, epoch: int, tok: WordTokenizer) -> list[tuple[list[str], np.ndarray, np.ndarray, np.ndarray]]:
    """(words, kept row seconds, their times, mask) of every sample of an epoch."""
    out = []
    for video, text in feed.epoch(cfg.train.batch_size, np.random.default_rng([0, epoch])):
        e = video['object']
        for i in range(len(e.x)):
            out.append((_decode(text.x[i], text.mask[i], tok), e.x[i, :, 0].numpy(), e.times[i].numpy(),
                        e.mask[i].numpy()))
    return out


def test_window_sampling_keeps_consecutive_words_and_the_seconds_nearest_them(howto: tuple[Path, Path],
                                                                             tmp_path: Path) -> None:
    cfg, manifest, captions, sampler = _parts(howto, tmp_path, 'window', **{'data.window_words': 10,
                                                                            'data.window_seconds': 30})
    part = load_split(manifest, 'pretrain', 'train', howto[1], cfg.model.experts, captions, False, sampler)
    samples = _samples(TrainFeed(part, torch.device('cpu'), 0), cfg, 0, captions.words)
    assert len(samples) == VIDEOS
    for words, seconds, times, mask in samples:
        v = int(words[0][1:words[0].index('w')])
        index = [int(w.split('w')[1]) for w in words]
        assert len(words) == 10 and index == list(range(index[0], index[0] + 10))  # consecutive, across segments
        assert all(w.startswith(f'v{v}w') for w in words)
        starts, ends, _ = _segments(v)
        a, b = starts[index[0] // SEGMENT_WORDS], max(ends[k // SEGMENT_WORDS] for k in index)
        duration = 40 + 10 * v
        lo = min(max(0.0, (a + b - 30) / 2), duration - 30)  # 30 s centred on the words, inside the video
        kept = seconds[mask]
        assert len(kept) == 30  # every second of the window, no more
        assert np.array_equal(kept, np.arange(np.ceil(lo - 0.5), np.ceil(lo - 0.5) + 30))  # middles in [lo, lo + 30)
        if b - a <= 30:
            assert kept[0] <= a and kept[-1] + 1 >= b - 1  # the words' seconds are covered
        np.testing.assert_allclose(times[mask][:, 0], np.maximum(kept - lo, 0), atol=1e-3)  # counted from the window's start
    # deterministic for a seed; another epoch draws other windows
    again = _samples(TrainFeed(part, torch.device('cpu'), 0), cfg, 0, captions.words)
    assert all(w == w2 and np.array_equal(s, s2) for (w, s, *_), (w2, s2, *_) in zip(samples, again))
    other = _samples(TrainFeed(part, torch.device('cpu'), 0), cfg, 1, captions.words)
    assert sorted(w for w, *_ in other) != sorted(w for w, *_ in samples)  # other windows, not just another order


def test_window_defaults_keep_at_most_100_words_and_rows(howto: tuple[Path, Path], tmp_path: Path) -> None:
    cfg, manifest, captions, sampler = _parts(howto, tmp_path, 'window')
    assert (cfg.data.window_words, cfg.data.window_seconds) == (100, 100.0)
    part = load_split(manifest, 'pretrain', 'train', howto[1], cfg.model.experts, captions, False, sampler)
    for words, seconds, _, mask in _samples(TrainFeed(part, torch.device('cpu'), 0), cfg, 0, captions.words):
        v = int(words[0][1:words[0].index('w')])
        n_words = len(_segments(v)[2]) * SEGMENT_WORDS
        assert len(words) == min(100, n_words)
        assert mask.sum() == min(100, 40 + 10 * v)


def test_streamed_windows_are_the_in_memory_ones_whatever_the_readers(howto: tuple[Path, Path], tmp_path: Path) -> None:
    cfg, manifest, captions, sampler = _parts(howto, tmp_path, 'window', **{'data.window_words': 12,
                                                                            'data.window_seconds': 20})
    whole = load_split(manifest, 'pretrain', 'train', howto[1], cfg.model.experts, captions, False, sampler)
    by_video = {tuple(w): s[m].tolist() for w, s, _, m in _samples(TrainFeed(whole, torch.device('cpu'), 0), cfg, 3,
                                                                   captions.words)}
    part = load_part(manifest, 'pretrain', 'train', howto[1], cfg.model.experts, captions,
                     dataclasses.replace(cfg.train, streaming='on', shuffle_buffer=8), False, sampler)
    assert isinstance(part, StreamedPart)
    runs = []
    for workers in (0, 2):
        part.workers = workers
        runs.append({tuple(w): s[m].tolist() for w, s, _, m in _samples(StreamFeed(part, torch.device('cpu'), 8),
                                                                          cfg, 3, captions.words)})
    assert runs[0] == runs[1] == by_video  # every video's window: the same words and seconds on both paths


def test_segment_sampling_gives_a_caption_and_its_own_seconds(howto: tuple[Path, Path], tmp_path: Path) -> None:
    cfg, manifest, captions, sampler = _parts(howto, tmp_path, 'segment')
    part = load_split(manifest, 'pretrain', 'train', howto[1], cfg.model.experts, captions, False, sampler)
    samples = _samples(TrainFeed(part, torch.device('cpu'), 0), cfg, 0, captions.words)
    for words, seconds, _, mask in samples:
        v = int(words[0][1:words[0].index('w')])
        starts, ends, texts = _segments(v)
        k = texts.index(' '.join(words))  # one whole ASR segment
        middles = seconds[mask] + 0.5
        assert len(middles) and ((middles >= starts[k]) & (middles < ends[k])).all()
        assert len(middles) >= int(ends[k] - starts[k]) - 1
    again = _samples(TrainFeed(part, torch.device('cpu'), 0), cfg, 0, captions.words)
    assert [w for w, *_ in again] == [w for w, *_ in samples]


def test_sampling_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data, features = write_dataset(tmp_path, 20, {'object': 8}, rows=4, chunk=8)
    config = mmt_config(tmp_path / 'c.yaml', {'object': 8}, 4, batch_size=4, epochs=1)
    common = ['--config', str(config), '--data-root', str(data), '--features-root', str(features), '--device', 'cpu',
              '--run-dir', str(tmp_path / 'run'), '--no-progress']
    assert train_main([*common, '--set', 'data.sample=window']) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: data.sample: window needs timed captions') and '\n' not in err
    for setting, words in (('data.window_words=0', 'window_words'), ('data.window_seconds=-5', 'window_seconds'),
                           ('data.sample=windows', 'data.sample'), ('data.stop_words=drop', 'stop_words')):
        assert train_main([*common, '--set', setting]) == 1
        err = capsys.readouterr().err.strip()
        assert words in err and '\n' not in err and 'Traceback' not in err


def test_stop_words_change_what_the_text_encoder_sees_in_training_and_evaluation(tmp_path: Path) -> None:
    data, features = write_dataset(tmp_path, 30, {'object': 8}, rows=4, chunk=8)
    annotations = data / 'demo' / 'demo.json'
    demo = json.loads(annotations.read_text())
    for v in demo['videos']:
        v['captions'] = [f'the {c} is on a mat' for c in v['captions']]
    annotations.write_text(json.dumps(demo))
    assert {'the', 'is', 'on', 'a'} <= stop_words() and not set(WORDS) & stop_words()
    seen = {}
    for choice in ('keep', 'remove'):
        run = tmp_path / choice
        config = mmt_config(tmp_path / f'{choice}.yaml', {'object': 8}, 4, batch_size=8, epochs=1)
        cfg = yaml.safe_load(config.read_text())
        cfg['data'].update(stop_words=choice, max_words=16)  # every word of the longer captions
        config.write_text(yaml.safe_dump(cfg))
        assert train_main(['--config', str(config), '--data-root', str(data), '--features-root', str(features),
                           '--device', 'cpu', '--run-dir', str(run), '--no-progress']) == 0
        # training: the words tokenizer was fitted on the captions as the encoder saw them
        vocab = set(json.loads((run / 'seed0' / 'tokenizer.json').read_text())['words'])
        # evaluation: the encoder a finished run is evaluated with (train.evaluate, train.search)
        saved = saved_run_cfg(run / 'seed0')
        encoder = build_caption_encoder(saved.model.text, saved.data, data, run / 'seed0', None)
        manifest = load_manifest('demo', data)
        test = load_split(manifest, 'official', 'test', features, saved.model.experts, encoder)
        tok = WordTokenizer.load(run / 'seed0' / 'tokenizer.json')
        seen[choice] = (vocab, [_decode(torch.from_numpy(test.captions.ids[i]).long(),
                                        torch.from_numpy(test.captions.mask[i]), tok)
                                for i in range(len(test.captions))])
        # the training batches' captions
        train = load_split(manifest, 'official', 'train', features, saved.model.experts, encoder, False)
        _, text = next(iter(TrainFeed(train, torch.device('cpu'), 0).epoch(8, np.random.default_rng(0))))
        seen[choice] += ([_decode(text.x[i], text.mask[i], tok) for i in range(8)],)
    keep_vocab, keep_test, keep_train = seen['keep']
    drop_vocab, drop_test, drop_train = seen['remove']
    assert {'the', 'is', 'on', 'a'} <= keep_vocab and not {'the', 'is', 'on', 'a'} & drop_vocab
    assert all(w[0] == 'the' for w in keep_test + keep_train)
    assert all(set(w) <= set(WORDS) | {'mat'} for w in drop_test + drop_train)
    assert [[w for w in ws if w not in stop_words()] for ws in keep_test] == drop_test


def test_pretraining_on_a_split_without_test_part_finishes_for_init_from(howto: tuple[Path, Path], tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    """howto100m's pretrain split has no test part: the run trains, records its checkpoint (final.json)
    and says so; --init-from and train.evaluate then take it as a finished run."""
    from train.init import init_source
    from train.runs import tested_checkpoint

    config = mmt_config(tmp_path / 'c.yaml', {'object': DIM}, 100)
    run = tmp_path / 'pretrain'
    assert train_main(['--config', str(config), '--data-root', str(howto[0]), '--features-root', str(howto[1]),
                       '--device', 'cpu', '--run-dir', str(run), '--no-progress', '--set', 'data.dataset=howto100m',
                       '--set', 'data.split=pretrain', '--set', 'data.sample=window', '--set', 'data.max_words=16',
                       '--set', 'model.transformer.max_positions=128', '--set', 'train.batch_size=8',
                       '--set', 'train.epochs=1', '--set', 'train.selection=last']) == 0
    assert 'howto100m/pretrain has no test part: trained only' in capsys.readouterr().out
    last = run / 'seed0' / 'checkpoints' / 'last.pt'
    assert tested_checkpoint(run / 'seed0') == last and init_source(str(run / 'seed0')) == last.resolve()
    assert not (run / 'seed0' / 'test_metrics.json').exists()
    final = json.loads((run / 'seed0' / 'final.json').read_text())
    assert final['checkpoint'] == 'last.pt' and final['epochs'] == 1 and final['steps'] > 0
    # the same epoch's steps as a train.steps budget: it stops at the epoch's last step, one whole epoch
    by_steps = tmp_path / 'by_steps'
    assert train_main(['--config', str(config), '--data-root', str(howto[0]), '--features-root', str(howto[1]),
                       '--device', 'cpu', '--run-dir', str(by_steps), '--no-progress', '--set', 'data.dataset=howto100m',
                       '--set', 'data.split=pretrain', '--set', 'data.sample=window', '--set', 'data.max_words=16',
                       '--set', 'model.transformer.max_positions=128', '--set', 'train.batch_size=8',
                       '--set', f'train.steps={final["steps"]}', '--set', 'train.selection=last']) == 0
    assert json.loads((by_steps / 'seed0' / 'final.json').read_text()) == final


def test_every_window_and_segment_can_be_drawn_and_each_video_draws_its_own() -> None:
    """Window starts run over every place where `window_words` words fit, the last included; a
    video's draw depends on its id (videos of one epoch do not all take the same segment)."""
    from train.sampling import Sampler

    texts = ('a b', 'c d', 'e')  # five words in time order, over three segments
    times = [(0.0, 2.0), (3.0, 5.0), (6.0, 7.0)]
    ids = [f'v{i}' for i in range(40)]
    window = Sampler('window', {v: texts for v in ids}, {v: times for v in ids}, 3, 4.0, False)
    assert {window.draw('v0', key).text for key in range(200)} == {'a b c', 'b c d', 'c d e'}
    assert window.draw('v0', 1) == window.draw('v0', 1)  # a pure function of (video, key)
    segment = Sampler('segment', {v: texts for v in ids}, {v: times for v in ids}, 3, 4.0, False)
    assert len({segment.draw(v, 7).text for v in ids}) == 3
    assert segment.draw('v5', 7).start in (0.0, 3.0, 6.0)


def test_a_segment_shorter_than_a_row_keeps_the_rows_it_overlaps() -> None:
    """A timed caption that holds no row's middle (0.3 s of ASR over features of 2-second clips)
    keeps the rows it overlaps: the video stays available, with the seconds around its words."""
    from shared.store import ExpertRows
    from train.models.config import ExpertSpec
    from train.sampling import Sampler

    segments = {'v0': ((2.6, 2.9),), 'v1': ((4.0, 7.5),)}
    sampler = Sampler('segment', {v: ('cut the onion',) for v in segments}, segments, 10, 30.0, False)
    start = np.arange(0.0, 8.0, 2.0, dtype=np.float32)  # rows [0, 2), [2, 4), [4, 6), [6, 8)
    times = np.stack([start, start + 2.0], -1)[None].repeat(2, 0)
    feats = np.arange(2 * 4 * 3, dtype=np.float16).reshape(2, 4, 3)
    rows = ExpertRows(np.array(['v0', 'v1'], object), feats, times, np.array([4, 4], np.int32), np.ones(2, bool),
                      np.ones(2, np.int8), np.full(2, '', object), None)
    out = sampler.aggregate(ExpertSpec('e', 3, 'tokens', max_tokens=4), rows, key=0)
    assert out.available.tolist() == [True, True]
    assert out.mask.sum(1).tolist() == [1, 2]  # v0: the row over its 0.3 s; v1: the rows whose middles it holds
    np.testing.assert_array_equal(out.x[0, 0], feats[0, 1])
    np.testing.assert_array_equal(out.x[1, :2], feats[1, 2:])


def test_a_window_takes_consecutive_words_in_time_order_whatever_the_captions_order() -> None:
    """Timed captions listed out of time order (as a subtitle or ASR file may hold them) give windows of
    words that follow each other in time, over the seconds those words cover."""
    from train.sampling import Sampler

    texts = ('e f', 'a b', 'c d')  # in time order: 'a b', 'c d', 'e f'
    times = [(6.0, 8.0), (0.0, 2.0), (3.0, 5.0)]
    sampler = Sampler('window', {'v': texts}, {'v': times}, 3, 4.0, False)
    drawn = {sampler.draw('v', key) for key in range(200)}
    assert {s.text for s in drawn} == {'a b c', 'b c d', 'c d e', 'd e f'}
    assert {(s.text, s.start, s.end) for s in drawn} >= {('a b c', 0.0, 5.0), ('d e f', 3.0, 8.0)}


def _one_second_rows(n_videos: int, seconds: int) -> ExpertRows:
    """`n_videos` videos of `seconds` rows [t, t + 1) each; row t's features are all t."""
    start = np.arange(seconds, dtype=np.float32)
    times = np.stack([start, start + 1.0], -1)[None].repeat(n_videos, 0)
    feats = np.repeat(start[None, :, None], n_videos, 0).repeat(3, 2).astype(np.float16)
    return ExpertRows(np.array([f'v{i}' for i in range(n_videos)], object), feats, times,
                      np.full(n_videos, seconds, np.int32), np.ones(n_videos, bool), np.ones(n_videos, np.int8),
                      np.full(n_videos, '', object), None)


def test_a_window_whose_ends_fall_on_row_middles_keeps_its_seconds_rows_not_one_more() -> None:
    """A window of 3 s from 0.5 s to 3.5 s over rows of one second holds the middles 0.5, 1.5, 2.5:
    3 rows; the row whose middle is its end (3.5) belongs to the next seconds, not to it as well."""
    from train.models.config import ExpertSpec
    from train.sampling import Sampler

    # 'a b' spans 1.5..2.5 s: the 3-s window around it is [0.5, 3.5)
    sampler = Sampler('window', {'v0': ('a b',)}, {'v0': ((1.5, 2.5),)}, 2, 3.0, False)
    assert sampler.window(sampler.draw('v0', 0), 10.0) == (0.5, 3.5)
    out = sampler.aggregate(ExpertSpec('e', 3, 'tokens', max_tokens=8), _one_second_rows(1, 10), key=0)
    assert out.mask.sum(1).tolist() == [3]
    np.testing.assert_array_equal(out.x[0, :3, 0], [0.0, 1.0, 2.0])


def test_a_segment_past_the_end_of_its_rows_leaves_the_video_unavailable() -> None:
    """A timed caption after the last feature row (ASR of a video whose features stop early) holds no
    row: the video is unavailable for that sample, not available with no rows (a zero vector that the
    model would take as the expert's features)."""
    from train.models.config import ExpertSpec
    from train.sampling import Sampler

    segments = {'v0': ((2.0, 4.0),), 'v1': ((20.0, 24.0),)}  # v1's caption is after its 10 s of rows
    sampler = Sampler('segment', {v: ('cut the onion',) for v in segments}, segments, 10, 30.0, False)
    out = sampler.aggregate(ExpertSpec('e', 3, 'tokens', max_tokens=4), _one_second_rows(2, 10), key=0)
    assert out.available.tolist() == [True, False]
    assert out.mask.sum(1).tolist() == [2, 0]
    mean = sampler.aggregate(ExpertSpec('e', 3, 'mean'), _one_second_rows(2, 10), key=0)
    assert mean.available.tolist() == [True, False]


def test_rows_imported_without_times_are_kept_by_every_window_and_segment() -> None:
    """Features imported without times (`pipelines.import_features` writes -1 for both ends of every
    row) cannot be cut to a window: the whole video's rows stay, their times unknown, so the expert
    stays available (dropping them made it unavailable for every video under window sampling)."""
    from shared.store import UNKNOWN_TIME
    from train.models.config import ExpertSpec
    from train.sampling import Sampler

    rows = _one_second_rows(2, 5)
    rows.timestamps[:] = UNKNOWN_TIME
    segments = {'v0': ((1.0, 2.0),), 'v1': ((3.0, 4.0),)}
    for mode in ('window', 'segment'):
        sampler = Sampler(mode, {v: ('cut the onion',) for v in segments}, segments, 2, 2.0, False)
        out = sampler.aggregate(ExpertSpec('e', 3, 'tokens', max_tokens=8), rows, key=0)
        assert out.available.tolist() == [True, True], mode
        assert out.mask.sum(1).tolist() == [5, 5], mode
        np.testing.assert_array_equal(out.x[0, :5, 0], np.arange(5.0))
        mean = sampler.aggregate(ExpertSpec('e', 3, 'mean'), rows, key=0)
        assert mean.available.tolist() == [True, True], mode
        np.testing.assert_allclose(mean.x[:, 0], [2.0, 2.0])
