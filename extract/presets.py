"""Per-dataset expert settings applied before `--set`: the demo's videos are small, synthetic
and offline, so it reads its own word vectors, uses RapidOCR (models in the wheel) and smaller
model inputs (112 px frames, 8-frame clips) than the papers' defaults. HowTo100M keeps every row
of its long videos (`HOWTO100M_MAX_ROWS`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ['dataset_settings', 'HOWTO100M_MAX_ROWS']

#: rows kept per video of HowTo100M (the stores' T): one a second for frame and clip experts up to
#: an hour, as MMT samples 100 consecutive seconds anywhere in a video (sec. 4.2); the videos average
#: 6.5 minutes, and a longer one gets its T rows spread evenly. The other datasets keep each
#: expert's own max_rows (128 for frame and clip experts), which their stores and results were made with.
HOWTO100M_MAX_ROWS = 3600


def dataset_settings(dataset: str, data_root: Path) -> dict[str, Any]:
    """`--set`-style settings for `dataset` (overridden by the user's own `--set`)."""
    if dataset in ('demo', 'demo_images'):  # small inputs so that `make demo` extracts 120 videos in minutes on a
        # CPU; the demo's stills are extracted as its videos' frames (the same inputs, word vectors and OCR), so
        # that a run trained on both (data.extra) sees one feature space
        return {'word_vectors': str(Path(data_root) / 'demo' / 'word2vec.bin'), 'ocr.engine': 'rapidocr',
                'speech.max_tokens': 16, 'speech.temperatures': [0.0],
                'object.resize': [112, 112], 'scene.resize': [128, 128], 'scene.input_size': 112,
                'action.resize': [128], 'action.input_size': 112, 'action.clip_len': 8}
    if dataset == 'howto100m':
        return {'max_rows': HOWTO100M_MAX_ROWS}
    return {}
