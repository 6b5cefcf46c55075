"""The embedded demo dataset: real H.264+AAC videos made with FFmpeg from photos in `skimage.data`.

Every video is built from a few facts: a subject photo (the astronaut gives a real face), a camera
motion (pan or zoom), a tone whose pitch is part of the content (or silence, or no audio stream
at all), a word rendered on screen, and spoken words when `espeak-ng` is installed. Captions are
paraphrases written from those facts, so retrieval on the demo is learnable and checkable. A
small word2vec model (gensim) trained on the demo vocabulary is saved in word2vec binary format.

    python -m shared.datasets.demo --out data/demo --videos 120 --seed 0
    python -m shared.datasets.demo --images --out data/demo_images --seed 0

``--images`` writes the second demo dataset, ``demo_images``: JPEG stills of the same photos, framed
as a frame of a demo video, some with a word on them, each with captions written from its facts
(MEE's still images, sec. 3-4: captioned images as videos without motion or sound).
The same seed gives byte-identical files on the same machine (x264 single-threaded, bitexact).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tempfile
import wave
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from shared.datasets import DATASETS
from shared.datasets.manifest import DatasetError, Manifest, Split, read_json, require_files, resolve_inside
from shared.media import ffmpeg_exe

__all__ = ['DemoCfg', 'NarratedCfg', 'DemoImagesCfg', 'generate', 'generate_narrated', 'generate_images', 'demo',
           'demo_images', 'NARRATED_FILE', 'IMAGES_FILE', 'SUBJECTS', 'MOTIONS', 'TONES', 'WORDS', 'PHRASES',
           'MANIFEST_FILE', 'WORD2VEC_FILE', 'split_sizes', 'main']

MANIFEST_FILE = 'demo.json'
#: the narrated set's record of its facts, beside HowTo100M's own files
NARRATED_FILE = 'narrated.json'
#: the still-image set's annotation file (``{data_root}/demo_images/demo_images.json``)
IMAGES_FILE = 'demo_images.json'
WORD2VEC_FILE = 'word2vec.bin'
GENERATOR_VERSION = 1

#: subject -> (skimage.data function, noun phrase used in captions)
SUBJECTS = {
    'astronaut': ('astronaut', 'an astronaut'), 'cat': ('chelsea', 'a cat'), 'coffee': ('coffee', 'a cup of coffee'),
    'rocket': ('rocket', 'a rocket'), 'coins': ('coins', 'some coins'), 'moon': ('moon', 'the moon'),
    'horse': ('horse', 'a horse'), 'clock': ('clock', 'a clock'), 'galaxies': ('hubble_deep_field', 'distant galaxies'),
    'cells': ('immunohistochemistry', 'stained cells'),
}
#: where the camera looks, as a fraction of the photo's height (the astronaut's face is near the top)
_FOCUS_Y = {'astronaut': 0.0}
#: motion -> caption phrases (the camera ...)
MOTIONS = {'pan left': 'pans left', 'pan right': 'pans right', 'zoom in': 'zooms in', 'zoom out': 'zooms out'}
#: tone -> frequency in Hz (0: a silent audio track)
TONES = {'low': 220.0, 'medium': 440.0, 'high': 880.0, 'silent': 0.0}
WORDS = ('river', 'planet', 'garden', 'music', 'window', 'summer', 'forest', 'yellow', 'orange', 'castle',
         'bridge', 'winter')
PHRASES = ('hello world', 'good morning', 'look at this', 'thank you', 'see you soon', 'welcome home')
_SAMPLE_RATE = 48000


@dataclasses.dataclass(frozen=True)
class DemoCfg:
    """How the demo dataset is generated; defaults are what `make demo` uses.

    Args:
        videos: number of videos.
        seed: all randomness comes from this.
        width, height, fps: video format (H.264, yuv420p).
        min_duration, max_duration: seconds; each video's duration is drawn in between (0.2 s steps).
        no_audio_rate: share of videos with no audio stream at all.
        word_rate: share of videos with a word on screen.
        speech_rate: share of videos with spoken words (only when espeak-ng is installed).
        split: train/val/test shares.
        word_dim: word2vec dimension (300 as GoogleNews, so configs need no demo special case).
    """

    videos: int = 120
    seed: int = 0
    width: int = 320
    height: int = 240
    fps: int = 25
    min_duration: float = 3.0
    max_duration: float = 6.0
    no_audio_rate: float = 0.1
    word_rate: float = 0.6
    speech_rate: float = 0.4
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    word_dim: int = 300

    def __post_init__(self) -> None:
        if self.videos < 3:
            raise ValueError('the demo needs at least 3 videos (one per split part)')
        if not 0 < self.min_duration <= self.max_duration:
            raise ValueError('durations must satisfy 0 < min_duration <= max_duration')
        if self.width % 2 or self.height % 2:
            raise ValueError('width and height must be even (yuv420p)')


def _subject_image(key: str, width: int, height: int) -> Any:
    """The subject photo as an RGB PIL image covering a 1.5x canvas (room for pans and zooms)."""
    import skimage.data
    from PIL import Image

    arr = np.asarray(getattr(skimage.data, SUBJECTS[key][0])())
    if arr.dtype == bool:
        arr = np.where(arr, 30, 235).astype(np.uint8)  # dark silhouette on light ground
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    img = Image.fromarray(arr[..., :3].astype(np.uint8))
    cw, ch = int(width * 1.5), int(height * 1.5)
    scale = max(cw / img.width, ch / img.height)
    img = img.resize((max(cw, round(img.width * scale)), max(ch, round(img.height * scale))), Image.BICUBIC)
    left, top = (img.width - cw) // 2, int((img.height - ch) * _FOCUS_Y.get(key, 0.5))
    return img.crop((left, top, left + cw, top + ch))


def _word_overlay(word: str, height: int) -> Any:
    """The word as black capitals on a white box (a PIL image) for a frame `height` pixels high."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=max(16, height // 7))
    text = word.upper()
    box = ImageDraw.Draw(Image.new('RGB', (1, 1))).textbbox((0, 0), text, font=font)
    tw, th = box[2] - box[0], box[3] - box[1]
    overlay = Image.new('RGB', (tw + 24, th + 20), 'white')
    ImageDraw.Draw(overlay).text((12 - box[0], 10 - box[1]), text, fill='black', font=font)
    return overlay


