"""Face and OCR over several videos at once (`process_batch`) give the rows that each video gets
alone, and the rows of the per-video code they replace: real FFmpeg-made videos of different
sizes and lengths, decoded by `extract.decode`, MTCNN and RapidOCR with the models in their
wheels, easyocr's own networks built here with random weights."""
from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from extract.decode import decode_video
from extract.experts import create_expert
from extract.experts._base import VideoInput
from extract.experts._easyocr import random_reader
from extract.experts._batching import frame_batches
from shared.media import ffmpeg_exe
from shared.store import VideoResult
from shared.text import load_word_vectors


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
    # videos that do not fill a batch share one, never past the limit (MTCNN's and CRAFT's memory)
    short = [np.full((2, 4, 5, 3), v, np.uint8) for v in range(3)]
    assert [row.tolist() for _, _, row in frame_batches(short, 3)] == [[0, 1, 0], [1, 0, 1]]


# ----------------------------------------------------------------------------------------- face

def _faces_one_video(expert, x: VideoInput) -> VideoResult:
    """The face expert's rows written out from facenet's reference pipeline, one video alone:
    MTCNN on each frame shrunk to the expert's size as a PIL image, then each kept box scaled back
    and cropped from the native frame's PIL image (its bilinear crop) with `fixed_image_standardization`."""
    from facenet_pytorch.models.mtcnn import fixed_image_standardization
    from facenet_pytorch.models.utils.detect_face import extract_face
    from PIL import Image

    small = expert.own_frames(x.frames)
    crops, stamps = [], []
    for frame, shrunk, stamp in zip(x.frames, small, x.timestamps):
        boxes, probs = expert.mtcnn.detect(Image.fromarray(shrunk))
        if boxes is None:
            continue
        scale = np.array([frame.shape[1] / shrunk.shape[1], frame.shape[0] / shrunk.shape[0]] * 2)
        for box in boxes[np.asarray(probs, np.float64) >= expert.cfg.min_prob]:
            crops.append(fixed_image_standardization(extract_face(Image.fromarray(frame), box * scale, 160,
                                                                  expert.cfg.margin)))
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
    # 3 frames per MTCNN pass: passes mix videos a and d (both 320x320 native, 300x300 once shrunk) and split them
    expert = create_expert('face', weights='random', detect_batch=3, batch_size=4).load('cpu')
    inputs = _inputs(expert, face_videos)
    assert [x.frames.shape[:3] for x in inputs] == [(3, 320, 320), (1, 192, 256), (2, 240, 320), (2, 320, 320)]
    # d's rows at other times than a's, its batch-mate: each face keeps its own video's time
    inputs[3] = dataclasses.replace(inputs[3], timestamps=inputs[3].timestamps + 60.0)
    batched = expert.process_batch(inputs)
    _assert_same(batched, [expert.process(x) for x in inputs])
    _assert_same(batched, [_faces_one_video(expert, x) for x in inputs], atol=1e-4)
    assert [len(r.features) > 0 for r in batched] == [True, True, False, True]
    # the astronaut's frames only (0 and 2 in a), at their own times
    assert {float(s) for s in batched[0].timestamps[:, 0]} == {float(inputs[0].timestamps[k, 0]) for k in (0, 2)}
    # max_rows cuts each video's rows in frame order, as before, also inside a frame: a face beside
    # the coffee, then two faces side by side
    two = VideoInput(frames=np.concatenate([inputs[0].frames[[0, 0]], inputs[0].frames[[1, 2]]], axis=2),
                     timestamps=inputs[0].timestamps[:2])
    assert len(expert.process(two).features) == 3
    cut = create_expert('face', weights='random', detect_batch=3, batch_size=4, max_rows=2).load('cpu')
    _assert_same(cut.process_batch([*inputs, two]), [_faces_one_video(cut, x) for x in [*inputs, two]], atol=1e-4)


# ------------------------------------------------------------------------------------------ ocr

def _text_frame(words: str, width: int, height: int, at: tuple[int, int], size: int) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new('RGB', (width, height), 'white')
    ImageDraw.Draw(img).text(at, words, fill='black', font=ImageFont.load_default(size=size))
    return np.asarray(img)


def _word2vec(path: Path, words: list[str], dim: int = 8) -> Path:
    from gensim.models import Word2Vec

    model = Word2Vec([words] * 20, vector_size=dim, min_count=1, workers=1, seed=1, hashfxn=lambda s: sum(map(ord, s)))
    model.wv.save_word2vec_format(str(path), binary=True)
    return path


def _words_one_video(expert, read, x: VideoInput) -> VideoResult:
    """The OCR expert's rows before batching: `read(frame)` frame by frame, then words -> rows."""
    from extract.experts._words import words_result
    from extract.experts.ocr import merge_words

    words = [[(w, c) for text, c in read(f) if c >= expert.cfg.min_conf for w in text.split()] for f in x.frames]
    return words_result(merge_words(words, x.timestamps), expert.wv, expert.cfg.max_rows)


