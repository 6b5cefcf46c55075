"""Face expert: MTCNN detection (facenet-pytorch; its weights ship in the wheel), then a 512-d
InceptionResnetV1 (VGGFace2) embedding per detected face, one row per face with its frame's time.

CE used an SSD detector and a ResNet-50 (VGGFace2) on frames resized to 300x300 (appendix A.5);
MTCNN + InceptionResnetV1 is the detector/embedder pair that installs and runs offline. Frames
are sampled at `fps` and seen at the decode size (short side `resize`, never upscaled).
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
    """

    min_prob: float = 0.95
    min_face_size: int = 20
    margin: int = 14


class FaceExpert(VideoExpert):
    head_keys = ('logits.',)

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

    @torch.inference_mode()
    def process(self, inputs: VideoInput) -> VideoResult:
        assert inputs.frames is not None and inputs.timestamps is not None and self.model is not None
        faces, probs = self.mtcnn(list(inputs.frames), return_prob=True)  # one batch: the video's frames
        crops, stamps = [], []
        for frame_faces, frame_probs, stamp in zip(faces, probs, inputs.timestamps):
            if frame_faces is None:
                continue
            keep = np.asarray(frame_probs, np.float64) >= self.cfg.min_prob
            for face in frame_faces[torch.from_numpy(keep)]:
                crops.append(face)
                stamps.append(stamp)
        crops, stamps = crops[: self.cfg.max_rows], stamps[: self.cfg.max_rows]
        if not crops:
            return VideoResult(np.zeros((0, 512), np.float32), np.zeros((0, 2), np.float32), DONE, available=False)
        x = torch.stack(crops).to(self.device, self.dtype)
        feats = torch.cat([self.model(x[i:i + self.batch_size]).float()
                           for i in range(0, len(x), self.batch_size)]).cpu().numpy()
        return VideoResult(feats, np.stack(stamps).astype(np.float32), DONE)


default_cfgs = {
    'face': FaceCfg(arch='facenet:inception_resnet_v1', weights='facenet:vggface2', feature_dim=512, fps=1.0,
                    resize=(300,), input_size=0, max_rows=256, batch_size=64, license='mit (facenet-pytorch)',
                    origin_url=VGGFACE2_URL),
}


@EXPERTS.register('face')
def mtcnn_vggface2(**overrides: Any) -> FaceExpert:
    """MTCNN + InceptionResnetV1 (VGGFace2)."""
    return build_expert(FaceExpert, default_cfgs, 'face', overrides)