def _paste_word(frame: Any, overlay: Any) -> None:
    """`overlay` pasted in place on `frame`, centred near its bottom."""
    w, h = frame.size
    frame.paste(overlay, ((w - overlay.width) // 2, h - overlay.height - h // 12))


def _view(canvas: Any, subject: str, motion: str, p: float, size: tuple[int, int]) -> Any:
    """What the camera sees of `canvas` (`_subject_image`) at progress `p` (0 to 1) of `motion`:
    a PIL image of `size` (width, height)."""
    from PIL import Image

    cw, ch = canvas.size
    w, h = size
    fy = _FOCUS_Y.get(subject, 0.5)
    if motion.startswith('pan'):
        x0 = (cw - w) * (p if motion == 'pan right' else 1 - p)
        crop = (x0, (ch - h) * fy, x0 + w, (ch - h) * fy + h)
    else:
        z = 1.5 - 0.5 * (p if motion == 'zoom in' else 1 - p)  # visible width / frame width
        vw, vh = w * z, h * z
        top = (ch - vh) * fy
        crop = ((cw - vw) / 2, top, (cw + vw) / 2, top + vh)
    return canvas.resize((w, h), Image.BILINEAR, box=crop)


def _frames(facts: dict[str, Any], cfg: DemoCfg, n_frames: int) -> np.ndarray:
    """(F, H, W, 3) uint8 frames: the camera moving over the subject, the word shown mid-video."""
    canvas = _subject_image(facts['subject'], cfg.width, cfg.height)
    w, h = cfg.width, cfg.height
    out = np.empty((n_frames, h, w, 3), np.uint8)
    overlay = _word_overlay(facts['word'], h) if facts['word'] else None
    show = facts['word_span']
    for i in range(n_frames):
        frame = _view(canvas, facts['subject'], facts['motion'], i / max(1, n_frames - 1), (w, h))
        t = i / cfg.fps
        if overlay is not None and show[0] <= t < show[1]:
            _paste_word(frame, overlay)
        out[i] = np.asarray(frame)
    return out


def _espeak(text: str, workdir: Path) -> np.ndarray | None:
    """Speech for `text` from espeak-ng, resampled to the demo rate; None when espeak-ng is absent."""
    exe = shutil.which('espeak-ng')
    if exe is None:
        return None
    wav = workdir / 'speech.wav'
    subprocess.run([exe, '-v', 'en', '-s', '140', '-w', str(wav), text], check=True, capture_output=True)
    with wave.open(str(wav)) as f:
        rate, n = f.getframerate(), f.getnframes()
        pcm = np.frombuffer(f.readframes(n), dtype=np.int16).astype(np.float32) / 32768.0
        if f.getnchannels() > 1:
            pcm = pcm.reshape(-1, f.getnchannels()).mean(axis=1)
    t_out = np.arange(int(len(pcm) * _SAMPLE_RATE / rate)) / _SAMPLE_RATE
    return np.interp(t_out, np.arange(len(pcm)) / rate, pcm).astype(np.float32)


def _audio(facts: dict[str, Any], duration: float, speech: np.ndarray | None) -> np.ndarray:
    """Mono float32 audio at 48 kHz: the tone (10 ms fades), plus speech from 0.5 s."""
    n = int(round(duration * _SAMPLE_RATE))
    t = np.arange(n) / _SAMPLE_RATE
    freq = TONES[facts['tone']]
    audio = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32) if freq else np.zeros(n, np.float32)
    fade = min(n // 2, int(0.01 * _SAMPLE_RATE))
    if fade:
        ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
        audio[:fade] *= ramp
        audio[-fade:] *= ramp[::-1]
    if speech is not None:
        start = int(0.5 * _SAMPLE_RATE)
        seg = speech[: max(0, n - start)]
        audio[start:start + len(seg)] = 0.4 * audio[start:start + len(seg)] + 0.8 * seg
    return np.clip(audio, -1.0, 1.0)


def _write_wav(path: Path, audio: np.ndarray) -> None:
    with wave.open(str(path), 'wb') as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(_SAMPLE_RATE)
        f.writeframes((audio * 32767.0).astype('<i2').tobytes())


def _encode(path: Path, frames: Iterable[np.ndarray], size: tuple[int, int], fps: int, wav: Path | None) -> None:
    """H.264 (+ AAC) MP4, single-threaded and bitexact so that a seed always gives the same bytes.
    `frames` are (F, H, W, 3) blocks of `size` (width, height), piped in one after another, so that
    a long video never sits in memory whole."""
    w, h = size
    cmd = [ffmpeg_exe(), '-y', '-hide_banner', '-loglevel', 'error', '-nostdin',
           '-f', 'rawvideo', '-pix_fmt', 'rgb24', '-s', f'{w}x{h}', '-r', str(fps), '-i', 'pipe:0']
    if wav is not None:
        cmd += ['-i', str(wav)]
    cmd += ['-map', '0:v']
    if wav is not None:
        cmd += ['-map', '1:a', '-c:a', 'aac', '-b:a', '96k', '-flags:a', '+bitexact']
    cmd += ['-c:v', 'libx264', '-preset', 'veryfast', '-crf', '23', '-pix_fmt', 'yuv420p', '-threads', '1',
            '-g', str(fps), '-flags:v', '+bitexact', '-fflags', '+bitexact', '-map_metadata', '-1',
            '-movflags', '+faststart', str(path)]
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: ffmpeg never blocks on its messages
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        assert proc.stdin is not None
        try:
            for block in frames:
                proc.stdin.write(np.ascontiguousarray(block).tobytes())
        except BrokenPipeError:
            pass  # ffmpeg stopped early: its exit status and messages say why
        finally:
            proc.stdin.close()
        code = proc.wait()
        if code:
            err.seek(0)
            raise RuntimeError(f'ffmpeg failed on {path.name}: {err.read().decode(errors="replace")[-500:]}')


def _captions(facts: dict[str, Any], rng: np.random.Generator, speech_rng: np.random.Generator | None = None
              ) -> list[str]:
    """Five paraphrases, each naming the subject and some of the other facts; with speech, one of them
    (drawn from `speech_rng`, see `_plan`) says its words instead."""
    subj = SUBJECTS[facts['subject']][1]
    move = MOTIONS[facts['motion']]
    sound = {'low': 'a low tone', 'medium': 'a medium tone', 'high': 'a high tone', 'silent': 'silence'}
    sound_txt = sound[facts['tone']] if facts['audio'] else 'no sound'
    options = [
        f'the camera {move} over {subj}',
        f'{subj} while the camera {move}',
        f'{subj} with {sound_txt}',
        f'a video of {subj} and {sound_txt} as the camera {move}',
        f'{sound_txt} plays over a picture of {subj}' if facts['audio'] and facts['tone'] != 'silent'
        else f'a quiet video of {subj}',
    ]
    if facts['word']:
        options += [f'the word {facts["word"]} appears over {subj}', f'{subj} with the text {facts["word"]} on screen']
    picks = rng.permutation(len(options))[:5]
    chosen = [options[i] for i in sorted(picks)]
    if facts['speech'] and speech_rng is not None:
        spoken = [f'a voice says {facts["speech"]} over {subj}', f'someone says {facts["speech"]} while we see {subj}']
        chosen[int(speech_rng.integers(len(chosen)))] = spoken[int(speech_rng.integers(len(spoken)))]
    return chosen


def _plan(cfg: DemoCfg, can_speak: bool) -> list[dict[str, Any]]:
    """The facts of every video, all drawn from the seed."""
    rng = np.random.default_rng(cfg.seed)
    # speech draws from a stream of its own: whether espeak-ng is installed changes the spoken words and
    # their captions alone, not every later video's facts (with it, a machine made another demo, on
    # which a test of the demo found no video it needs)
    speech_rng = np.random.default_rng([cfg.seed, 1])
    subjects, motions, tones = list(SUBJECTS), list(MOTIONS), list(TONES)
    plan = []
    steps = int(round((cfg.max_duration - cfg.min_duration) / 0.2))
    for i in range(cfg.videos):
        duration = round(cfg.min_duration + 0.2 * int(rng.integers(0, steps + 1)), 1)
        audio = bool(rng.random() >= cfg.no_audio_rate)
        word = str(rng.choice(WORDS)) if rng.random() < cfg.word_rate else ''
        start = round(float(rng.uniform(0.1, 0.3)) * duration, 2)
        speech = str(speech_rng.choice(PHRASES)) if (audio and can_speak and speech_rng.random() < cfg.speech_rate) else ''
        facts = {
            'subject': subjects[i % len(subjects)] if i < len(subjects) else str(rng.choice(subjects)),
            'motion': str(rng.choice(motions)), 'tone': str(rng.choice(tones)) if audio else 'silent',
            'audio': audio, 'word': word, 'word_span': [start, round(min(duration, start + 0.5 * duration), 2)],
            'speech': speech, 'face': False, 'duration': duration,
        }
        facts['face'] = facts['subject'] == 'astronaut'
        facts['captions'] = _captions(facts, rng, speech_rng)
        plan.append(facts)
    return plan


def _stable_hash(text: str) -> int:
    """gensim seeds word vectors with `hashfxn`; Python's `hash` changes per process."""
    return zlib.crc32(text.encode('utf-8'))


def _train_word2vec(sentences: list[list[str]], cfg: DemoCfg, path: Path) -> None:
    from gensim.models import Word2Vec

    model = Word2Vec(sentences=sentences, vector_size=cfg.word_dim, window=5, min_count=1, workers=1,
                     seed=cfg.seed, epochs=40, hashfxn=_stable_hash, sg=1)
    model.wv.save_word2vec_format(str(path), binary=True)


def _tokens(text: str) -> list[str]:
    return [w.strip('.,!?').lower() for w in text.split() if w.strip('.,!?')]


def generate(out: Path, cfg: DemoCfg, progress: bool = True) -> Path:
    """Write the demo dataset under `out` (videos/, demo.json, word2vec.bin); returns the manifest path."""
    from tqdm import tqdm

    out = Path(out)
    (out / 'videos').mkdir(parents=True, exist_ok=True)
    can_speak = shutil.which('espeak-ng') is not None
    plan = _plan(cfg, can_speak)
    videos = []
    with tempfile.TemporaryDirectory(prefix='videoexperts-demo-') as tmp:
        work = Path(tmp)
        for i, facts in enumerate(tqdm(plan, desc='demo videos', unit='video', disable=not progress)):
            vid = f'demo{i:04d}'
            n_frames = int(round(facts['duration'] * cfg.fps))
            frames = _frames(facts, cfg, n_frames)
            wav = None
            if facts['audio']:
                speech = _espeak(facts['speech'], work) if facts['speech'] else None
                wav = work / 'audio.wav'
                _write_wav(wav, _audio(facts, facts['duration'], speech))
            path = out / 'videos' / f'{vid}.mp4'
            _encode(path, [frames], (cfg.width, cfg.height), cfg.fps, wav)
            videos.append({'id': vid, 'file': f'videos/{vid}.mp4', 'frames': n_frames, 'fps': cfg.fps,
                           'width': cfg.width, 'height': cfg.height, **facts,
                           'sha256': hashlib.sha256(path.read_bytes()).hexdigest()})
    rng = np.random.default_rng(cfg.seed + 1)
    order = [v['id'] for v in videos]
    order = [order[i] for i in rng.permutation(len(order))]
    n_train, n_val, _ = split_sizes(len(order), cfg.split)
    splits = {'train': sorted(order[:n_train]), 'val': sorted(order[n_train:n_train + n_val]),
              'test': sorted(order[n_train + n_val:])}
    sentences = [_tokens(c) for v in videos for c in v['captions']]
    sentences += [list(WORDS), [w for p in PHRASES for w in p.split()], [s for s in SUBJECTS]]
    _train_word2vec(sentences, cfg, out / WORD2VEC_FILE)
    manifest = {'generator_version': GENERATOR_VERSION, 'config': dataclasses.asdict(cfg),
                'espeak': can_speak, 'word2vec': WORD2VEC_FILE, 'videos': videos, 'splits': splits}
    return _write_json(out / MANIFEST_FILE, manifest)


def _write_json(path: Path, data: Any) -> Path:
    """`data` as sorted, indented JSON (the same bytes for the same data); returns `path`."""
    buf = io.StringIO()
    json.dump(data, buf, indent=1, sort_keys=True)
    path.write_text(buf.getvalue() + '\n', encoding='utf-8')
    return path


@dataclasses.dataclass(frozen=True)
class NarratedCfg:
    """How the narrated set is generated (`generate_narrated`); defaults are what `make demo-pretrain` uses.

    Args:
        videos: number of videos.
        seed: all randomness comes from this.
        min_duration, max_duration: seconds; each video's length is drawn in between and filled with
            whole scenes.
        scene: how each scene is drawn and encoded, as one demo video (its `videos` and `seed` are
            not used: the scenes are drawn from `seed`).
    """

    videos: int = 24
    seed: int = 0
    min_duration: float = 30.0
    # the short end of HowTo100M-like 30-90 s (about 14 minutes of video in all): extracting the set is
    # most of what `make demo-pretrain` waits for on a CPU
    max_duration: float = 42.0
    scene: DemoCfg = DemoCfg()

    def __post_init__(self) -> None:
        if self.videos < 1:
            raise ValueError('the narrated set needs at least 1 video')
        if not self.scene.max_duration <= self.min_duration <= self.max_duration - self.scene.max_duration:
            raise ValueError(f'narrated durations must satisfy scene.max_duration ({self.scene.max_duration}) <= '
                             f'min_duration <= max_duration - scene.max_duration')


#: how an ASR segment of the narration opens (HowTo100M's narrators talk, they do not caption)
_FILLERS = ('so', 'now', 'okay so', 'and here', 'next', 'alright now', 'and then')


def _narrated_plan(cfg: NarratedCfg, can_speak: bool) -> list[list[dict[str, Any]]]:
    """Each video's scenes: demo facts, plus the scene's `start` second and its `narration`."""
    rng = np.random.default_rng([cfg.seed, 22])
    n_scenes = int(np.ceil(cfg.videos * cfg.max_duration / cfg.scene.min_duration))
    scenes = iter(_plan(dataclasses.replace(cfg.scene, videos=n_scenes, seed=cfg.seed), can_speak))
    fps = cfg.scene.fps
    plan = []
    for _ in range(cfg.videos):
        target = float(rng.uniform(cfg.min_duration, cfg.max_duration - cfg.scene.max_duration))
        video: list[dict[str, Any]] = []
        frames = 0
        while frames < target * fps:
            facts = next(scenes)
            caps = facts['captions']
            a, b = sorted(rng.choice(len(caps), 2, replace=False))
            # two of the scene's captions, said as one ASR segment: the same content as the demo's captions
            video.append({**facts, 'start': frames / fps,
                          'narration': f'{rng.choice(_FILLERS)} {caps[a]} and {caps[b]}'})
            frames += int(round(facts['duration'] * fps))
        plan.append(video)
    return plan


def generate_narrated(out: Path, cfg: NarratedCfg, progress: bool = True) -> Path:
    """Write the narrated set under `out` in HowTo100M's own files (the `howto100m` adapter reads
    it): HowTo100M_v1.csv, caption.json (stop words removed), raw_caption.json and videos/{id}.mp4,
    each video a sequence of demo scenes with one timed ASR-like caption per scene, spoken by
    espeak-ng when it is installed; narrated.json records the facts. Returns narrated.json's path."""
    from tqdm import tqdm

    from shared.text import remove_stop_words

    out = Path(out)
    (out / 'videos').mkdir(parents=True, exist_ok=True)
    can_speak = shutil.which('espeak-ng') is not None
    sc = cfg.scene
    videos, raw, rows = [], {}, ['video_id,category_1,category_2,rank,task_id']
    with tempfile.TemporaryDirectory(prefix='videoexperts-narrated-') as tmp:
        work = Path(tmp)
        for i, scenes in enumerate(tqdm(_narrated_plan(cfg, can_speak), desc='narrated videos', unit='video',
                                        disable=not progress)):
            vid = f'narrated{i:04d}'
            audio = [_audio(f, f['duration'], _espeak(f['narration'], work) if can_speak else None) for f in scenes]
            wav = work / 'audio.wav'
            _write_wav(wav, np.concatenate(audio))
            path = out / 'videos' / f'{vid}.mp4'
            blocks = (_frames(f, sc, int(round(f['duration'] * sc.fps))) for f in scenes)  # a scene at a time
            _encode(path, blocks, (sc.width, sc.height), sc.fps, wav)
            ends = [round(f['start'] + f['duration'], 2) for f in scenes]
            raw[vid] = {'start': [round(f['start'], 2) for f in scenes], 'end': ends,
                        'text': [f['narration'] for f in scenes]}
            rows.append(f'{vid},Demo,{scenes[0]["subject"]},{i + 1},{22000 + i}')
            videos.append({'id': vid, 'duration': ends[-1], 'scenes': scenes,
                           'sha256': hashlib.sha256(path.read_bytes()).hexdigest()})
    (out / 'HowTo100M_v1.csv').write_text('\n'.join(rows) + '\n', encoding='utf-8')
    _write_json(out / 'raw_caption.json', raw)
    _write_json(out / 'caption.json', {v: {**c, 'text': [remove_stop_words(t) for t in c['text']]}
                                       for v, c in raw.items()})
    return _write_json(out / NARRATED_FILE, {'generator_version': GENERATOR_VERSION,
                                             'config': dataclasses.asdict(cfg), 'espeak': can_speak, 'videos': videos})


@dataclasses.dataclass(frozen=True)
class DemoImagesCfg:
    """How the still-image set (`generate_images`) is generated; defaults are what `make demo-data` writes.

    Args:
        per_photo: train/val/test images of each photo (the defaults: 4 stills of each of the 10
            photos, 40 in all, few and small so that extracting them takes seconds).
        seed: all randomness comes from this.
        width, height: image size (a demo video's frame size: the stills look like its frames).
        word_rate: share of images with a word on them.
        quality: JPEG quality.
    """

    per_photo: tuple[int, int, int] = (2, 1, 1)
    seed: int = 0
    width: int = 320
    height: int = 240
    word_rate: float = 0.5
    quality: int = 90

    def __post_init__(self) -> None:
        if len(self.per_photo) != 3 or min(self.per_photo) < 0 or self.per_photo[0] < 1 or self.per_photo[2] < 1:
            raise ValueError('per_photo gives train, val, test images of each photo: train and test at least 1')
        if not 1 <= self.quality <= 95:
            raise ValueError('quality must be within 1-95 (JPEG)')


def _image_captions(facts: dict[str, Any], rng: np.random.Generator) -> list[str]:
    """Five paraphrases naming the photo's subject and the word on it, in words of the demo videos'
    captions (so the demo's word2vec knows them all; a still has no sound, as in MEE sec. 3)."""
    subj = SUBJECTS[facts['subject']][1]
    options = [f'a picture of {subj}', f'a quiet picture of {subj}', f'{subj} on screen',
               f'a picture of {subj} on screen', f'{subj} with no sound']
    if not facts['word']:
        return options
    word = facts['word']
    worded = [f'the word {word} appears over {subj}', f'{subj} with the text {word} on screen',
              f'a picture of {subj} and the word {word}']
    # three plain captions and two naming the word: the word on a still is always in its captions
    return [options[i] for i in sorted(rng.permutation(len(options))[:3])] + [
        worded[i] for i in sorted(rng.permutation(len(worded))[:2])]


def _images_plan(cfg: DemoImagesCfg) -> list[dict[str, Any]]:
    """The facts and split part of every still: `sum(per_photo)` of each photo, each framed as the
    frame at `position` (0-1) of a camera `motion` of the demo videos, all drawn from the seed."""
    rng = np.random.default_rng([cfg.seed, 23])  # a stream of its own: the videos' draws are untouched
    parts = [p for p, n in zip(('train', 'val', 'test'), cfg.per_photo) for _ in range(n)]
    plan = []
    for subject in SUBJECTS:
        for part in (parts[i] for i in rng.permutation(len(parts))):
            facts = {'subject': subject, 'motion': str(rng.choice(list(MOTIONS))),
                     'position': round(float(rng.uniform(0.0, 1.0)), 2),
                     'word': str(rng.choice(WORDS)) if rng.random() < cfg.word_rate else '',
                     'face': subject == 'astronaut', 'part': part}
            facts['captions'] = _image_captions(facts, rng)
            plan.append(facts)
    return plan


def generate_images(out: Path, cfg: DemoImagesCfg) -> Path:
    """Write the still-image set under `out` (images/image{N}.jpg, demo_images.json: each image's
    facts, its photo as `subject`, captions, splits); returns demo_images.json's path."""
    out = Path(out)
    (out / 'images').mkdir(parents=True, exist_ok=True)
    size = (cfg.width, cfg.height)
    canvases: dict[str, Any] = {}
    images = []
    for i, facts in enumerate(_images_plan(cfg)):
        vid = f'image{i:04d}'
        if facts['subject'] not in canvases:
            canvases[facts['subject']] = _subject_image(facts['subject'], *size)
        still = _view(canvases[facts['subject']], facts['subject'], facts['motion'], facts['position'], size)
        if facts['word']:
            _paste_word(still, _word_overlay(facts['word'], cfg.height))
        path = out / 'images' / f'{vid}.jpg'
        still.save(path, 'JPEG', quality=cfg.quality)
        images.append({'id': vid, 'file': f'images/{vid}.jpg', 'width': cfg.width, 'height': cfg.height, **facts,
                       'sha256': hashlib.sha256(path.read_bytes()).hexdigest()})
    splits = {part: [im['id'] for im in images if im['part'] == part] for part in ('train', 'val', 'test')}
    return _write_json(out / IMAGES_FILE, {'generator_version': GENERATOR_VERSION, 'config': dataclasses.asdict(cfg),
                                           'images': images, 'splits': splits})


def _generated_manifest(root: Path, name: str, file: str, key: str, how: str) -> Manifest:
    """The manifest of a generated demo set: `file`'s `key` items (id, file, captions, subject) and
    its splits; each item's photo is its class (the action-recognition probe's test, and which
    photo a demo still shows)."""
    path, = require_files(root, (file,), f'{name} manifest', f'generate it first: {how} --out {root}')
    try:
        data = read_json(path, f'a {name} manifest')
        items = data[key]
        ids = tuple(v['id'] for v in items)
        paths = tuple(resolve_inside(root, v['file']) for v in items)
        captions = {v['id']: tuple(v['captions']) if isinstance(v['captions'], list) else v['captions']
                    for v in items}  # anything but a list is refused by Manifest, naming the video
        parts = data['splits']
        split = Split('official', tuple(parts['train']), tuple(parts['val']), tuple(parts['test']))
    except (KeyError, TypeError) as err:
        raise DatasetError(f'{path}: not a {name} manifest ({err!r})') from None
    return Manifest(name, root, ids, paths, captions, {'official': split},
                    labels={v['id']: str(v['subject']) for v in items if 'subject' in v})


@DATASETS.register()
def demo(root: Path, hold_out_photo: str = '') -> Manifest:
    """Manifest of a generated demo dataset (``{data_root}/demo/demo.json``).

    Args:
        hold_out_photo: a demo photo (a key of `SUBJECTS`, e.g. ``astronaut``) whose videos leave the
            training part; validation and test keep them. Its captions then reach training only through
            another source, such as the demo's still images (``data.extra``): MEE's claim that images
            teach what the training videos lack (sec. 4.2), tested in miniature.
    """
    manifest = _generated_manifest(root, 'demo', MANIFEST_FILE, 'videos', 'python -m shared.datasets.demo')
    if not hold_out_photo:
        return manifest
    if hold_out_photo not in SUBJECTS:
        raise DatasetError(f'demo option hold_out_photo={hold_out_photo!r}: not a demo photo; give one of '
                           f'{", ".join(SUBJECTS)}')
    split = manifest.splits['official']
    train = tuple(v for v in split.train if manifest.labels.get(v) != hold_out_photo)
    return dataclasses.replace(manifest, splits={split.name: dataclasses.replace(split, train=train)})


@DATASETS.register()
def demo_images(root: Path) -> Manifest:
    """Manifest of the demo's still images (``{data_root}/demo_images/demo_images.json``); `labels`
    says which photo each image shows."""
    return _generated_manifest(root, 'demo_images', IMAGES_FILE, 'images', 'python -m shared.datasets.demo --images')


def split_sizes(videos: int, shares: tuple[float, float, float]) -> tuple[int, int, int]:
    """The train, val and test counts of `videos` demo videos split by `shares` (as `generate` splits them)."""
    n_train = max(1, int(round(shares[0] * videos)))
    n_val = min(max(1, int(round(shares[1] * videos))), videos - n_train - 1)
    return n_train, n_val, videos - n_train - n_val


def main(argv: list[str] | None = None) -> int:
    """CLI: generate the demo dataset, or with ``--narrated`` the narrated set (HowTo100M's files), or
    with ``--images`` the still-image set."""
    d, n = DemoCfg(), NarratedCfg()
    parser = argparse.ArgumentParser(prog='python -m shared.datasets.demo', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n\n')[2] + '\n    python -m shared.datasets.demo --narrated '
                                     '--out data/narrated/howto100m')
    parser.add_argument('--out', type=Path,
                        help='output directory (default: data/demo; with --images data/demo_images)')
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument('--narrated', action='store_true',
                      help='write the narrated set in HowTo100M\'s files instead (for make demo-pretrain), e.g. '
                           '--out data/narrated/howto100m')
    kind.add_argument('--images', action='store_true',
                      help='write the still-image set instead (dataset demo_images: JPEG stills of the demo photos '
                           'with captions)')
    parser.add_argument('--videos', type=int, help=f'number of videos (default: {d.videos}; narrated {n.videos})')
    parser.add_argument('--seed', type=int, help=f'random seed (default: {d.seed})')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    args = parser.parse_args(argv)
    if args.images and args.videos is not None:
        parser.error('--videos does not apply to --images (4 stills of each demo photo)')
    args.out = args.out or Path('data/demo_images' if args.images else 'data/demo')
    given = {k: v for k, v in (('videos', args.videos), ('seed', args.seed)) if v is not None}
    if args.images:
        path = generate_images(args.out, DemoImagesCfg(**given))
        data = json.loads(path.read_text(encoding='utf-8'))
        print(f'wrote {len(data["images"])} images of {len({im["subject"] for im in data["images"]})} photos and '
              f'{path}; splits ' + ', '.join(f'{k} {len(data["splits"][k])}' for k in ('train', 'val', 'test')))
        return 0
    try:
        cfg = NarratedCfg(**given) if args.narrated else DemoCfg(**given)
    except ValueError as err:
        parser.error(str(err))
    if isinstance(cfg, NarratedCfg):
        path = generate_narrated(args.out, cfg, progress=not args.quiet)
        data = json.loads(path.read_text(encoding='utf-8'))
        seconds = sum(v['duration'] for v in data['videos'])
        print(f'wrote {len(data["videos"])} narrated videos ({seconds / 60:.1f} minutes, '
              f'{sum(len(v["scenes"]) for v in data["videos"])} timed captions) in HowTo100M\'s files under {args.out}'
              + ('' if data['espeak'] else '; narration not spoken (espeak-ng not installed)'))
        return 0
    path = generate(args.out, cfg, progress=not args.quiet)
    data = json.loads(path.read_text(encoding='utf-8'))
    n_videos = len(data['videos'])
    speech = sum(bool(v['speech']) for v in data['videos'])
    print(f'wrote {n_videos} videos, {path} and {args.out / WORD2VEC_FILE}; splits '
          + ', '.join(f'{k} {len(v)}' for k, v in data['splits'].items())
          + (f'; {speech} with speech' if data['espeak'] else '; no speech (espeak-ng not installed)'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