def _assert_same_words(got: list[VideoResult], want: list[VideoResult]) -> None:
    """Same rows and tokens; confidences to float rounding (kernels sum in another order per batch size)."""
    for i, (a, b) in enumerate(zip(got, want)):
        assert [{**t, 'conf': 0} for t in a.tokens] == [{**t, 'conf': 0} for t in b.tokens], i
        np.testing.assert_allclose([t['conf'] for t in a.tokens], [t['conf'] for t in b.tokens], rtol=1e-4)
    _assert_same([dataclasses.replace(r, tokens=None) for r in got], [dataclasses.replace(r, tokens=None) for r in want])


@pytest.fixture(scope='module')
def text_videos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp('text')
    return [_slideshow(d / 'a.mp4', [_text_frame('HELLO', 160, 120, (10, 40), 22),
                                     _text_frame('RIVER GARDEN', 160, 120, (5, 70), 22)], 160, 120),
            _slideshow(d / 'b.mp4', [_text_frame('ok', 128, 96, (30, 30), 22)], 128, 96),
            _slideshow(d / 'c.mp4', [_text_frame('', 160, 120, (0, 0), 22), _text_frame('TEA', 160, 120, (60, 10), 22),
                                     _text_frame('ab cd', 160, 120, (20, 80), 22)], 160, 120)]


@pytest.mark.slow
def test_easyocr_batched_reads_as_readtext_per_frame(text_videos: list[Path], tmp_path: Path) -> None:
    """The batched easyocr path (CRAFT over frames of one size across videos: a's two and c's first in
    one pass; the recogniser over
    crops of one padded width across frames) against easyocr's own `readtext`, frame by frame."""
    expert = create_expert('ocr', word_vectors=str(_word2vec(tmp_path / 'none.bin', ['zzz'])), min_conf=0.0,
                           detect_batch=3, recognize_batch=3)
    inputs = _inputs(expert, text_videos)
    assert [x.frames.shape[:3] for x in inputs] == [(2, 120, 160), (1, 96, 128), (3, 120, 160)]
    reader = random_reader(inputs[0].frames)
    read = lambda f: [(text, float(conf)) for _, text, conf in reader.readtext(f)]  # noqa: E731
    per_frame = [[read(f) for f in x.frames] for x in inputs]
    assert sum(len(f) for v in per_frame for f in v) >= 6, per_frame  # boxes to read, in every video
    from extract.experts._easyocr import readtext_batched

    batched = readtext_batched(reader, [x.frames for x in inputs], torch.device('cpu'), 3, 3)
    assert [[[t for t, _ in f] for f in v] for v in batched] == [[[t for t, _ in f] for f in v] for v in per_frame]
    np.testing.assert_allclose([c for v in batched for f in v for _, c in f],
                               [c for v in per_frame for f in v for _, c in f], rtol=1e-4)
    # the expert's rows: a vocabulary with half of the words read, so that some rows are kept
    words = sorted({w.lower() for v in per_frame for f in v for t, _ in f for w in t.split()})
    expert.wv = load_word_vectors(_word2vec(tmp_path / 'w2v.bin', words[::2] + ['unrelated']))
    expert.use_reader(reader)
    rows = expert.process_batch(inputs)
    assert any(r.available for r in rows)
    _assert_same_words(rows, [_words_one_video(expert, read, x) for x in inputs])
    _assert_same_words(rows, [expert.process(x) for x in inputs])


@pytest.mark.slow
def test_rapidocr_batched_rows_equal_per_video_rows(tmp_path: Path) -> None:
    d = tmp_path / 'videos'
    d.mkdir()
    videos = [_slideshow(d / 'a.mp4', [_text_frame('HELLO', 320, 240, (40, 90), 44)] * 2
                         + [_text_frame('GARDEN', 320, 240, (40, 90), 44)], 320, 240),
              _slideshow(d / 'b.mp4', [_text_frame('', 256, 192, (0, 0), 40), _text_frame('RIVER', 256, 192, (30, 70), 40)],
                         256, 192)]
    vectors = _word2vec(tmp_path / 'w2v.bin', ['hello', 'garden', 'river'])
    expert = create_expert('ocr.rapidocr', word_vectors=str(vectors)).load('cpu')
    inputs = _inputs(expert, videos)
    rows = expert.process_batch(inputs)
    read = lambda f: [(t, float(s)) for _, t, s in (expert.engine(np.ascontiguousarray(f[..., ::-1]))[0] or [])]  # noqa: E731
    _assert_same(rows, [_words_one_video(expert, read, x) for x in inputs])
    _assert_same(rows, [expert.process(x) for x in inputs])
    assert [[t['word'].lower() for t in r.tokens] for r in rows] == [['hello', 'garden'], ['river']]
