"""Evaluation with the split's protocol: videos and query captions embedded in batches, scored a
block of queries at a time, ranked by `train.metrics`."""
from __future__ import annotations

import numpy as np
import torch

from train.data import SplitData
from train.metrics import retrieval_metrics
from train.models.base import RetrievalModel, TextEmbedding, VideoEmbedding

__all__ = ['embed_videos', 'embed_texts', 'evaluate']


@torch.no_grad()
def embed_videos(model: RetrievalModel, data: SplitData, device: torch.device, batch: int = 256) -> VideoEmbedding:
    parts = [model.encode_video({k: v.to(device) for k, v in videos.items()}) for videos in data.video_batches(batch)]
    return VideoEmbedding(torch.cat([p.emb for p in parts]), torch.cat([p.available for p in parts]))


@torch.no_grad()
def embed_texts(model: RetrievalModel, data: SplitData, captions: np.ndarray, device: torch.device,
                batch: int = 512) -> TextEmbedding:
    parts = [model.encode_text(data.captions.batch(captions[s:s + batch]).to(device))
             for s in range(0, len(captions), batch)]
    return TextEmbedding(torch.cat([p.emb for p in parts]), torch.cat([p.weights for p in parts]))


class _Scores:
    """The [queries x videos] similarity, scored a block of queries at a time (bounded memory)."""

    def __init__(self, model: RetrievalModel, text: TextEmbedding, video: VideoEmbedding) -> None:
        self.model, self.text, self.video = model, text, video
        self.shape = (text.emb.shape[0], video.emb.shape[0])

    def __getitem__(self, rows: slice) -> torch.Tensor:
        t = TextEmbedding(self.text.emb[rows], self.text.weights[rows])
        return self.model.similarity(t, self.video).float()


@torch.no_grad()
def evaluate(model: RetrievalModel, data: SplitData, device: torch.device,
             video: VideoEmbedding | None = None) -> dict[str, dict[str, float]]:
    """The split part's protocol: its query captions against all its videos (embedded here unless given)."""
    model.eval()
    video = video if video is not None else embed_videos(model, data, device)
    text = embed_texts(model, data, data.query, device)
    return retrieval_metrics(_Scores(model, text, video), data.caption_video[data.query], chunk_size=1024)
