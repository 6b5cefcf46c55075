"""`make reproduce PAPER=mee ...` prints MEE's Tables 2-3 (COCO images and videos) beside ours (issue 23, item 4)."""
from __future__ import annotations

from pipelines.paper_tables import MEE_TABLES, mee_beside
from train.main import CONFIG_DIR, config_path


def _metrics(r1: float) -> dict:
    return {'t2v': {'R1': r1, 'R5': 2 * r1, 'R10': 3 * r1, 'MdR': 7.0}}


def test_the_rows_of_tables_2_and_3_beside_the_mean_of_our_seeds() -> None:
    assert set(MEE_TABLES) == {('msrvtt', '1k-B'), ('lsmdc', 'official')}
    for dataset, split in MEE_TABLES:  # each row's recipe exists
        base = config_path('mee', dataset, split)
        for _, variant, _, _ in MEE_TABLES[dataset, split].rows:
            assert (CONFIG_DIR / f'{base.stem}{f"_{variant}" if variant else ""}.yaml').is_file()
    text = mee_beside(MEE_TABLES['msrvtt', '1k-B'], 'coco_face', [_metrics(10.0), _metrics(12.0)],
                      [_metrics(20.0), _metrics(22.0)]).splitlines()
    assert text[0].startswith('MEE, Tab. 3: The effect of augmenting the MSR-VTT video caption dataset')
    assert '| paper: MEE + Face | 8.4 | 24.9 | 38.9 | 18 | 13.6 | 37.9 | 51.0 | 10 |' in text
    at = text.index('| paper: MEE + Face + COCO | 20.7 | 54.5 | 72.0 | 5 | 14.2 | 39.2 | 53.8 | 9 |')
    assert text[at + 1] == ('| ours: MEE + Face + COCO (2 run(s)) | 21.0 ± 1.0 | 42.0 ± 2.0 | 63.0 ± 3.0 | 7.0 ± 0.0 '
                            '| 11.0 ± 1.0 | 22.0 ± 2.0 | 33.0 ± 3.0 | 7.0 ± 0.0 |')
    lsmdc = mee_beside(MEE_TABLES['lsmdc', 'official'], '', [_metrics(9.0)], []).splitlines()
    assert '| paper: MEE + Face + COCO | 31.4 | 64.5 | 79.3 | 3 | 10.1 | 25.6 | 34.6 | 27 | 73.9 |' in lsmdc
    at = lsmdc.index('| paper: MEE + Face | 10.4 | 29.0 | 42.6 | 15 | 9.3 | 25.1 | 33.4 | 27 | 74.8 |')
    assert lsmdc[at + 1] == '| ours: MEE + Face (1 run(s)) | - | - | - | - | 9.0 | 18.0 | 27.0 | 7.0 | - |'
