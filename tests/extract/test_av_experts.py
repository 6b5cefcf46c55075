"""Audio, face, OCR and speech experts on real files: FFmpeg-made videos, the MTCNN and RapidOCR
models that ship in their wheels, a tiny whisper built here, gensim vectors trained here."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from extract.experts import create_expert
from extract.experts._base import VideoInput
from extract.experts.audio import EXAMPLE_FRAMES, HOP, N_FFT, WINDOW, log_mel_examples, mel_matrix
from extract.experts.ocr import merge_words
from extract.run import main
from shared.datasets.folder import folder_name
from shared.media import ffmpeg_exe, load_audio
from shared.store import DONE, SKIPPED, check_store, open_store, pack_chunk
from shared.text import load_word_vectors, normalise


def _ff(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), '-y', '-v', 'error', *args], check=True, capture_output=True)


def _still_video(image: np.ndarray, path: Path, seconds: float = 2.0, audio: list[str] | None = None) -> Path:
    from PIL import Image

    png = path.with_suffix('.png')
    Image.fromarray(image).save(png)
    _ff('-loop', '1', '-i', str(png), *(audio or []), '-t', str(seconds), '-r', '25', '-vf', 'scale=320:-2',
        '-c:v', 'libx264', '-pix_fmt', 'yuv420p', *(['-c:a', 'aac', '-shortest'] if audio else []), str(path))
    png.unlink()
    return path


def _word2vec(path: Path, words: list[str], dim: int = 16) -> Path:
    from gensim.models import Word2Vec

    model = Word2Vec([words] * 20, vector_size=dim, min_count=1, workers=1, seed=1, hashfxn=lambda s: sum(map(ord, s)))
    model.wv.save_word2vec_format(str(path), binary=True)
    return path


def _extract(data: Path, features: Path, expert: str, *extra: str) -> int:
    return main(['--dataset', f'folder:{data}', '--features-root', str(features), '--expert', expert,
                 '--workers', '0', '--chunk-size', '2', '--no-progress', *extra])


# ---------------------------------------------------------------------------------------- audio

def test_vggish_front_end_on_a_tone() -> None:
    rate, seconds, tone = 16000, 3.0, 1000.0
    t = np.arange(int(rate * seconds)) / rate
    wave = torch.from_numpy((0.5 * np.sin(2 * np.pi * tone * t)).astype(np.float32))
    examples = log_mel_examples(wave)
    n_frames = 1 + (len(t) - WINDOW) // HOP  # 298 frames of 25 ms every 10 ms
    assert examples.shape == (n_frames // EXAMPLE_FRAMES, 96, 64) == (3, 96, 64)
    band = int(examples.mean(dim=(0, 1)).argmax())
    mel = lambda f: 1127.0 * np.log1p(f / 700.0)  # noqa: E731 (HTK)
    edges = np.linspace(mel(125.0), mel(7500.0), 66)
    assert edges[band] < mel(tone) < edges[band + 2]  # the band's triangle contains the tone
    assert abs(edges[band + 1] - mel(tone)) == min(abs(edges[1:-1] - mel(tone)))  # and it is the closest centre
    assert float(examples.min()) >= np.log(0.01) - 1e-6


def test_stft_magnitude_matches_librosa() -> None:
    import librosa

    y = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    ref = np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP, win_length=WINDOW, window='hann', center=False))
    # librosa centres the 400-sample window in each 512-sample frame; VGGish pads at the end, which
    # changes the phase only: the same magnitudes, once frames are aligned by that offset
    offset = (N_FFT - WINDOW) // 2
    frames = torch.from_numpy(y[offset:]).unfold(0, WINDOW, HOP)
    ours = torch.fft.rfft(frames * torch.hann_window(WINDOW, periodic=True), n=N_FFT).abs().numpy().T
    n = min(ours.shape[1], ref.shape[1])
    np.testing.assert_allclose(ours[:, :n], ref[:, :n], rtol=1e-4, atol=1e-3)
    weights = mel_matrix()
    assert weights.shape == (257, 64) and not weights[0].any() and (weights.sum(axis=0) > 0).all()


def test_audio_short_silent_and_missing(tmp_path: Path) -> None:
    data = tmp_path / 'videos'
    data.mkdir()
    gray = np.full((240, 320, 3), 128, np.uint8)
    _still_video(gray, data / 'tone.mp4', 2.0, ['-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=48000'])
    _still_video(gray, data / 'short.mp4', 0.5, ['-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=8000'])
    _still_video(gray, data / 'silent.mp4', 2.0, ['-f', 'lavfi', '-i', 'anullsrc=channel_layout=5.1:sample_rate=48000'])
    _still_video(gray, data / 'no_audio.mp4', 2.0)
    audio, err = load_audio(data / 'silent.mp4')
    assert not err and len(audio) == pytest.approx(32000, abs=1200) and not audio.any()  # 6 channels -> mono
    assert load_audio(data / 'no_audio.mp4') == (None, '')
    assert _extract(data, tmp_path / 'f', 'audio', '--weights', 'random') == 0
    rows = open_store(tmp_path / 'f' / folder_name(data) / 'audio.zarr', warn_random=False).read()
    by = {v: i for i, v in enumerate(rows.video_ids)}
    assert rows.status[by['tone.mp4']] == DONE and rows.lengths[by['tone.mp4']] == 2 and rows.available[by['tone.mp4']]
    np.testing.assert_allclose(rows.timestamps[by['tone.mp4'], :2], [[0, 0.96], [0.96, 1.92]], atol=1e-6)
    assert rows.status[by['short.mp4']] == DONE and not rows.available[by['short.mp4']]  # under one example
    assert rows.available[by['silent.mp4']] and np.isfinite(rows.features[by['silent.mp4']]).all()
    assert rows.status[by['no_audio.mp4']] == SKIPPED and not rows.available[by['no_audio.mp4']]
    assert check_store(tmp_path / 'f' / folder_name(data) / 'audio.zarr').exit_code == 0


# ----------------------------------------------------------------------------------------- face

@pytest.mark.slow
def test_faces_where_the_astronaut_is(tmp_path: Path) -> None:
    import skimage.data

    data = tmp_path / 'videos'
    data.mkdir()
    _still_video(skimage.data.astronaut(), data / 'astronaut.mp4')
    _still_video(skimage.data.coffee(), data / 'coffee.mp4')
    assert _extract(data, tmp_path / 'f', 'face', '--weights', 'random') == 0
    store = open_store(tmp_path / 'f' / folder_name(data) / 'face.zarr', warn_random=False)
    rows = store.read(ids=['astronaut.mp4', 'coffee.mp4'])
    assert rows.available.tolist() == [True, False]
    n = int(rows.lengths[0])
    assert n >= 2 and rows.features.shape[2] == 512 and np.abs(rows.rows(0)).sum() > 0
    starts = rows.timestamps[0, :n, 0]
    # faces come from the frames sampled at 1 fps (bin centres 0.5 and 1.5 s: frames from 0.48 and 1.48 s)
    assert {round(float(s), 2) for s in starts} == {0.48, 1.48}
    assert rows.lengths[1] == 0 and not rows.features[1].any()
    assert check_store(store.path).exit_code == 0


def test_frames_too_small_for_a_face_are_done_without_faces(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Frames whose short side is under `min_face_size` (a 16x16 video, an 8-pixel strip) hold no
    face: done, without rows, as a frame without faces; MTCNN's image pyramid has no level for
    them, and its detect raised, which failed these videos."""
    data = tmp_path / 'videos'
    data.mkdir()
    for name, size in (('tiny.mp4', '16x16'), ('strip.mp4', '400x8'), ('normal.mp4', '160x120')):
        _ff('-f', 'lavfi', '-i', f'testsrc2=size={size}:rate=25:duration=2', '-c:v', 'libx264', '-pix_fmt', 'yuv444p',
            str(data / name))
    assert _extract(data, tmp_path / 'f', 'face', '--weights', 'random', '--chunk-size', '4') == 0
    # 'RANDOM weights' was half wrong: MTCNN's detector has its real weights (facenet-pytorch's wheel)
    out = capsys.readouterr().out.splitlines()
    assert 'WARNING: RANDOM weights for face (only the InceptionResnetV1 embedding): these features mean nothing ' \
        'beyond tests and demos' in out
    assert 'loading face: facenet:inception_resnet_v1, RANDOM weights for the InceptionResnetV1 embedding only ' \
        "(MTCNN's face detector has its real weights, which ship in its wheel), on cpu" in out
    rows = open_store(tmp_path / 'f' / folder_name(data) / 'face.zarr', warn_random=False).read()
    assert rows.status.tolist() == [DONE] * 3, rows.errors
    assert not rows.available.any() and not rows.lengths.any()


