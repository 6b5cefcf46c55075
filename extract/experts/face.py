"""Face expert: MTCNN detection (facenet-pytorch; its weights ship in the wheel), then a 512-d
InceptionResnetV1 (VGGFace2) embedding per detected face, one row per face with its frame's time.

CE used an SSD detector and a ResNet-50 (VGGFace2) on frames resized to 300x300 (appendix A.5);
MTCNN + InceptionResnetV1 is the detector/embedder pair that installs and runs offline. Frames
are sampled at `fps` and reach the expert at their native size. MTCNN detects on them shrunk to a
short side of `resize` (CE's 300; never upscaled): on a 720p frame MTCNN's image pyramid is 5.8x
the work, and faces under `min_face_size` at 300 are too small to embed anyway. Each face is then
cropped from the native frame, with its box scaled back, as facenet-pytorch's reference pipeline
crops from PIL images (`MTCNN(img)` with `post_process=True`, i.e. `fixed_image_standardization`):
the embedder sees the pixels the video has, not those of the shrunk frame.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from extract.experts import EXPERTS, build_expert
from extract.experts._base import ExpertCfg, VideoExpert, VideoInput
from extract.experts._batching import frame_batches
from extract.weights import ResolvedWeights, resolve_weights, sha256_file
from shared.store import DONE, VideoResult

__all__ = ['FaceExpert', 'FaceCfg', 'default_cfgs']

VGGFACE2_URL = 'https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt'


@dataclasses.dataclass(frozen=True)
class FaceCfg(ExpertCfg):
    """Face settings.

    Args:
        min_prob: detections below this MTCNN probability are dropped.
        min_face_size: smallest face MTCNN looks for, in pixels.
        margin: pixels added around each box before the 160x160 crop.
        detect_batch: frames per MTCNN pass, taken across videos (frames of one size only: MTCNN
            stacks its images).
        crop: where faces are cropped from: ``native``, the frame at the video's own size (its
            pixels, whatever MTCNN detected on); ``detected``, the frame MTCNN detected on (short
            side `resize`), as stores made before this setting were.
    """

    min_prob: float = 0.95
    min_face_size: int = 20
    margin: int = 14
    detect_batch: int = 64
    crop: str = 'native'

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.min_face_size < 1:
            raise ValueError(f'min_face_size must be >= 1 pixel, got {self.min_face_size}')
        if self.detect_batch < 1:
            raise ValueError(f'detect_batch must be >= 1, got {self.detect_batch}')
        if self.crop not in ('native', 'detected'):
            raise ValueError(f"crop must be 'native' or 'detected', got {self.crop!r}")


class FaceExpert(VideoExpert):
    head_keys = ('logits.',)
    #: stores made before `crop` existed cropped from the frame MTCNN detected on
    legacy_defaults = (*VideoExpert.legacy_defaults, ('crop', 'detected'))
    # `weights` are the embedding network's: MTCNN's are in facenet-pytorch's wheel, always loaded
    random_part, real_part = 'the InceptionResnetV1 embedding', "MTCNN's face detector"

    def build(self) -> nn.Module:
        from facenet_pytorch import InceptionResnetV1

        return InceptionResnetV1(pretrained=None, classify=False)

    def resolve(self) -> ResolvedWeights:
        """`facenet:vggface2` is looked for where facenet-pytorch caches it ($TORCH_HOME/checkpoints)."""
        if self.weights is None:
            spec = self.cfg.weights
            if spec == 'facenet:vggface2':
                from torch.hub import _get_torch_home

                cached = Path(_get_torch_home()) / 'checkpoints' / os.path.basename(VGGFACE2_URL)
                self.weights = (ResolvedWeights(spec, cached, sha256_file(cached)) if cached.is_file()
                                else resolve_weights(f'url:{VGGFACE2_URL}'))
            else:
                self.weights = resolve_weights(spec, self.cfg.origin_url)
        return self.weights

    def load(self, device: torch.device | str) -> FaceExpert:
        from facenet_pytorch import MTCNN

        super().load(device)
        self.mtcnn = MTCNN(image_size=160, margin=self.cfg.margin, min_face_size=self.cfg.min_face_size,
                           keep_all=True, post_process=True, device=self.device)
        return self

    def process(self, inputs: VideoInput) -> VideoResult:
        return self.process_batch([inputs])[0]

    @torch.inference_mode()
    def process_batch(self, inputs: list[VideoInput]) -> list[VideoResult]:
        """Faces of several videos, from their frames at native size: MTCNN over batches of
        same-size shrunk frames across the videos, crops from the native frames, then one
        embedding pass over all their faces. Rows per video are as if it ran alone: each
        frame's faces largest first, those under `min_prob` dropped, the first `max_rows` kept."""
        from facenet_pytorch.models.mtcnn import fixed_image_standardization
        from facenet_pytorch.models.utils.detect_face import extract_face
        from PIL import Image

        assert self.model is not None
        for x in inputs:
            assert x.frames is not None and x.timestamps is not None
        crops: list[list[torch.Tensor]] = [[] for _ in inputs]
        stamps: list[list[np.ndarray]] = [[] for _ in inputs]
        # shrunk here, on the expert's own worker thread, not on the thread that feeds every expert
        small = [self.own_frames(x.frames) for x in inputs]
        for frames, videos, rows in frame_batches(small, self.cfg.detect_batch):
            if min(frames.shape[1:3]) * (12.0 / self.cfg.min_face_size) < 12:  # MTCNN's own test, float for float
                continue  # no face of min_face_size fits: MTCNN's image pyramid would have no level, and raise
            boxes, probs = self.mtcnn.detect(frames)  # per frame: boxes largest first, or None
            for frame_boxes, frame_probs, v, k in zip(boxes, probs, videos, rows):
                if frame_boxes is None or len(crops[v]) >= self.cfg.max_rows:
                    continue
                keep = np.asarray(frame_probs, np.float64) >= self.cfg.min_prob  # float64, as before batching
                kept = frame_boxes[keep][: self.cfg.max_rows - len(crops[v])]
                if not len(kept):
                    continue
                native = inputs[v].frames[k] if self.cfg.crop == 'native' else small[v][k]
                (h, w), (sh, sw) = native.shape[:2], small[v].shape[1:3]
                scale = np.array([w / sw, h / sh, w / sw, h / sh])
                # facenet's reference pipeline takes PIL images: its crop of a PIL image is resized with
                # PIL's bilinear filter, that of a numpy frame with cv2's INTER_AREA (up to 0.08 apart).
                # One PIL image per frame with a kept face; MTCNN's detection stays batched on numpy.
                image = Image.fromarray(native)
                for box in kept:
                    crops[v].append(fixed_image_standardization(extract_face(image, box * scale, 160,
                                                                             self.cfg.margin)))
                    stamps[v].append(inputs[v].timestamps[k])
        counts = [len(c) for c in crops]
        flat = [c for video in crops for c in video]
        feats = np.zeros((0, 512), np.float32)
        if flat:
            x = torch.stack(flat).to(self.device, self.dtype)
            feats = torch.cat([self.model(x[i:i + self.batch_size]).float()
                               for i in range(0, len(x), self.batch_size)]).cpu().numpy()
        out, start = [], 0
        for n, video_stamps in zip(counts, stamps):
            if not n:
                out.append(VideoResult(np.zeros((0, 512), np.float32), np.zeros((0, 2), np.float32), DONE,
                                       available=False))
            else:
                out.append(VideoResult(feats[start:start + n], np.stack(video_stamps).astype(np.float32), DONE))
            start += n
        return out

default_cfgs = {
    'face': FaceCfg(arch='facenet:inception_resnet_v1', weights='facenet:vggface2', feature_dim=512, fps=1.0,
                    resize=(300,), input_size=0, max_rows=256, batch_size=64, license='mit (facenet-pytorch)',
                    origin_url=VGGFACE2_URL),
}


@EXPERTS.register('face')
def mtcnn_vggface2(**overrides: Any) -> FaceExpert:
    """MTCNN + InceptionResnetV1 (VGGFace2)."""
    return build_expert(FaceExpert, default_cfgs, 'face', overrides)
