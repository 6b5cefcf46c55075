"""Per-dataset expert settings applied before `--set`: the demo's videos are small, synthetic
and offline, so it reads its own word vectors and uses RapidOCR (models in the wheel)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ['dataset_settings']


def dataset_settings(dataset: str, data_root: Path) -> dict[str, Any]:
    """`--set`-style settings for `dataset` (overridden by the user's own `--set`)."""
    if dataset == 'demo':
        return {'word_vectors': str(Path(data_root) / 'demo' / 'word2vec.bin'), 'ocr.engine': 'rapidocr',
                'speech.max_tokens': 16, 'speech.temperatures': [0.0]}
    return {}