@pytest.mark.parametrize('setting, message', [
    ('face.min_face_size=0', 'face: min_face_size must be >= 1 pixel'),
    ('face.min_prob=nan', 'face.min_prob: expected a finite number, got nan')])
def test_a_face_setting_no_face_search_can_use_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                           setting: str, message: str) -> None:
    """min_face_size 0 failed every video (MTCNN divides by it); a NaN min_prob made the new store
    refuse its own settings (NaN != NaN): both are the command's fault, said before any store."""
    data = tmp_path / 'videos'
    data.mkdir()
    _ff('-f', 'lavfi', '-i', 'testsrc2=size=64x48:rate=25:duration=1', '-c:v', 'libx264', '-pix_fmt', 'yuv420p',
        str(data / 'a.mp4'))
    assert _extract(data, tmp_path / 'f', 'face', '--weights', 'random', '--set', setting) == 1
    err = capsys.readouterr().err
    assert err.startswith(f'error: {message}') and err.count('\n') == 1, err
    assert not (tmp_path / 'f').exists() or not any((tmp_path / 'f').rglob('*.zarr'))


# ------------------------------------------------------------------------------------------ ocr

def test_merge_words_spans_consecutive_frames() -> None:
    stamps = np.array([[0, 1], [1, 2], [2, 3], [3, 4]], np.float32)
    frames = [[('HELLO', 0.9)], [('Hello,', 0.95), ('world', 0.8)], [], [('hello', 0.7)]]
    tokens = merge_words(frames, stamps)
    assert [(t['word'], t['start'], t['end']) for t in tokens] == [('HELLO', 0, 2), ('world', 1, 2), ('hello', 3, 4)]
    assert tokens[0]['conf'] == 0.95 and normalise('Hello,') == 'hello'


