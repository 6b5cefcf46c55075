"""Whisper batched across videos (extract/experts/_whisper.py) against `whisper.transcribe` on each
video alone: a tiny random whisper in fp32, audio decoded from FFmpeg-made files by the project's
own loader, and silero-vad's real model (from its wheel) deciding which windows are decoded."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from extract.experts._base import VideoInput
from extract.experts._whisper import BatchOptions, transcribe_batch
from extract.experts.speech import load_vad, random_whisper
from shared.media import ffmpeg_exe, load_audio

DIMS = dict(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=1, n_vocab=51865,
            n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=1)
SR = 16000


def _ff(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), '-y', '-v', 'error', *args], check=True, capture_output=True)


def voiced(seconds: float, seed: int = 0) -> np.ndarray:
    """A speech-like signal: 'syllables' of 0.12-0.3 s, each a glottal pulse train at a wavering
    pitch through the formants of a random vowel, faded in and out, with a pause now and then.
    silero-vad hears speech in it (none in a tone, noise or silence); a random whisper hears noise."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    out = np.zeros(n)
    vowels = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410)]
    k = 0
    while k < n:
        m = int(rng.uniform(0.12, 0.3) * SR)
        t = np.arange(m) / SR
        pitch = rng.uniform(100, 160) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(1, 3) * t))
        y = np.zeros(m)
        y[np.where(np.diff(np.floor(np.cumsum(pitch / SR))) > 0)[0]] = 1.0
        y += 0.02 * rng.standard_normal(m)
        for f, bw in zip(vowels[rng.integers(len(vowels))], (80, 100, 120)):
            r, th = np.exp(-np.pi * bw / SR), 2 * np.pi * f * rng.uniform(0.9, 1.1) / SR
            y = lfilter([1 - r], [1, -2 * r * np.cos(th), r * r], y)
        y *= np.sin(np.pi * np.arange(m) / m) ** 0.5 * rng.uniform(0.5, 1.0) / (np.abs(y).max() + 1e-9)
        out[k:k + m] = y[:n - k]
        k += m + (int(rng.uniform(0.1, 0.4) * SR) if rng.random() < 0.25 else 0)
    return (0.5 * out / np.abs(out).max()).astype(np.float32)


def _wav_clip(path: Path, audio: np.ndarray) -> Path:
    """`audio` through a real AAC file: what the speech expert gets from a video."""
    raw = path.with_suffix('.f32')
    raw.write_bytes(audio.astype('<f4').tobytes())
    _ff('-f', 'f32le', '-ar', str(SR), '-ac', '1', '-i', str(raw), '-c:a', 'aac', str(path))
    raw.unlink()
    return path


@pytest.fixture(scope='module')
def tiny() -> torch.nn.Module:
    return random_whisper(DIMS, seed=0).eval()


@pytest.fixture(scope='module')
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """Decoded audio of four files: 3 s, 8 s, and 34 s (two windows, the second placed by where
    the first one's words end) of voice, and 5 s of voice over a tone."""
    d = tmp_path_factory.mktemp('speech')
    t = np.arange(5 * SR) / SR
    sources = [voiced(3, 0), voiced(8, 1), voiced(34, 2), voiced(5, 3) + (0.2 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)]
    return [load_audio(_wav_clip(d / f'clip{i}.m4a', a))[0] for i, a in enumerate(sources)]


def _words(segments: list[dict]) -> list[tuple]:
    return [(w['word'], w['start'], w['end'], round(w['probability'], 4)) for s in segments for w in s['words']]


@pytest.mark.slow
def test_batched_transcription_is_per_video_transcription(tiny: torch.nn.Module, clips: list[np.ndarray]) -> None:
    import whisper

    opts = BatchOptions(language='en', temperatures=(0.0,), sample_len=12, batch_size=3, min_speech=0.0)
    batched = transcribe_batch(tiny, clips, opts)
    assert len(batched) == len(clips)
    for audio, got in zip(clips, batched):
        ref = whisper.transcribe(tiny, audio, language='en', word_timestamps=True, temperature=(0.0,), fp16=False,
                                 condition_on_previous_text=False, verbose=None, sample_len=12)
        assert _words(got.segments) == _words(ref['segments'])  # the same words, times and probabilities
        assert [(s['seek'], s['start'], s['end'], s['text']) for s in got.segments] == \
               [(s['seek'], s['start'], s['end'], s['text']) for s in ref['segments']]
    assert any(_words(t.segments) for t in batched), 'the tiny model said nothing: the test compares nothing'
    assert batched[2].decoded >= 2  # the 34-s clip took a second window, placed after the first one's words


