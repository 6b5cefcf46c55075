"""Whisper transcription batched across videos, with word timestamps (the speech expert's engine).

`whisper.transcribe` takes one audio at a time: each 30-s window is encoded, decoded (again at
every fallback temperature) and aligned for its word times on its own, so a GPU sees batches of
one. Here every video keeps its own place in whisper's sliding window (`_Transcript.seek`), and
each round takes the current window of every video that has one:

- windows without speech (silero-vad, whose model ships in its wheel) are skipped before any
  decoding, as whisper skips a window it finds silent, so whisper cannot invent words on silence
  or music;
- the windows are encoded once, together, and decoded together through whisper's own batched
  `decode` at the first temperature; only those that fail whisper's compression-ratio or
  log-probability thresholds are decoded again, together, at the next one;
- the decoded text of all the windows is aligned in one decoder pass (word timestamps), and each
  window's words are placed exactly as `whisper.timing.add_word_timestamps` places them.

Each window is cut, decoded, split into segments and advanced as `whisper.transcribe` does with
`condition_on_previous_text=False` (the speech expert's setting), so at temperature 0 and in
float32 a video's words and times are those of `whisper.transcribe` on that video alone (the tests
check that). In float16 on a GPU, batches and the log-mel computed there move the numbers by
rounding, which can flip a near-tie; and windows the VAD finds silent are skipped on purpose.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np
import torch

__all__ = ['BatchOptions', 'transcribe_batch', 'speech_chunks', 'whisper_input', 'VAD_CHUNK']

#: silero-vad scores the audio in chunks of 512 samples at 16 kHz (32 ms)
VAD_CHUNK = 512


@dataclasses.dataclass(frozen=True)
class BatchOptions:
    """How `transcribe_batch` decodes (whisper.transcribe's defaults where it has the setting).

    Args:
        language: language code, or '' to detect it per window.
        temperatures: decoding temperatures, the next tried only for windows that failed.
        sample_len: tokens decoded per window (0: whisper's default).
        fp16: decode in float16 (CUDA).
        batch_size: windows decoded together.
        compression_ratio_threshold, logprob_threshold, no_speech_threshold: whisper's fallback
            and silence rules.
        min_speech: seconds of speech (per the VAD) a window needs to be decoded; 0 decodes all.
    """

    language: str = 'en'
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    sample_len: int = 0
    fp16: bool = False
    batch_size: int = 16
    compression_ratio_threshold: float = 2.4
    logprob_threshold: float = -1.0
    no_speech_threshold: float = 0.6
    min_speech: float = 0.25


@dataclasses.dataclass
class _Transcript:
    """One video's progress through whisper's sliding 30-s window."""

    mel: torch.Tensor  # (n_mels, content frames + 30 s of padding), as whisper.transcribe makes it
    content_frames: int
    speech: np.ndarray | None  # per VAD chunk: speech or not; None: no VAD
    seek: int = 0
    window_start: float = 0.0  # seconds: where the window being decoded starts
    segments: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    last_speech: float = 0.0  # end of the last word (whisper's last_speech_timestamp)
    language: str | None = None  # set once per video, as whisper.transcribe does
    decoded: int = 0  # windows decoded
    silent: int = 0  # windows skipped as without speech


def speech_chunks(vad: Any, audios: list[np.ndarray], device: torch.device, threshold: float = 0.5,
                  batch: int = 64) -> list[np.ndarray]:
    """Per audio, whether each 32-ms chunk is speech (silero-vad's probability >= `threshold`).
    The audios are scored together, zero-padded to the longest: the VAD's state is per row, so
    the padding after an audio does not change its chunks."""
    out: list[np.ndarray] = []
    for i in range(0, len(audios), batch):
        part = audios[i:i + batch]
        longest = max(len(a) for a in part)
        x = torch.zeros((len(part), max(longest, VAD_CHUNK)), dtype=torch.float32)
        for j, a in enumerate(part):
            x[j, :len(a)] = torch.from_numpy(np.asarray(a, np.float32))
        with torch.inference_mode():
            probs = vad.audio_forward(x.to(_device_of(vad, device)), 16000).float().cpu().numpy()
        for j, a in enumerate(part):
            out.append(probs[j, :-(-len(a) // VAD_CHUNK)] >= threshold)
    return out


def _device_of(module: Any, default: torch.device) -> torch.device:
    """Where a module's weights are (the VAD stays on the CPU when it cannot move to `default`)."""
    weight = next(iter(module.parameters()), None)
    return weight.device if weight is not None else default


def whisper_input(audio: np.ndarray, n_mels: int, device: torch.device | str) -> torch.Tensor:
    """16-kHz mono audio -> the (n_mels, frames) log-mel that `whisper.transcribe` slides its 30-s
    window over (padded with 30 s of silence, as it pads)."""
    from whisper.audio import N_SAMPLES, log_mel_spectrogram

    return log_mel_spectrogram(torch.from_numpy(np.asarray(audio, np.float32)), n_mels, padding=N_SAMPLES,
                               device=device)


def transcribe_batch(model: Any, audios: list[np.ndarray], opts: BatchOptions, vad: Any = None,
                     vad_threshold: float = 0.5) -> list[_Transcript]:
    """Transcribe 16-kHz mono audios with word timestamps; one `_Transcript` per audio, whose
    `segments` are `whisper.transcribe`'s (each with its `words`)."""
    from whisper.audio import N_FRAMES

    device = next(model.parameters()).device
    speech = speech_chunks(vad, audios, device, vad_threshold) if vad is not None else [None] * len(audios)
    states = []
    for audio, sp in zip(audios, speech):
        mel = whisper_input(audio, model.dims.n_mels, device)
        states.append(_Transcript(mel, mel.shape[-1] - N_FRAMES, sp))
    while True:
        windows = [s for s in states if _next_window(s, opts.min_speech)]
        if not windows:
            return states
        for i in range(0, len(windows), opts.batch_size):
            _round(model, windows[i:i + opts.batch_size], opts)


def _next_window(s: _Transcript, min_speech: float) -> bool:
    """Move `s` past windows without speech; True when it has a window to decode."""
    from whisper.audio import HOP_LENGTH, N_FRAMES, SAMPLE_RATE

    while s.seek < s.content_frames:
        size = min(N_FRAMES, s.content_frames - s.seek)
        if s.speech is None or min_speech <= 0:
            return True
        first, last = s.seek * HOP_LENGTH // VAD_CHUNK, -(-(s.seek + size) * HOP_LENGTH // VAD_CHUNK)
        if s.speech[first:last].sum() * VAD_CHUNK / SAMPLE_RATE >= min_speech:
            return True
        s.seek += size  # as whisper skips a window it finds silent
        s.silent += 1
    return False


def _round(model: Any, batch: list[_Transcript], opts: BatchOptions) -> None:
    """Decode, split and align the current window of each transcript in `batch`; advance them."""
    from whisper.audio import FRAMES_PER_SECOND, N_FRAMES, pad_or_trim
    from whisper.tokenizer import get_tokenizer

    dtype = torch.float16 if opts.fp16 else torch.float32
    sizes = [min(N_FRAMES, s.content_frames - s.seek) for s in batch]
    mels = torch.stack([pad_or_trim(s.mel[:, s.seek:s.seek + n], N_FRAMES) for s, n in zip(batch, sizes)])
    with torch.inference_mode():
        features = model.embed_audio(mels.to(dtype))
    _detect_languages(model, [s for s in batch if s.language is None], opts, dtype)
    languages = [s.language for s in batch]
    for language in sorted(set(languages)):
        idx = [i for i, lang in enumerate(languages) if lang == language]
        tokenizer = get_tokenizer(model.is_multilingual, num_languages=model.num_languages, language=language,
                                  task='transcribe')
        results = _decode_with_fallback(model, features[idx], opts, language)
        pending = []  # (transcript, its window's segments, window size, whether it ended on one timestamp)
        for i, result in zip(idx, results):
            s = batch[i]
            s.decoded += 1
            skip = result.no_speech_prob > opts.no_speech_threshold and not result.avg_logprob > opts.logprob_threshold
            if skip:
                s.seek += sizes[i]
                continue
            segments, single_ending = _split(s, result, tokenizer, sizes[i])
            pending.append((i, s, segments, single_ending))
        alignments = _align(model, tokenizer, features, [(i, _text_tokens(segs, tokenizer), sizes[i])
                                                          for i, _, segs, _ in pending])
        for (i, s, segments, single_ending), alignment in zip(pending, alignments):
            _place_words(segments, _text_tokens(segments, tokenizer), alignment, s.last_speech)
            if not single_ending:
                end = _last_end(segments)
                if end is not None and end > s.window_start:
                    s.seek = round(end * FRAMES_PER_SECOND)  # whisper's own rounding of the same product
            end = _last_end(segments)
            if end is not None:
                s.last_speech = end
            for seg in segments:  # an instantaneous or empty segment is cleared, as whisper does
                if seg['start'] == seg['end'] or seg['text'].strip() == '':
                    seg.update(text='', tokens=[], words=[])
            s.segments.extend(segments)


def _detect_languages(model: Any, todo: list[_Transcript], opts: BatchOptions, dtype: torch.dtype) -> None:
    """Each video's language, once: the option's, English for an English-only model, else
    detected on the video's first 30 s (whisper.transcribe's rules)."""
    from whisper.audio import N_FRAMES, pad_or_trim

    if not todo:
        return
    if opts.language or not model.is_multilingual:
        for s in todo:
            s.language = opts.language or 'en'
        return
    mels = torch.stack([pad_or_trim(s.mel, N_FRAMES) for s in todo]).to(dtype)
    with torch.inference_mode():
        _, probs = model.detect_language(model.embed_audio(mels))
    for s, p in zip(todo, probs):
        s.language = max(p, key=p.get)


def _needs_fallback(r: Any, opts: BatchOptions) -> bool:
    """whisper.transcribe's rule: too repetitive or too unlikely, unless it is silence."""
    bad = r.compression_ratio > opts.compression_ratio_threshold or r.avg_logprob < opts.logprob_threshold
    silent = r.no_speech_prob > opts.no_speech_threshold and r.avg_logprob < opts.logprob_threshold
    return bad and not silent


def _decode_with_fallback(model: Any, features: torch.Tensor, opts: BatchOptions, language: str) -> list[Any]:
    """whisper's `decode` on the encoded windows at each temperature in turn, each time only for
    the windows whose result failed the thresholds (whisper.transcribe retries one window at a time)."""
    from whisper.decoding import DecodingOptions, decode

    results: list[Any] = [None] * len(features)
    todo = list(range(len(features)))
    for t in opts.temperatures:
        options = DecodingOptions(task='transcribe', language=language, temperature=t, fp16=opts.fp16,
                                  **({'sample_len': opts.sample_len} if opts.sample_len else {}))
        with torch.inference_mode():
            out = decode(model, features[todo], options)
        for i, r in zip(todo, out):
            results[i] = r
        todo = [i for i, r in zip(todo, out) if _needs_fallback(r, opts)]
        if not todo:
            break
    return results


def _split(s: _Transcript, result: Any, tokenizer: Any, size: int) -> tuple[list[dict[str, Any]], bool]:
    """A window's tokens -> its segments, and the transcript's next seek (whisper.transcribe's rules:
    segments between consecutive timestamp tokens; seek to the last timestamp unless the window
    ended on a single one)."""
    from whisper.audio import HOP_LENGTH, SAMPLE_RATE

    stride = 2  # mel frames per output token
    precision = stride * HOP_LENGTH / SAMPLE_RATE
    offset = s.window_start = float(s.seek * HOP_LENGTH / SAMPLE_RATE)
    tokens = torch.tensor(result.tokens)

    def segment(start: float, end: float, toks: torch.Tensor) -> dict[str, Any]:
        toks_l = toks.tolist()
        return {'seek': s.seek, 'start': start, 'end': end, 'tokens': toks_l,
                'text': tokenizer.decode([t for t in toks_l if t < tokenizer.eot]),
                'temperature': result.temperature, 'avg_logprob': result.avg_logprob,
                'compression_ratio': result.compression_ratio, 'no_speech_prob': result.no_speech_prob}

    is_ts = tokens.ge(tokenizer.timestamp_begin)
    single_ending = is_ts[-2:].tolist() == [False, True]
    consecutive = (torch.where(is_ts[:-1] & is_ts[1:])[0] + 1).tolist()
    segments = []
    if consecutive:
        slices = consecutive + ([len(tokens)] if single_ending else [])
        last = 0
        for cut in slices:
            part = tokens[last:cut]
            segments.append(segment(offset + (part[0].item() - tokenizer.timestamp_begin) * precision,
                                    offset + (part[-1].item() - tokenizer.timestamp_begin) * precision, part))
            last = cut
        if single_ending:
            s.seek += size
        else:
            s.seek += (tokens[last - 1].item() - tokenizer.timestamp_begin) * stride
    else:
        duration = size * HOP_LENGTH / SAMPLE_RATE
        stamps = tokens[is_ts.nonzero().flatten()]
        if len(stamps) > 0 and stamps[-1].item() != tokenizer.timestamp_begin:
            duration = (stamps[-1].item() - tokenizer.timestamp_begin) * precision
        segments.append(segment(offset, offset + duration, tokens))
        s.seek += size
    return segments, single_ending


def _text_tokens(segments: list[dict[str, Any]], tokenizer: Any) -> list[list[int]]:
    return [[t for t in seg['tokens'] if t < tokenizer.eot] for seg in segments]


def _align(model: Any, tokenizer: Any, features: torch.Tensor,
           items: list[tuple[int, list[list[int]], int]]) -> list[list[Any]]:
    """Word timings of several windows in one decoder pass: `whisper.timing.find_alignment` for
    each (window index into `features`, its segments' text tokens, its frames), batched. Each
    window's token sequence is padded at its end, which its causal decoder never sees."""
    from whisper.model import disable_sdpa
    from whisper.timing import TOKENS_PER_SECOND, WordTiming, dtw, median_filter

    out: list[list[Any]] = [[] for _ in items]
    flat = [list(itertools.chain.from_iterable(segs)) for _, segs, _ in items]
    todo = [k for k, toks in enumerate(flat) if toks]
    if not todo:
        return out
    prefix = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
    seqs = [prefix + flat[k] + [tokenizer.eot] for k in todo]
    tokens = torch.full((len(seqs), max(map(len, seqs))), tokenizer.eot, dtype=torch.long)
    for j, seq in enumerate(seqs):
        tokens[j, :len(seq)] = torch.tensor(seq)
    qks: list[Any] = [None] * model.dims.n_text_layer
    hooks = [block.cross_attn.register_forward_hook(lambda _m, _i, outs, index=i: qks.__setitem__(index, outs[-1]))
             for i, block in enumerate(model.decoder.blocks)]
    try:
        with torch.inference_mode(), disable_sdpa():
            logits = model.decoder(tokens.to(features.device), features[[items[k][0] for k in todo]])
    finally:
        for h in hooks:
            h.remove()
    heads = model.alignment_heads.indices().T.tolist()
    sot = len(tokenizer.sot_sequence)
    for j, k in enumerate(todo):
        text = flat[k]
        probs = logits[j, sot:sot + len(text), :tokenizer.eot].float().softmax(dim=-1)
        text_probs = probs[np.arange(len(text)), text].tolist()
        weights = torch.stack([qks[layer][j, head] for layer, head in heads])[:, :len(seqs[j]), :items[k][2] // 2]
        weights = weights.float().softmax(dim=-1)
        std, mean = torch.std_mean(weights, dim=-2, keepdim=True, unbiased=False)
        # the median filter and DTW run on the host: on CUDA whisper runs them as Triton kernels compiled at
        # first use, here in the expert's own thread, and falls back only on RuntimeError; a compile that
        # fails otherwise would fail every speech video of the run. The host copy is a few MB a window.
        weights = median_filter(((weights - mean) / std).cpu(), 7)
        matrix = weights.mean(axis=0)[sot:-1]
        text_indices, time_indices = dtw(-matrix)
        words, word_tokens = tokenizer.split_to_word_tokens(text + [tokenizer.eot])
        if len(word_tokens) <= 1:
            continue
        bounds = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
        jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
        jump_times = time_indices[jumps] / TOKENS_PER_SECOND
        out[k] = [WordTiming(w, t, start, end, float(np.mean(text_probs[a:b])))
                  for w, t, start, end, a, b in zip(words, word_tokens, jump_times[bounds[:-1]],
                                                    jump_times[bounds[1:]], bounds[:-1], bounds[1:])]
    return out


def _place_words(segments: list[dict[str, Any]], text_tokens: list[list[int]], alignment: list[Any],
                 last_speech: float) -> None:
    """Give each segment its `words` from the window's alignment, with
    `whisper.timing.add_word_timestamps`'s adjustments (long words cut at sentence and pause
    boundaries, punctuation merged, segment bounds preferred over over-long first/last words)."""
    from whisper.audio import HOP_LENGTH, SAMPLE_RATE
    from whisper.timing import merge_punctuations

    if not segments:
        return
    durations = np.array([t.end - t.start for t in alignment])
    durations = durations[durations.nonzero()]
    median = min(0.7, float(np.median(durations) if len(durations) > 0 else 0.0))
    longest = median * 2
    if len(durations) > 0:
        marks = '.。!！?？'
        for i in range(1, len(alignment)):
            if alignment[i].end - alignment[i].start > longest:
                if alignment[i].word in marks:
                    alignment[i].end = alignment[i].start + longest
                elif alignment[i - 1].word in marks:
                    alignment[i].start = alignment[i].end - longest
    merge_punctuations(alignment, "\"'“¿([{-", "\"'.。,，!！?？:：”)]}、")
    offset = segments[0]['seek'] * HOP_LENGTH / SAMPLE_RATE
    index = 0
    for seg, seg_tokens in zip(segments, text_tokens):
        saved, words = 0, []
        while index < len(alignment) and saved < len(seg_tokens):
            timing = alignment[index]
            if timing.word:
                words.append({'word': timing.word, 'start': round(offset + timing.start, 2),
                              'end': round(offset + timing.end, 2), 'probability': timing.probability})
            saved += len(timing.tokens)
            index += 1
        if words:
            if words[0]['end'] - last_speech > median * 4 and (
                    words[0]['end'] - words[0]['start'] > longest
                    or (len(words) > 1 and words[1]['end'] - words[0]['start'] > longest * 2)):
                if len(words) > 1 and words[1]['end'] - words[1]['start'] > longest:
                    boundary = max(words[1]['end'] / 2, words[1]['end'] - longest)
                    words[0]['end'] = words[1]['start'] = boundary
                words[0]['start'] = max(0, words[0]['end'] - longest)
            if seg['start'] < words[0]['end'] and seg['start'] - 0.5 > words[0]['start']:
                words[0]['start'] = max(0, min(words[0]['end'] - median, seg['start']))
            else:
                seg['start'] = words[0]['start']
            if seg['end'] > words[-1]['start'] and seg['end'] + 0.5 < words[-1]['end']:
                words[-1]['end'] = max(words[-1]['start'] + median, seg['end'])
            else:
                seg['end'] = words[-1]['end']
            last_speech = seg['end']
        seg['words'] = words


def _last_end(segments: list[dict[str, Any]]) -> float | None:
    """The end of the last word, else of the last segment (whisper.utils.get_end)."""
    return next((w['end'] for seg in reversed(segments) for w in reversed(seg['words'])),
                segments[-1]['end'] if segments else None)
