"""The papers' pretraining tables as data (MMT Tables 1, 5, 6; support-set Tables 3-6 pretrained
rows and Table 10, zero-shot), and their printing beside our runs (`make reproduce ... PRETRAINED=RUN`);
MEE's Tables 2-3 (videos + COCO images, `MEE_TABLES`) beside a run with and without ``data.extra``.

Cells are quoted as the papers print them (bold dropped), ``±`` and ``–`` included. A row that
our recipe reproduces names its setting, ``{zero-shot|scratch|finetuned}:{keep|remove}`` (the
captions' stop words, `DataCfg.stop_words`); our row of that setting is printed under it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from train.metrics import mean_std

__all__ = ['PaperTable', 'PRETRAINING_TABLES', 'SETTINGS', 'format_beside', 'MeeTable', 'MEE_TABLES', 'mee_beside']

#: our rows' settings, in words
SETTINGS = {'zero-shot': 'zero-shot (pretrained, not fine-tuned)', 'scratch': 'from scratch',
            'finetuned': 'pretrained + fine-tuned'}
_STOP = {'keep': 'all words', 'remove': 'w/o stop words'}


@dataclasses.dataclass(frozen=True)
class PaperTable:
    """One published table, or the rows of it that a recipe compares with.

    Args:
        where: the paper, table number and caption.
        columns: (direction, metric) of each cell column, as our metrics name them (``t2v``, ``R5``).
        rows: (method as printed, our setting or '', cells as printed).
    """

    where: str
    columns: tuple[tuple[str, str], ...]
    rows: tuple[tuple[str, str, tuple[str, ...]], ...]

    def settings(self) -> list[str]:
        return [s for _, s, _ in self.rows if s]


_T2V_R5_MDR_MNR = (('t2v', 'R5'), ('t2v', 'MdR'), ('t2v', 'MnR'))
_BOTH_R5_MDR_MNR = _T2V_R5_MDR_MNR + (('v2t', 'R5'), ('v2t', 'MdR'), ('v2t', 'MnR'))
_BOTH_R1_R5_R10_MDR = tuple((d, k) for d in ('t2v', 'v2t') for k in ('R1', 'R5', 'R10', 'MdR'))
_BOTH_R1_R5_R50_MDR = tuple((d, k) for d in ('t2v', 'v2t') for k in ('R1', 'R5', 'R50', 'MdR'))
# support-set Table 10 prints video -> text first
_ZERO_SHOT_COLUMNS = tuple((d, k) for d in ('v2t', 't2v') for k in ('R1', 'R5', 'R10', 'MdR'))
_SSB_TABLE_10 = 'Support-set, Tab. 10: Zero-shot Retrieval performance on VATEX, MSR-VTT, MSVD and ActivityNet'

_MMT_TABLE_1 = PaperTable(
    'MMT, Tab. 1: Advantage of pretraining on HowTo100M then finetuning on MSRVT. Impact of removing the stop words. '
    'Performance reported on MSRVT.', _T2V_R5_MDR_MNR, (
        ('Pretraining without finetuning (zero-shot setting), all words', 'zero-shot:keep', ('6.9', '160.0', '240.2')),
        ('Pretraining without finetuning (zero-shot setting), w/o stop words', 'zero-shot:remove',
         ('14.4', '66.0', '148.1')),
        ('Training from scratch on MSRVT, all words', 'scratch:keep', ('54.0 ±0.2', '4.0 ±0.0', '26.7 ±0.9')),
        ('Training from scratch on MSRVT, w/o stop words', 'scratch:remove', ('50.0 ±0.6', '5.3 ±0.5', '28.5 ±0.9')),
        ('Pretraining then finetuning on MSRVT, all words', 'finetuned:keep', ('57.1 ±1.0', '4.0 ±0.0', '24.0 ±0.8')),
        ('Pretraining then finetuning on MSRVT, w/o stop words', 'finetuned:remove',
         ('55.0 ±0.7', '4.3 ±0.5', '24.3 ±0.3'))))

#: (paper, dataset, split) -> the tables a pretrained recipe prints
PRETRAINING_TABLES: dict[tuple[str, str, str], tuple[PaperTable, ...]] = {
    ('mmt', 'msrvtt', '1k-A'): (_MMT_TABLE_1,),
    ('mmt', 'activitynet', 'val1'): (PaperTable(
        'MMT, Tab. 5: Retrieval performance on the ActivityNet dataset.', _BOTH_R5_MDR_MNR, (
            ('Ours', 'scratch:keep', ('54.2±1.0', '5.0±0.0', '20.8±0.4', '54.8±0.4', '4.3±0.5', '21.2±0.5')),
            ('Ours-pretrained', 'finetuned:keep',
             ('61.4±0.2', '3.3±0.5', '16.0±0.4', '61.1±0.2', '4.0±0.0', '17.1±0.5')))),),
    ('mmt', 'lsmdc', 'official'): (PaperTable(
        'MMT, Tab. 6: Retrieval performance on the LSMDC dataset.', _BOTH_R5_MDR_MNR, (
            ('Ours', 'scratch:keep', ('29.2±0.8', '21.0±1.4', '76.3±1.9', '29.3±1.1', '22.5±0.4', '77.1±2.6')),
            ('Ours-pretrained', 'finetuned:keep',
             ('29.9±0.7', '19.3±0.2', '75.0±1.2', '28.6±0.3', '20.0±0.0', '76.0±0.8')))),),
    ('ssb', 'msrvtt', '1k-A'): (
        PaperTable('Support-set, Tab. 3: Retrieval performance on the MSR-VTT dataset. Models in the second group are '
                   'additionally pretrained on HowTo100M (the second group).', _BOTH_R1_R5_R10_MDR, (
                       ('VidTranslate (Korbar et al., 2020)', '', ('14.7', '–', '52.8', '–', '–', '–', '–', '–')),
                       ('HT100M (Miech et al., 2019)', '', ('14.9', '40.2', '52.8', '9.0', '16.8', '41.7', '55.1', '8.0')),
                       ('NoiseEstimation (Amrani et al., 2020)', '',
                        ('17.4', '41.6', '53.6', '8.0', '–', '–', '–', '–')),
                       ('UniVL (Luo et al., 2020)', '', ('21.2', '49.6', '63.1', '6.0', '–', '–', '–', '–')),
                       ('AVLnet (Rouditchenko et al., 2020)', '',
                        ('27.1', '55.6', '66.6', '4.0', '28.5', '54.6', '65.2', '4.0')),
                       ('MMT (Gabeur et al., 2020)', '', ('26.6', '57.1', '69.6', '4.0', '27.0', '57.5', '69.7', '3.7')),
                       ('Ours-pretrained', 'finetuned:keep',
                        ('30.1', '58.5', '69.3', '3.0', '28.5', '58.6', '71.6', '3.0')))),
        PaperTable(_SSB_TABLE_10, _ZERO_SHOT_COLUMNS, (
            ('MSR-VTT', 'zero-shot:keep', ('8.7', '23.0', '31.1', '31.0', '12.7', '27.5', '36.2', '24.0')),))),
    ('ssb', 'vatex', 'official'): (
        PaperTable('Support-set, Tab. 4: Retrieval performance on the VATEX dataset', _BOTH_R1_R5_R10_MDR, (
            ('Ours', 'scratch:keep', ('44.6', '81.8', '89.5', '1.0', '58.1', '83.8', '90.9', '1.0')),
            ('Ours-pretrained', 'finetuned:keep', ('45.9', '82.4', '90.4', '1.0', '61.2', '85.2', '91.8', '1.0')))),
        PaperTable(_SSB_TABLE_10, _ZERO_SHOT_COLUMNS, (
            ('VATEX', 'zero-shot:keep', ('0.07', '0.4', '0.7', '682.0', '0.07', '0.4', '0.9', '697')),))),
    ('ssb', 'activitynet', 'val1'): (
        PaperTable('Support-set, Tab. 5: Retrieval performance on ActivityNet', _BOTH_R1_R5_R50_MDR, (
            ('Ours', 'scratch:keep', ('26.8', '58.1', '93.5', '3.0', '25.5', '57.3', '93.5', '3.0')),
            ('Ours-pretrained', 'finetuned:keep', ('29.2', '61.6', '94.7', '3.0', '28.7', '60.8', '94.8', '2.0')))),
        PaperTable(_SSB_TABLE_10, _ZERO_SHOT_COLUMNS, (
            ('ActivityNet', 'zero-shot:keep', ('0.06', '0.2', '0.5', '1907.0', '0.0', '0.2', '0.3', '2238.0')),))),
    ('ssb', 'msvd', 'official'): (
        PaperTable('Support-set, Tab. 6: Retrieval performance on the MSVD dataset', _BOTH_R1_R5_R10_MDR, (
            ('Ours', 'scratch:keep', ('23.0', '52.8', '65.8', '5.0', '27.3', '50.7', '60.8', '5.0')),
            ('Ours-pretrained', 'finetuned:keep', ('28.4', '60.0', '72.9', '4.0', '34.7', '59.9', '70.0', '3.0')))),
        PaperTable(_SSB_TABLE_10, _ZERO_SHOT_COLUMNS, (
            ('MSVD', 'zero-shot:keep', ('8.9', '26.0', '37.9', '18.0', '21.4', '46.2', '57.7', '6.0')),))),
}


def _ours(setting: str) -> str:
    kind, stop = setting.split(':')
    return f'ours: {SETTINGS[kind]}, {_STOP[stop]}'


def format_beside(tables: Sequence[PaperTable], ours: Mapping[str, Sequence[Mapping[str, Mapping[str, float]]]]
                  ) -> str:
    """The tables in Markdown, each paper row that a recipe reproduces followed by ours (mean ±
    std over `ours[setting]`'s runs), and the settings not run said once at the end."""
    out, missing = [], []
    for table in tables:
        head = ['row'] + [f'{d} {k}' for d, k in table.columns]
        out += [table.where, '', '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
        for method, setting, cells in table.rows:
            out.append('| ' + ' | '.join([f'paper: {method}', *cells]) + ' |')
            if not setting:
                continue
            if not ours.get(setting):
                missing.append(_ours(setting))
                continue
            runs = list(ours[setting])
            stats = mean_std(runs)
            mine = [f'{stats[d][k][0]:.1f}' + (f' ± {stats[d][k][1]:.1f}' if len(runs) > 1 else '')
                    for d, k in table.columns]
            out.append('| ' + ' | '.join([f'{_ours(setting)} ({len(ours[setting])} run(s))', *mine]) + ' |')
        out.append('')
    if missing:
        out.append('not run here: ' + '; '.join(dict.fromkeys(missing)))
    return '\n'.join(out).rstrip() + '\n'


@dataclasses.dataclass(frozen=True)
class MeeTable:
    """MEE Table 2 or 3: text-to-video retrieval on COCO images and on a video dataset's test part.

    Args:
        where: the paper, table number and caption.
        videos: the video columns' evaluation set, as printed.
        rows: (model as printed, our config's variant: '' for the recipe itself, e.g. ``coco_face``
            for mee_msrvtt_1k_b_coco_face.yaml; COCO cells R@1, R@5, R@10, MR; video cells R@1, R@5,
            R@10, MR and, for MPII, MC), as printed.
    """

    where: str
    videos: str
    rows: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...]


_MEE_METRICS = ('R1', 'R5', 'R10', 'MdR')

#: (dataset, split) -> MEE's table of it. The recipes without data.extra keep the face expert: Tables 2-3's
#: "MEE + Face" rows; ``coco_face``: "MEE + Face + COCO". MC (LSMDC's multiple choice) is not computed here.
MEE_TABLES: dict[tuple[str, str], MeeTable] = {
    ('lsmdc', 'official'): MeeTable(
        'MEE, Tab. 2: The effect of augmenting the MPII movie caption dataset with captioned still images from the '
        'MS COCO dataset. R@k denotes recall@k (higher is better), MR denotes Median Rank (lower is better) and MC '
        'denotes Multiple Choice (higher is better).', 'MPII videos', (
            ('MEE + Face', '', ('10.4', '29.0', '42.6', '15'), ('9.3', '25.1', '33.4', '27', '74.8')),
            ('MEE + Face + COCO', 'coco_face', ('31.4', '64.5', '79.3', '3'), ('10.1', '25.6', '34.6', '27', '73.9')))),
    ('msrvtt', '1k-B'): MeeTable(
        'MEE, Tab. 3: The effect of augmenting the MSR-VTT video caption dataset with captioned still images from the '
        'MS COCO dataset when relative image to video sampling rate alpha = 0.5. R@k stands for recall@k, MR stands '
        'for Median Rank.', 'MSR-VTT videos', (
            ('MEE + Face', '', ('8.4', '24.9', '38.9', '18'), ('13.6', '37.9', '51.0', '10')),
            ('MEE + Face + COCO', 'coco_face', ('20.7', '54.5', '72.0', '5'), ('14.2', '39.2', '53.8', '9')))),
}


def mee_beside(table: MeeTable, variant: str, videos: Sequence[Mapping[str, Mapping[str, float]]],
               images: Sequence[Mapping[str, Mapping[str, float]]]) -> str:
    """`table` in Markdown with our row (mean ± std over the seeds' test metrics `videos` and, with
    data.extra, the extra source's `images`) under the paper's row of the same `variant`."""
    mc = len(table.rows[0][3]) > len(_MEE_METRICS)
    head = (['row'] + [f'COCO images {k}' for k in _MEE_METRICS] + [f'{table.videos} {k}' for k in _MEE_METRICS]
            + ([f'{table.videos} MC'] if mc else []))
    out = [table.where, '', '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]

    def cells(runs: Sequence[Mapping[str, Mapping[str, float]]]) -> list[str]:
        if not runs:
            return ['-'] * len(_MEE_METRICS)
        stats = mean_std(runs)
        return [f'{stats["t2v"][k][0]:.1f}' + (f' ± {stats["t2v"][k][1]:.1f}' if len(runs) > 1 else '')
                for k in _MEE_METRICS]

    for model, ours, coco, video in table.rows:
        out.append('| ' + ' | '.join([f'paper: {model}', *coco, *video]) + ' |')
        if ours == variant:
            out.append('| ' + ' | '.join([f'ours: {model} ({len(videos)} run(s))', *cells(images), *cells(videos),
                                          *(['-'] if mc else [])]) + ' |')
    if variant not in {v for _, v, _, _ in table.rows}:
        out.append(f'(no paper row for the variant {variant!r})')
    return '\n'.join(out) + '\n'
