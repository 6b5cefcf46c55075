"""`make reproduce PAPER=ssb` prints the support-set paper's captioning rows (Tables 7-9) beside ours."""
from __future__ import annotations

from pipelines.reproduce import CAPTION_RESULTS, captions_beside
from train.main import config_path


def test_caption_rows_of_tables_7_to_9_beside_the_mean_of_our_seeds() -> None:
    assert set(CAPTION_RESULTS) == {('msrvtt', 'full'), ('vatex', 'official'), ('activitynet', 'val1')}
    for dataset, split in CAPTION_RESULTS:  # each has a support-set recipe to train
        assert config_path('ssb', dataset, split).stem.startswith(f'ssb_{dataset}')
    seeds = [{'metrics': {'BLEU-4': 30.0, 'ROUGE-L': 50.0, 'CIDEr': 40.0}, 'unavailable': {'METEOR': 'no java'}},
             {'metrics': {'BLEU-4': 32.0, 'ROUGE-L': 52.0, 'CIDEr': 44.0}, 'unavailable': {'METEOR': 'no java'}}]
    text = captions_beside(seeds, CAPTION_RESULTS['msrvtt', 'full']).splitlines()
    assert text[0] == 'paper: Support-set, Tab. 7 (MSR-VTT, 2,990 test videos)'
    assert '| Ours, MSR-VTT only | 39.7 | 28.3 | 60.5 | 46.5 |' in text
    assert '| VidTranslate | 41.7 | 28.5 | - | - |' in text
    assert '| this reproduction (2 seeds, greedy) | 31.0 | - | 51.0 | 42.0 |' in text
    assert text[-1] == 'METEOR unavailable: no java'