def test_merge_words_keeps_each_occurrence_of_a_repeated_word_and_its_best_confidence() -> None:
    """A word twice on a frame ('the ... the') is two tokens, each going on with its own occurrence
    on the next frame; a token's confidence is the highest of its frames, not its last."""
    stamps = np.array([[0, 1], [1, 2], [2, 3]], np.float32)
    frames = [[('the', 0.9), ('cat', 0.8), ('the', 0.7)], [('the', 0.6), ('the', 0.5)], [('the', 0.4)]]
    tokens = merge_words(frames, stamps)
    assert [(t['word'], t['start'], t['end'], t['conf']) for t in tokens] == [
        ('the', 0, 3, 0.9), ('cat', 0, 1, 0.8), ('the', 0, 2, 0.7)]


def test_more_words_than_max_rows_keep_the_first_rows_with_their_times() -> None:
    """A long talk has more words than the store's T: the first T in-vocabulary words are rows, each
    with its own time; every word stays a token."""
    from gensim.models import KeyedVectors

    from extract.experts._words import words_result
    from shared.text import WordVectors

    kv = KeyedVectors(vector_size=4)
    kv.add_vectors(['tea', 'river'], np.eye(2, 4, dtype=np.float32))
    tokens = [{'word': w, 'start': float(k), 'end': k + 0.5, 'conf': 0.9}
              for k, w in enumerate(['tea', 'xyz', 'river', 'tea', 'river'])]
    r = words_result(tokens, WordVectors(kv, Path('toy.kv')), max_rows=3)
    assert r.features.shape == (3, 4) and r.timestamps.tolist() == [[0, 0.5], [2, 2.5], [3, 3.5]]
    assert len(r.tokens) == 5 and r.available


