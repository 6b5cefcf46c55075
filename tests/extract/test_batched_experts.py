"""Face and OCR over several videos at once (`process_batch`) give the rows that each video gets
alone, and the rows of the per-video code they replace: real FFmpeg-made videos of different
sizes and lengths, decoded by `extract.decode`, MTCNN and RapidOCR with the models in their
wheels, easyocr's own networks built here with random weights."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from extract.decode import decode_video
from extract.experts import create_expert
from extract.experts._base import VideoInput
from extract.experts._batching import frame_batches
from shared.media import ffmpeg_exe
from shared.store import VideoResult


def _slideshow(path: Path, images: list[np.ndarray], width: int, height: int) -> Path:
    """A 25-fps video showing each image for one second, resized to width x height."""
    from PIL import Image

    frames = [np.asarray(Image.fromarray(im).convert('RGB').resize((width, height), Image.BILINEAR)) for im in images]
    raw = np.stack([f for f in frames for _ in range(25)])
    subprocess.run([ffmpeg_exe(), '-y', '-v', 'error', '-f', 'rawvideo', '-pix_fmt', 'rgb24', '-s', f'{width}x{height}',
                    '-r', '25', '-i', 'pipe:0', '-c:v', 'libx264', '-pix_fmt', 'yuv420p', str(path)],
                   input=raw.tobytes(), check=True)
    return path


def _inputs(expert, paths: list[Path]) -> list[VideoInput]:
    """Each video's rows as the runner gives them to a per-video expert."""
    out = []
    for path in paths:
        decoded = decode_video(0, str(path), {expert.name: expert.cfg.sampling_spec()})
        assert not decoded.error, decoded.error
        plan = decoded.plans[expert.name]
        out.append(VideoInput(frames=decoded.frames[plan.index[:, 0]], timestamps=plan.timestamps))
    return out


def _assert_same(got: list[VideoResult], want: list[VideoResult], atol: float = 1e-5) -> None:
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert (a.status, a.available, a.error) == (b.status, b.available, b.error), i
        assert a.features.shape == b.features.shape, i
        np.testing.assert_allclose(a.features, b.features, atol=atol, err_msg=f'video {i}')
        np.testing.assert_array_equal(a.timestamps, b.timestamps, err_msg=f'video {i}')
        assert a.tokens == b.tokens, i


def test_frame_batches_group_by_size_and_keep_order() -> None:
    sizes = [(3, 4, 5), (2, 6, 5), (4, 4, 5), (0, 4, 5), (1, 6, 5)]
    frames = [np.full((n, h, w, 3), v, np.uint8) for v, (n, h, w) in enumerate(sizes)]
    seen = []
    for batch, video, row in frame_batches(frames, 3):
        assert len(batch) <= 3 and len({f.shape for f in batch}) == 1
        assert (batch[:, 0, 0, 0] == video).all()
        seen += list(zip(video.tolist(), row.tolist()))
    assert sorted(seen) == [(v, r) for v, (n, _, _) in enumerate(sizes) for r in range(n)]
    # within a size: video order, then row order
    assert [vr for vr in seen if sizes[vr[0]][1:] == (4, 5)] == [(0, 0), (0, 1), (0, 2), (2, 0), (2, 1), (2, 2), (2, 3)]


# ----------------------------------------------------------------------------------------- face

def _faces_one_video(expert, x: VideoInput) -> VideoResult:
    """The face expert's rows before batching (MTCNN.forward on one video's frames), written out."""
    faces, probs = expert.mtcnn(list(x.frames), return_prob=True)
    crops, stamps = [], []
    for frame_faces, frame_probs, stamp in zip(faces, probs, x.timestamps):
        if frame_faces is None:
            continue
        keep = np.asarray(frame_probs, np.float64) >= expert.cfg.min_prob
        for face in frame_faces[torch.from_numpy(keep)]:
            crops.append(face)
            stamps.append(stamp)
    crops, stamps = crops[: expert.cfg.max_rows], stamps[: expert.cfg.max_rows]
    if not crops:
        return VideoResult(np.zeros((0, 512), np.float32), np.zeros((0, 2), np.float32), available=False)
    with torch.inference_mode():
        feats = expert.model(torch.stack(crops)).float().numpy()
    return VideoResult(feats, np.stack(stamps).astype(np.float32))


@pytest.fixture(scope='module')
def face_videos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    import skimage.data

    d = tmp_path_factory.mktemp('faces')
    face, other = skimage.data.astronaut(), skimage.data.coffee()
    mirrored = np.ascontiguousarray(face[:, ::-1])
    return [_slideshow(d / 'a.mp4', [face, other, mirrored], 320, 320),
            _slideshow(d / 'b.mp4', [face], 256, 192),
            _slideshow(d / 'c.mp4', [other, other], 320, 240),
            _slideshow(d / 'd.mp4', [mirrored, face], 320, 320)]


@pytest.mark.slow
def test_face_batched_rows_equal_per_video_rows(face_videos: list[Path]) -> None:
    # 3 frames per MTCNN pass: passes mix videos a and d (both 300x300 once decoded) and split them
    expert = create_expert('face', weights='random', detect_batch=3, batch_size=4).load('cpu')
    inputs = _inputs(expert, face_videos)
    assert [x.frames.shape[:3] for x in inputs] == [(3, 300, 300), (1, 192, 256), (2, 240, 320), (2, 300, 300)]
    batched = expert.process_batch(inputs)
    _assert_same(batched, [expert.process(x) for x in inputs])
    _assert_same(batched, [_faces_one_video(expert, x) for x in inputs], atol=1e-4)
    assert [len(r.features) > 0 for r in batched] == [True, True, False, True]
    # the astronaut's frames only (0 and 2 in a), at their own times
    assert {float(s) for s in batched[0].timestamps[:, 0]} == {float(inputs[0].timestamps[k, 0]) for k in (0, 2)}
    # max_rows cuts each video's rows in frame order, as before
    one = create_expert('face', weights='random', detect_batch=3, batch_size=4, max_rows=1).load('cpu')
    _assert_same(one.process_batch(inputs), [_faces_one_video(one, x) for x in inputs], atol=1e-4)
