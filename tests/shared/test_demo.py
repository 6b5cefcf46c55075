"""The demo generator: real FFmpeg files that FFmpeg and decord open, deterministic for a seed."""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from shared.datasets import load_manifest
from shared.datasets.demo import MANIFEST_FILE, WORD2VEC_FILE, DemoCfg, generate
from shared.media import MediaError, probe


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob('*')) if p.is_file()}


def test_videos_have_the_promised_streams_and_durations(small_demo: Path) -> None:
    data = json.loads((small_demo / MANIFEST_FILE).read_text())
    assert len(data['videos']) == 8
    assert any(not v['audio'] for v in data['videos']) and any(v['audio'] for v in data['videos'])
    for v in data['videos']:
        info = probe(small_demo / v['file'])
        assert info.video_codec == 'h264' and (info.width, info.height) == (v['width'], v['height'])
        assert info.fps == v['fps']
        assert abs(info.duration - v['duration']) < 0.1, (v['id'], info.duration, v['duration'])
        if v['audio']:
            assert info.audio_codec == 'aac' and info.sample_rate == 48000
        else:
            assert not info.has_audio


def test_videos_decode_with_decord(small_demo: Path) -> None:
    import decord

    data = json.loads((small_demo / MANIFEST_FILE).read_text())
    for v in data['videos']:
        vr = decord.VideoReader(str(small_demo / v['file']))
        assert len(vr) == v['frames'] == round(v['duration'] * v['fps'])
        assert abs(vr.get_avg_fps() - v['fps']) < 1e-3
        frame = vr[len(vr) // 2].asnumpy()
        assert frame.shape == (v['height'], v['width'], 3) and frame.std() > 3  # a picture, not a flat frame


def test_manifest_captions_splits_and_word_vectors(small_demo: Path) -> None:
    from gensim.models import KeyedVectors

    m = load_manifest('demo', small_demo.parent)
    s = m.split('official')
    assert sorted(s.train + s.val + s.test) == sorted(m.video_ids) and len(s.test) >= 1 and len(s.val) >= 1
    assert all(len(m.captions[v]) == 5 for v in m.video_ids)
    data = json.loads((small_demo / MANIFEST_FILE).read_text())
    for v in data['videos']:
        noun = {'astronaut': 'astronaut', 'cat': 'cat', 'coffee': 'coffee', 'rocket': 'rocket', 'coins': 'coins',
                'moon': 'moon', 'horse': 'horse', 'clock': 'clock', 'galaxies': 'galaxies', 'cells': 'cells'}
        assert all(noun[v['subject']] in c for c in v['captions'])  # every paraphrase names the subject
        assert v['face'] == (v['subject'] == 'astronaut')
    kv = KeyedVectors.load_word2vec_format(str(small_demo / WORD2VEC_FILE), binary=True)
    assert kv.vector_size == 300 and {'astronaut', 'camera', 'river', 'tone'} <= set(kv.key_to_index)
    assert np.isfinite(kv.vectors).all()


def test_words_on_screen_and_tone_pitch(small_demo: Path, tmp_path: Path) -> None:
    """The word overlay appears only during its span and the tone has the promised pitch."""
    import decord
    from shared.media import ffmpeg_exe

    data = json.loads((small_demo / MANIFEST_FILE).read_text())
    v = next(x for x in data['videos'] if x['word'] and x['audio'] and x['tone'] != 'silent')
    vr = decord.VideoReader(str(small_demo / v['file']))
    t0, t1 = v['word_span']
    inside = vr[int((t0 + t1) / 2 * v['fps'])].asnumpy()
    outside = vr[max(0, int(t0 * v['fps']) - 3)].asnumpy()
    white = lambda f: (f.min(axis=-1) > 235).mean()  # noqa: E731 - the label box is white
    assert white(inside) > white(outside) + 0.02
    pcm = subprocess.run([ffmpeg_exe(), '-v', 'error', '-i', str(small_demo / v['file']), '-f', 'f32le', '-ac', '1',
                          '-ar', '16000', 'pipe:1'], capture_output=True, check=True).stdout
    audio = np.frombuffer(pcm, np.float32)
    spectrum = np.abs(np.fft.rfft(audio[4000:20000]))
    peak = np.fft.rfftfreq(16000, 1 / 16000)[spectrum.argmax()]
    assert abs(peak - {'low': 220, 'medium': 440, 'high': 880}[v['tone']]) < 5


@pytest.mark.slow
def test_same_seed_same_bytes(tmp_path: Path, small_demo: Path) -> None:
    cfg = DemoCfg(videos=8, seed=7, no_audio_rate=0.5, word_rate=0.75, min_duration=2.0, max_duration=3.0)
    generate(tmp_path / 'again', cfg, progress=False)
    assert _digest(tmp_path / 'again') == _digest(small_demo)
    generate(tmp_path / 'other', DemoCfg(videos=8, seed=8, no_audio_rate=0.5, word_rate=0.75, min_duration=2.0,
                                         max_duration=3.0), progress=False)
    assert _digest(tmp_path / 'other') != _digest(small_demo)


def test_cli_and_bad_input(tmp_path: Path, python: str, subprocess_env: dict, repo_root: Path) -> None:
    out = subprocess.run([python, '-m', 'shared.datasets.demo', '--out', str(tmp_path / 'd'), '--videos', '3',
                          '--quiet'], capture_output=True, text=True, env=subprocess_env, cwd=repo_root)
    assert out.returncode == 0, out.stderr
    assert 'wrote 3 videos' in out.stdout and len(list((tmp_path / 'd' / 'videos').glob('*.mp4'))) == 3
    bad = subprocess.run([python, '-m', 'shared.datasets.demo', '--out', str(tmp_path / 'e'), '--videos', '1'],
                         capture_output=True, text=True, env=subprocess_env, cwd=repo_root)
    assert bad.returncode == 2 and 'at least 3 videos' in bad.stderr
    (tmp_path / 'junk.mp4').write_text('not a video')
    with pytest.raises(MediaError):
        probe(tmp_path / 'junk.mp4')


def test_espeak_changes_the_spoken_words_alone() -> None:
    """With espeak-ng installed the plan drew its speech from the one stream of every fact, so every
    later video differed from a machine without it, and a test of the demo found no video it needs."""
    from shared.datasets.demo import _plan

    cfg = DemoCfg(videos=24, seed=0)
    plain, spoken = _plan(cfg, can_speak=False), _plan(cfg, can_speak=True)
    assert any(f['speech'] for f in spoken) and not any(f['speech'] for f in plain)
    for a, b in zip(plain, spoken):
        assert {k: v for k, v in a.items() if k not in ('speech', 'captions')} == \
               {k: v for k, v in b.items() if k not in ('speech', 'captions')}
        if not b['speech']:
            assert a['captions'] == b['captions']
        else:  # one of its five captions says the words
            assert sum(x != y for x, y in zip(a['captions'], b['captions'])) <= 1
            assert any(b['speech'] in c for c in b['captions'])