@pytest.mark.slow
def test_windows_whisper_finds_silent_are_skipped_as_whisper_skips_them(tiny: torch.nn.Module,
                                                                         clips: list[np.ndarray]) -> None:
    """With a no-speech threshold between the first windows' own no-speech probabilities, whisper
    skips some windows: the batch skips the same ones and places the others' words as each video alone."""
    import whisper
    from extract.experts._whisper import _decode_with_fallback, whisper_input
    from whisper.audio import N_FRAMES, pad_or_trim

    mels = [whisper_input(a, 80, 'cpu') for a in clips]
    firsts = torch.stack([pad_or_trim(m[:, :min(N_FRAMES, m.shape[-1] - N_FRAMES)], N_FRAMES) for m in mels])
    first = _decode_with_fallback(tiny, tiny.embed_audio(firsts), BatchOptions(temperatures=(0.0,), sample_len=12), 'en')
    cut = float(np.median([r.no_speech_prob for r in first]))
    # every avg_logprob is under 0: whisper's rule then skips by the no-speech probability alone
    opts = BatchOptions(language='en', temperatures=(0.0,), sample_len=12, batch_size=4, min_speech=0.0,
                        no_speech_threshold=cut, logprob_threshold=0.0)
    skipped = [r.no_speech_prob > cut for r in first]
    assert any(skipped) and not all(skipped)
    # the skipped first in the batch: the others' windows are then not at their places among those decoded
    order = sorted(range(len(clips)), key=lambda i: not skipped[i])
    batched = transcribe_batch(tiny, [clips[i] for i in order], opts)
    for i, got in zip(order, batched):
        ref = whisper.transcribe(tiny, clips[i], language='en', word_timestamps=True, temperature=(0.0,), fp16=False,
                                 condition_on_previous_text=False, verbose=None, sample_len=12,
                                 no_speech_threshold=cut, logprob_threshold=0.0)
        assert _words(got.segments) == _words(ref['segments'])
        assert [(s['seek'], s['start'], s['end']) for s in got.segments] == \
               [(s['seek'], s['start'], s['end']) for s in ref['segments']]
        if i < 2:  # the short clips: one window each, skipped or decoded
            assert (not got.segments) == skipped[i]
    assert any(_words(t.segments) for t in batched), 'no words: the test compares nothing'