def test_words_given_out_of_time_order_become_rows_in_time_order() -> None:
    """Tokens handed over in another order (OCR's words of one frame in reading order, whose spans
    end at different frames) are rows and tokens in time order; with more words than T, the T
    earliest are the rows."""
    from gensim.models import KeyedVectors

    from extract.experts._words import words_result
    from shared.text import WordVectors

    kv = KeyedVectors(vector_size=4)
    kv.add_vectors(['tea', 'river', 'stone'], np.eye(3, 4, dtype=np.float32))
    tokens = [{'word': 'stone', 'start': 5.0, 'end': 6.0, 'conf': 0.9}, {'word': 'tea', 'start': 1.0, 'end': 3.0, 'conf': 0.9},
              {'word': 'river', 'start': 1.0, 'end': 2.0, 'conf': 0.9}]
    r = words_result(tokens, WordVectors(kv, Path('toy.kv')), max_rows=2)
    assert r.timestamps.tolist() == [[1, 2], [1, 3]]
    np.testing.assert_array_equal(r.features, np.eye(3, 4, dtype=np.float32)[[1, 0]])
    assert [t['word'] for t in r.tokens] == ['river', 'tea', 'stone']
    # a word whose aligned end comes before its start is a row at its start, which a store can hold
    r = words_result([{'word': 'tea', 'start': 2.0, 'end': 1.98, 'conf': 0.9}], WordVectors(kv, Path('toy.kv')), 2)
    assert r.timestamps.tolist() == [[2, 2]]
    pack_chunk([r], 2, 4, True)


