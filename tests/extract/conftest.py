"""Fixtures for the extract tests: a directory of bad and unusual files made with real FFmpeg."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from shared.media import ffmpeg_exe

#: tiny expert settings so that random-weight models run fast on a CPU
TINY = ['--set', 'resize=[40]', '--set', 'input_size=32', '--set', 'clip_len=6', '--weights', 'random']


def _ff(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), '-y', '-v', 'error', *args], check=True, capture_output=True)


@pytest.fixture(scope='session')
def odd_videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Files every decoder meets in real collections, with what each should give.

    `$VIDEOEXPERTS_ODD_VIDEOS` names a folder made by `make_odd_videos` beforehand, for machines
    without FFmpeg (the GPU host of the NVDEC tests).
    """
    ready = os.environ.get('VIDEOEXPERTS_ODD_VIDEOS')
    if ready:
        return Path(ready)
    return make_odd_videos(tmp_path_factory.mktemp('odd'))


def make_odd_videos(d: Path) -> Path:
    src = ['-f', 'lavfi', '-i', 'testsrc2=size=320x240:rate=25:duration=2']
    tone = ['-f', 'lavfi', '-i', 'sine=frequency=440:duration=2']
    _ff(*src, *tone, '-c:v', 'libx264', '-pix_fmt', 'yuv420p', '-c:a', 'aac', '-shortest', str(d / 'good.mp4'))
    (d / 'zero.mp4').write_bytes(b'')
    data = (d / 'good.mp4').read_bytes()
    (d / 'truncated.mp4').write_bytes(data[: len(data) // 3])
    at = int(len(data) * 0.4)  # 4 KB of junk inside the video data: decord gives up there, FFmpeg conceals it
    (d / 'corrupt.mp4').write_bytes(data[:at] + bytes(range(256)) * 16 + data[at + 4096:])
    (d / 'text.mp4').write_text('this is not a video\n' * 20)
    _ff('-f', 'lavfi', '-i', 'testsrc2=size=320x240:rate=25', '-frames:v', '1', '-c:v', 'libx264', '-pix_fmt',
        'yuv420p', str(d / 'one_frame.mp4'))
    _ff('-display_rotation', '90', '-i', str(d / 'good.mp4'), '-c', 'copy', str(d / 'rotated.mp4'))
    _ff(*src, '-vf', "setpts='if(lt(N,25),N/25,1+(N-25)/10)/TB'", '-fps_mode', 'vfr', '-c:v', 'libx264',
        '-pix_fmt', 'yuv420p', str(d / 'vfr.mp4'))
    _ff(*src, '-c:v', 'libx265', '-pix_fmt', 'yuv420p', '-x265-params', 'log-level=error', str(d / 'hevc.mp4'))
    _ff(*src, '-c:v', 'libvpx-vp9', '-b:v', '200k', str(d / 'vp9.webm'))
    _ff(*src, '-c:v', 'mpeg4', str(d / 'mpeg4.avi'))
    _ff('-f', 'lavfi', '-i', 'testsrc2=size=321x241:rate=25:duration=2', '-c:v', 'libx264', '-pix_fmt', 'yuv444p',
        str(d / 'odd_size.mp4'))
    _ff(*src, '-an', '-c:v', 'libx264', '-pix_fmt', 'yuv420p', str(d / 'no_audio.mp4'))
    # H.264 in MPEG-TS, as from a broadcast or a camera: valid, but decord fails on reading its frames
    _ff(*src, '-c:v', 'libx264', '-pix_fmt', 'yuv420p', str(d / 'mpegts.ts'))
    _ff(*tone, '-c:a', 'aac', str(d / 'audio_only.mp4'))
    # MPEG-2 program stream at 30 fps and the default 200 kbit/s: decord gives its first 6 frames no time
    _ff('-f', 'lavfi', '-i', 'testsrc2=size=320x240:rate=30:duration=2', '-c:v', 'mpeg2video', str(d / 'mpeg2.mpg'))
    try:  # AV1, as YouTube serves it: decord 0.6 does not open it (an FFmpeg without the encoder skips it)
        _ff(*src, '-c:v', 'libaom-av1', '-cpu-used', '8', '-b:v', '200k', str(d / 'av1.mp4'))
    except subprocess.CalledProcessError:
        pass
    return d