def test_a_later_window_is_judged_by_its_own_seconds_of_speech() -> None:
    """A window's 32-ms VAD chunks are found from its mel frames (10 ms each): a silent window after
    30 s of speech is skipped, not credited with the speech before it."""
    from extract.experts._whisper import VAD_CHUNK, _next_window, _Transcript

    speech = np.zeros(-(-40 * SR // VAD_CHUNK), bool)
    speech[:30 * SR // VAD_CHUNK] = True  # speech for 30 s, then 10 s of silence
    s = _Transcript(torch.zeros(80, 1), content_frames=4000, speech=speech)
    assert _next_window(s, 0.25) and (s.seek, s.silent) == (0, 0)
    s.seek = 3000  # the first window decoded
    assert not _next_window(s, 0.25) and (s.seek, s.silent) == (4000, 1)


def test_a_window_with_exactly_min_speech_is_decoded() -> None:
    """min_speech is what a window needs: one with exactly that much speech (8 VAD chunks of 32 ms,
    min_speech 0.256 s) is decoded, one with a chunk less is skipped."""
    from extract.experts._whisper import VAD_CHUNK, _next_window, _Transcript

    for chunks, decoded in ((8, True), (7, False)):
        speech = np.zeros(-(-10 * SR // VAD_CHUNK), bool)
        speech[100:100 + chunks] = True
        s = _Transcript(torch.zeros(80, 1), content_frames=1000, speech=speech)
        assert _next_window(s, 8 * VAD_CHUNK / SR) == decoded and s.silent == (0 if decoded else 1)


def test_a_window_counts_the_vad_chunk_that_runs_past_its_end() -> None:
    """A window's speech is that of every VAD chunk it overlaps: 10 s of audio end inside chunk 312
    (samples 159744..160255), whose speech is the window's too."""
    from extract.experts._whisper import VAD_CHUNK, _next_window, _Transcript

    speech = np.zeros(-(-10 * SR // VAD_CHUNK), bool)  # 313 chunks, the last one partial
    speech[-1] = True
    s = _Transcript(torch.zeros(80, 1), content_frames=1000, speech=speech)
    assert _next_window(s, VAD_CHUNK / SR) and (s.seek, s.silent) == (0, 0)


def test_windows_without_speech_are_not_decoded(tiny: torch.nn.Module) -> None:
    t = np.arange(6 * SR) / SR
    silence = np.zeros(6 * SR, np.float32)
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    noise = (np.random.default_rng(0).standard_normal(6 * SR) * 0.05).astype(np.float32)
    opts = BatchOptions(language='en', temperatures=(0.0,), sample_len=8, batch_size=4)
    out = transcribe_batch(tiny, [silence, tone, noise, voiced(4)], opts, vad=load_vad(torch.device('cpu')))
    assert [t.decoded for t in out[:3]] == [0, 0, 0]  # silence, a tone and noise: not one decoding pass
    assert [t.silent for t in out[:3]] == [1, 1, 1]
    assert out[3].decoded >= 1
    assert [t.segments for t in out[:3]] == [[], [], []]
    assert out[3].segments  # the voice was decoded (into a random model's noise words)


def test_fallback_redecodes_only_the_windows_that_failed(tiny: torch.nn.Module, clips: list[np.ndarray]) -> None:
    from extract.experts._whisper import _decode_with_fallback
    from whisper.audio import N_FRAMES, log_mel_spectrogram, pad_or_trim

    mels = torch.stack([pad_or_trim(log_mel_spectrogram(torch.from_numpy(a), 80), N_FRAMES) for a in clips])
    features = tiny.embed_audio(mels)
    first = _decode_with_fallback(tiny, features, BatchOptions(temperatures=(0.0,), sample_len=8), 'en')
    # a log-probability threshold between the windows' own: some pass at 0.0, the rest are redone at 0.5
    cut = float(np.median([r.avg_logprob for r in first]))
    opts = BatchOptions(temperatures=(0.0, 0.5), sample_len=8, logprob_threshold=cut, compression_ratio_threshold=99)
    final = _decode_with_fallback(tiny, features, opts, 'en')
    failed = [r.avg_logprob < cut for r in first]
    assert any(failed) and not all(failed)
    assert [r.temperature for r in final] == [0.5 if f else 0.0 for f in failed]
    for r0, r, f in zip(first, final, failed):
        if not f:  # kept from the first pass
            assert r.tokens == r0.tokens


def test_the_expert_batches_and_keeps_each_videos_words(tiny: torch.nn.Module, tmp_path: Path) -> None:
    """`process_batch` of several videos gives each the words `process` gives it alone."""
    from extract.experts import create_expert
    from tests.extract.test_av_experts import _word2vec

    ckpt = tmp_path / 'tiny.pt'
    torch.save({'dims': DIMS, 'model_state_dict': tiny.state_dict()}, ckpt)
    expert = create_expert('speech', weights=str(ckpt), max_tokens=8, temperatures=[0.0], batch_size=3,
                           word_vectors=str(_word2vec(tmp_path / 'w.bin', ['zzz'])))
    expert.load('cpu')
    inputs = [VideoInput(audio=a) for a in (voiced(3, 1), np.zeros(3 * SR, np.float32), voiced(5, 4))]
    together = expert.process_batch(inputs)
    alone = [expert.process(x) for x in inputs]
    assert [r.tokens for r in together] == [r.tokens for r in alone]
    assert (together[0].tokens or together[2].tokens) and not together[1].tokens  # silence: no words, not even noise


def test_language_is_detected_once_per_video_as_whisper_does(tiny: torch.nn.Module, clips: list[np.ndarray]) -> None:
    """language '' (detect): each video's language comes from its first 30 s, once, as in
    `whisper.transcribe(language=None)`; the words follow from it."""
    import whisper

    opts = BatchOptions(language='', temperatures=(0.0,), sample_len=8, batch_size=4, min_speech=0.0)
    batched = transcribe_batch(tiny, clips[:2], opts)
    for audio, got in zip(clips[:2], batched):
        ref = whisper.transcribe(tiny, audio, language=None, word_timestamps=True, temperature=(0.0,), fp16=False,
                                 condition_on_previous_text=False, verbose=None, sample_len=8)
        assert got.language == ref['language']
        assert _words(got.segments) == _words(ref['segments'])


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_on_cuda_in_a_thread_of_its_own_the_words_are_the_cpus(tiny: torch.nn.Module, clips: list[np.ndarray]) -> None:
    """As the expert runs on a GPU (fp16 weights but the LayerNorms', its own thread): the CPU's words in
    fp32, at nearly the same times. Word timing's median filter and DTW run on the host, so no Triton
    kernel is compiled in that thread."""
    import copy
    import dataclasses
    from concurrent.futures import ThreadPoolExecutor

    from extract.experts.speech import _half_but_layer_norms

    opts = BatchOptions(language='en', temperatures=(0.0,), sample_len=12, batch_size=4, min_speech=0.0)
    ref = transcribe_batch(tiny, clips, opts)
    model = copy.deepcopy(tiny)
    _half_but_layer_norms(model)
    with ThreadPoolExecutor(1) as pool:
        got = pool.submit(transcribe_batch, model.cuda(), clips, dataclasses.replace(opts, fp16=True)).result()
    for a, b in zip(got, ref):
        wa, wb = _words(a.segments), _words(b.segments)
        assert [w[0] for w in wa] == [w[0] for w in wb]
        assert all(abs(x[1] - y[1]) <= 0.1 and abs(x[2] - y[2]) <= 0.1 for x, y in zip(wa, wb))
    assert any(_words(t.segments) for t in ref), 'the tiny model said nothing: the test compares nothing'