@pytest.mark.slow
def test_rapidocr_reads_rendered_words(tmp_path: Path) -> None:
    from PIL import Image, ImageDraw, ImageFont

    data = tmp_path / 'videos'
    data.mkdir()
    font = ImageFont.load_default(size=44)
    frames = []
    for word in ('HELLO', 'HELLO', 'GARDEN', 'GARDEN'):  # 1 s each at 1 fps sampling, 25 fps video
        img = Image.new('RGB', (320, 240), 'white')
        ImageDraw.Draw(img).text((40, 90), word, fill='black', font=font)
        frames += [np.asarray(img)] * 25
    raw = np.stack(frames)
    subprocess.run([ffmpeg_exe(), '-y', '-v', 'error', '-f', 'rawvideo', '-pix_fmt', 'rgb24', '-s', '320x240', '-r', '25',
                    '-i', 'pipe:0', '-c:v', 'libx264', '-pix_fmt', 'yuv420p', str(data / 'words.mp4')],
                   input=raw.tobytes(), check=True)
    vectors = _word2vec(tmp_path / 'w2v.bin', ['hello', 'garden', 'river'])
    assert _extract(data, tmp_path / 'f', 'ocr.rapidocr', '--set', f'word_vectors={vectors}') == 0
    store = open_store(tmp_path / 'f' / folder_name(data) / 'ocr.rapidocr.zarr')
    rows = store.read()
    tokens = json.loads(rows.tokens[0])
    assert [normalise(t['word']) for t in tokens] == ['hello', 'garden']
    assert [t['start'] for t in tokens] == pytest.approx([0.48, 2.48], abs=0.01)
    # merged over the two sampled frames of each word: from the first's start to the second's end
    assert [t['end'] for t in tokens] == pytest.approx([1.52, 3.52], abs=0.01)
    wv = load_word_vectors(vectors)
    np.testing.assert_allclose(rows.rows(0), np.stack([wv.lookup('hello'), wv.lookup('garden')]), atol=2e-3)
    assert rows.available[0] and store.attrs['weights'].startswith('rapidocr-onnxruntime')
    # re-embedding the stored tokens with other vectors needs no OCR
    other = _word2vec(tmp_path / 'other.bin', ['garden', 'house'], dim=8)
    from extract.reembed import main as reembed

    assert reembed([str(store.path), '--word-vectors', str(other)]) == 0
    again = open_store(store.path).read()
    assert again.features.shape[2] == 8 and again.lengths[0] == 1  # 'hello' has no vector there
    np.testing.assert_allclose(again.rows(0), load_word_vectors(other).lookup('garden')[None], atol=2e-3)
    assert json.loads(again.tokens[0]) == tokens
    assert check_store(store.path).exit_code == 0
    # --out never replaces an existing store (here: the one being read)
    assert reembed([str(store.path), '--word-vectors', str(vectors), '--out', str(store.path)]) == 1
    np.testing.assert_array_equal(open_store(store.path).read().features, again.features)
    # stopped midway (Ctrl-C while writing): the store is as it was, and nothing half-written is left
    import extract.reembed

    def stop(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    before = sorted(p.name for p in store.path.parent.iterdir())
    with pytest.MonkeyPatch.context() as m:
        m.setattr(extract.reembed, 'pack_chunk', stop)
        with pytest.raises(KeyboardInterrupt):
            reembed([str(store.path), '--word-vectors', str(vectors)])
    assert sorted(p.name for p in store.path.parent.iterdir()) == before
    np.testing.assert_array_equal(open_store(store.path).read().features, again.features)


def test_easyocr_without_models_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('VIDEOEXPERTS_WEIGHTS_DIR', str(tmp_path / 'weights'))
    vectors = _word2vec(tmp_path / 'w2v.bin', ['a'])
    data = tmp_path / 'videos'
    data.mkdir()
    (data / 'x.mp4').write_bytes(b'')
    assert _extract(data, tmp_path / 'f', 'ocr', '--set', f'word_vectors={vectors}') == 1
    err = capsys.readouterr().err
    assert 'craft_mlt_25k.pth' in err and str(tmp_path / 'weights' / 'easyocr') in err and 'rapidocr' in err


# --------------------------------------------------------------------------------------- speech

@pytest.mark.slow
def test_whisper_path_end_to_end_with_a_tiny_model(tmp_path: Path, small_demo: Path) -> None:
    from extract.experts.speech import random_whisper

    dims = dict(n_mels=80, n_audio_ctx=1500, n_audio_state=32, n_audio_head=2, n_audio_layer=1, n_vocab=51865,
                n_text_ctx=64, n_text_state=32, n_text_head=2, n_text_layer=1)
    meta = json.loads((small_demo / 'demo.json').read_text())
    clip = next(v for v in meta['videos'] if v['audio'])
    data = tmp_path / 'videos'
    data.mkdir()
    (data / 'clip.mp4').symlink_to(small_demo / clip['file'])
    (data / 'mute.mp4').symlink_to(small_demo / next(v for v in meta['videos'] if not v['audio'])['file'])
    audio = load_audio(data / 'clip.mp4')[0]
    # the words this model says, then vectors for half of them: availability must follow
    ckpt = tmp_path / 'tiny-whisper.pt'
    torch.save({'dims': dims, 'model_state_dict': random_whisper(dims, seed=0).state_dict()}, ckpt)
    # the clip's audio is a tone, which the VAD rightly finds without speech: this test is whisper's path
    expert = create_expert('speech', weights=str(ckpt), max_tokens=8, temperatures=[0.0], vad=False,
                           word_vectors=str(_word2vec(tmp_path / 'none.bin', ['zzz'])))
    heard = expert.load('cpu').process(VideoInput(audio=audio)).tokens
    assert heard, 'the tiny model produced no words'
    words = sorted({normalise(t['word']) for t in heard} - {''})
    vectors = _word2vec(tmp_path / 'w2v.bin', words[::2] + ['unrelated'])
    settings = ['--set', f'speech.weights={ckpt}', '--set', 'max_tokens=8', '--set', 'temperatures=[0.0]',
                '--set', 'vad=false']
    assert _extract(data, tmp_path / 'f', 'speech', *settings, '--set', f'word_vectors={vectors}') == 0
    store = open_store(tmp_path / 'f' / folder_name(data) / 'speech.zarr')
    rows = store.read(ids=['clip.mp4', 'mute.mp4'])
    tokens = json.loads(rows.tokens[0])
    assert tokens == sorted(heard, key=lambda t: (t['start'], t['end']))  # every word, in time order
    assert all(0 <= t['start'] <= t['end'] <= clip['duration'] + 1e-3 for t in tokens)
    wv = load_word_vectors(vectors)
    in_vocab = [t for t in tokens if wv.lookup(normalise(t['word'])) is not None]
    assert rows.lengths[0] == len(in_vocab) and rows.available[0] == (len(in_vocab) > 0)
    assert words and in_vocab  # half the words heard have vectors: the rows below are compared, not skipped
    np.testing.assert_allclose(rows.rows(0), np.stack([wv.lookup(normalise(t['word'])) for t in in_vocab]), atol=2e-3)
    np.testing.assert_allclose(rows.timestamps[0, : len(in_vocab)], [[t['start'], t['end']] for t in in_vocab],
                               atol=1e-5)
    assert rows.status[1] == SKIPPED  # no audio stream
    assert check_store(store.path).exit_code == 0


@pytest.mark.slow
def test_all_seven_experts_on_the_demo(small_demo: Path, tmp_path: Path) -> None:
    """`--expert all` on the demo: seven valid stores whose availability follows the demo's facts."""
    from extract.experts import resolve_expert_names

    names = resolve_expert_names('all')
    assert names == ['object', 'action', 'scene', 'audio', 'face', 'ocr', 'speech']
    light = ['--set', 'object.resize=[40]', '--set', 'object.input_size=32', '--set', 'scene.resize=[40]',
             '--set', 'scene.input_size=32', '--set', 'action.resize=[40]', '--set', 'action.input_size=32',
             '--set', 'action.clip_len=6', '--set', 'speech.max_tokens=4']
    code = main(['--dataset', 'demo', '--data-root', str(small_demo.parent), '--features-root', str(tmp_path),
                 '--expert', 'all', '--weights', 'random', '--workers', '1', '--chunk-size', '4', '--no-progress', *light])
    assert code == 0
    meta = json.loads((small_demo / 'demo.json').read_text())['videos']
    avail = {}
    for name in names:
        path = tmp_path / 'demo' / f'{name}.zarr'
        assert check_store(path).exit_code == 0, check_store(path).summary()
        avail[name] = open_store(path, warn_random=False).read().available.tolist()
    assert avail['face'] == [v['face'] for v in meta]  # faces only where the astronaut is
    assert avail['ocr'] == [bool(v['word']) for v in meta]  # text where words were drawn
    assert avail['audio'] == [v['audio'] for v in meta]
    assert all(v['speech'] for v, a in zip(meta, avail['speech']) if a)  # speech only where it was generated
    assert all(avail['object']) and all(avail['scene']) and all(avail['action'])


def test_vggish_flattens_its_last_feature_map_in_tf_order() -> None:
    """The TF model (and torchvggish) flattens the last (6 frames, 4 bands, 512) map as NHWC:
    embedding input (h * 4 + w) * 512 + c is channel c at (h, w). With a wrong order the released weights load
    but give other embeddings."""
    from extract.experts.audio import VGGish

    torch.manual_seed(0)
    model = VGGish().eval()
    x = torch.randn(2, 96, 64)
    with torch.no_grad():
        fmap = model.features(x.unsqueeze(1))  # (2, 512, 6, 4)
        assert fmap.shape == (2, 512, 6, 4)
        fc1 = model.embeddings[0]
        hidden = torch.einsum('nchw,ohwc->no', fmap, fc1.weight.view(4096, 6, 4, 512)) + fc1.bias
        expected = model.embeddings[1:](hidden)
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


def test_the_bar_says_which_per_video_expert_the_run_waits_for(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The bar counts videos fed to the experts; a per-video expert may work on the last chunk long after
    (whisper on a CPU): the bar says so meanwhile, not a silent 100 %, and no more once it is done."""
    data = tmp_path / 'videos'
    data.mkdir()
    _still_video(np.full((240, 320, 3), 128, np.uint8), data / 'tone.mp4', 2.0,
                 ['-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=48000'])
    assert main(['--dataset', f'folder:{data}', '--features-root', str(tmp_path / 'f'), '--expert', 'audio',
                 '--workers', '0', '--weights', 'random']) == 0
    bar = capsys.readouterr().err.replace('\r', '\n').splitlines()
    assert any('waiting for audio' in line for line in bar)
    last = [line for line in bar if line.startswith('extract:')][-1]
    assert '1/1' in last and last.rstrip().endswith('failed=0]')
