"""`make reproduce PAPER=... DATASET=... SPLIT=...`: train a paper's model with its config on
imported (or extracted) features, three seeds, and print the table beside the paper's numbers.

    python -m pipelines.reproduce --paper mmt --dataset msrvtt --split 1k-A --release ~/mmt/MSRVTT/mult_h5
    python -m pipelines.reproduce --paper mmt --dataset msrvtt --split 1k-A --pretrained runs/mmt-howto100m-pretrain

When the stores are missing and --release is given, the authors' features are imported first
(CE and MEE: CE's pickles; MMT: MMT's h5 files). The paper's model is the model of the same name
(``ce``, ``mee``, ``mmt``, ``ssb``) with its config under pipelines/configs/train/. For the support-set
model on MSR-VTT full, VATEX and ActivityNet val1, the test videos are also captioned
(`train.caption`) and the rows of the paper's Tables 7-9 printed beside ours.

With --pretrained RUN (a pretraining run, `make pretrain`), the seeds fine-tune from RUN with the
config under pipelines/configs/train/finetune/, RUN is evaluated zero-shot on the split's test
part, and the papers' pretraining tables are printed with our rows under theirs
(`pipelines.paper_tables`: MMT Tab. 1, 5, 6; support-set Tab. 3-6 and 10), the from-scratch
rows from --scratch-run when it has finished.

For MEE on MSR-VTT 1k-B and LSMDC, the rows of the paper's Tables 3 and 2 (COCO images and the
videos) are printed with ours under the row of the recipe trained: --variant coco_face trains
mee_DATASET[_SPLIT]_coco_face.yaml ("MEE + Face + COCO", data.extra), no variant the recipe itself
("MEE + Face").
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from pipelines.paper_tables import MEE_TABLES, PRETRAINING_TABLES, PaperTable, format_beside, mee_beside
from shared.config import ConfigError, data_root_default, features_root_default
from shared.datasets import DatasetError, load_manifest
from shared.device import pick_device
from shared.files import atomic_write_text
from shared.store import StoreError, store_path
from train.config import RunCfg, load_run_cfg, saved_run_cfg
from train.evaluate import evaluate_run
from train.main import config_path, parse_seeds
from train.main import main as train_main
from train.runs import run_seeds

__all__ = ['PAPER_RESULTS', 'CAPTION_RESULTS', 'captions_beside', 'compare_pretrained', 'main']

#: (paper, dataset, split) -> (where in the paper, {direction: {metric: value}}), means over seeds as printed
PAPER_RESULTS: dict[tuple[str, str, str], tuple[str, dict[str, dict[str, float]]]] = {
    ('ce', 'msrvtt', 'full'): ('CE, Tab. 1 (MSR-VTT, full test set)',
                               {'t2v': {'R1': 10.0, 'R5': 29.0, 'R10': 41.2, 'MdR': 16}}),
    ('ce', 'msrvtt', '1k-A'): ('CE, Tab. 1 (MSR-VTT 1k-A)', {'t2v': {'R1': 20.9, 'R5': 48.8, 'R10': 62.4, 'MdR': 6}}),
    ('ce', 'msrvtt', '1k-B'): ('CE, Tab. 1 (MSR-VTT 1k-B)', {'t2v': {'R1': 18.2, 'R5': 46.0, 'R10': 60.7, 'MdR': 7}}),
    ('mmt', 'msrvtt', '1k-A'): ('MMT, Tab. 4 (MSR-VTT 1k-A, "Ours")',
                                {'t2v': {'R5': 54.0, 'MdR': 4.0, 'MnR': 26.7}, 'v2t': {'R5': 56.0, 'MdR': 4.0, 'MnR': 23.6}}),
    ('mmt', 'msrvtt', '1k-B'): ('MMT, Tab. 4 (MSR-VTT 1k-B, "Ours")',
                                {'t2v': {'R5': 49.1, 'MdR': 6.0, 'MnR': 29.5}, 'v2t': {'R5': 49.4, 'MdR': 6.0, 'MnR': 24.5}}),
    ('ssb', 'msrvtt', '1k-A'): ('Support-set, Tab. 3 (MSR-VTT 1k-A, "Ours", no pretraining)',
                                {'t2v': {'R1': 27.4, 'R5': 56.3, 'R10': 67.7, 'MdR': 3.0},
                                 'v2t': {'R1': 26.6, 'R5': 55.1, 'R10': 67.5, 'MdR': 3.0}}),
}
_SOURCE = {'ce': 'ce', 'mee': 'ce', 'mmt': 'mmt'}

#: (dataset, split) -> (where in the support-set paper, [(method, {metric: value})]): its captioning tables
CAPTION_RESULTS: dict[tuple[str, str], tuple[str, list[tuple[str, dict[str, float]]]]] = {
    ('msrvtt', 'full'): ('Support-set, Tab. 7 (MSR-VTT, 2,990 test videos)', [
        ('VidTranslate', {'BLEU-4': 41.7, 'METEOR': 28.5}),
        ('POS+VCT', {'BLEU-4': 42.3, 'METEOR': 29.7, 'ROUGE-L': 62.8, 'CIDEr': 49.1}),
        ('ORG', {'BLEU-4': 43.6, 'METEOR': 28.8, 'ROUGE-L': 62.1, 'CIDEr': 50.9}),
        ('Ours, MSR-VTT only', {'BLEU-4': 39.7, 'METEOR': 28.3, 'ROUGE-L': 60.5, 'CIDEr': 46.5}),
        ('Ours, HT100M + MSR-VTT', {'BLEU-4': 38.9, 'METEOR': 28.2, 'ROUGE-L': 59.8, 'CIDEr': 48.6})]),
    ('vatex', 'official'): ('Support-set, Tab. 8 (VATEX)', [
        ('Shared Enc-Dec', {'BLEU-4': 28.4, 'METEOR': 21.7, 'ROUGE-L': 47.0, 'CIDEr': 45.1}),
        ('ORG', {'BLEU-4': 32.1, 'METEOR': 22.2, 'ROUGE-L': 48.9, 'CIDEr': 49.7}),
        ('Ours, VATEX only', {'BLEU-4': 32.8, 'METEOR': 24.4, 'ROUGE-L': 49.1, 'CIDEr': 51.2}),
        ('Ours, HT100M + VATEX', {'BLEU-4': 32.5, 'METEOR': 24.1, 'ROUGE-L': 48.9, 'CIDEr': 50.5})]),
    ('activitynet', 'val1'): ('Support-set, Tab. 9 (ActivityNet val1, paragraphs)', [
        ('DENSE', {'BLEU-4': 1.6, 'METEOR': 8.9}),
        ('DVC-D-A', {'BLEU-4': 1.7, 'METEOR': 9.3}),
        ('Bi-LSTM+TempoAttn', {'BLEU-4': 2.1, 'METEOR': 10.0}),
        ('Masked Transformer', {'BLEU-4': 2.8, 'METEOR': 11.1}),
        ('Ours, ActivityNet only', {'BLEU-4': 1.5, 'METEOR': 6.9, 'ROUGE-L': 17.8, 'CIDEr': 3.2}),
        ('Ours, HT100M + ActivityNet', {'BLEU-4': 1.4, 'METEOR': 6.9, 'ROUGE-L': 17.5, 'CIDEr': 3.1})]),
}
_CAPTION_KEYS = ('BLEU-4', 'METEOR', 'ROUGE-L', 'CIDEr')


def _beside(ours: dict, paper: tuple[str, dict[str, dict[str, float]]] | None) -> str:
    if paper is None:
        return 'no paper numbers recorded for this recipe'
    where, numbers = paper
    rows = [f'paper: {where}', '| direction | metric | paper | ours (mean) |', '|---|---|---|---|']
    for d, metrics in numbers.items():
        for k, v in metrics.items():
            rows.append(f'| {d} | {k} | {v} | {ours.get(d, {}).get(k, float("nan")):.1f} |')
    return '\n'.join(rows)


def check_scratch_run(scratch_run: Path, model: str, dataset: str, split: str) -> RunCfg | None:
    """The config of `scratch_run`'s first seed (None: no seed there yet).

    Raises:
        ConfigError: it is a run of another model, dataset or split, whose numbers would be printed
            as this recipe's, silently.
    """
    seeds = sorted(p for p in scratch_run.glob('seed*') if (p / 'config.yaml').is_file())
    if not seeds:
        return None
    cfg = saved_run_cfg(seeds[0])
    trained = (cfg.model.model, cfg.data.dataset, cfg.data.split)
    if trained != (model, dataset, split):
        raise ConfigError(f'--scratch-run {scratch_run} is a run of {" ".join(trained)}, not of {model} {dataset} '
                          f'{split}: give the from-scratch run of this recipe')
    return cfg


def compare_pretrained(tables: Sequence[PaperTable], finetuned: list[dict], pretrained: Path, scratch_run: Path,
                       dataset: str, split: str, data_root: Path, features_root: Path, device: str,
                       stop_words: str, model: str) -> str:
    """The papers' pretraining `tables` with ours under them: the `finetuned` seeds' test metrics
    (trained with `stop_words`), the `pretrained` run evaluated zero-shot on `dataset`'s `split`
    test part with each stop-words setting the tables have a zero-shot row of, and the
    `scratch_run` seeds' test metrics when that run has finished (a run of `model` on `dataset` `split`).

    Raises:
        ConfigError: `pretrained` holds no run or several seeds, or `scratch_run` is a run of another
            model, dataset or split; StoreError: a store it reads is missing.
    """
    if not tables:
        return f'no paper numbers recorded for the pretrained recipe on {dataset} {split}'
    ours: dict[str, list[dict]] = {f'finetuned:{stop_words}': finetuned}
    done = sorted(scratch_run.glob('seed*/test_metrics.json'))
    if done:  # trained with its own config's stop words
        cfg = check_scratch_run(scratch_run, model, dataset, split)
        ours[f'scratch:{cfg.data.stop_words}'] = [json.loads(p.read_text()) for p in done]
    source = pretrained.parent.parent if pretrained.is_file() else pretrained  # RUN/checkpoints/NAME.pt
    sources = run_seeds(source)
    if len(sources) > 1:
        raise ConfigError(f'--pretrained {pretrained} holds {len(sources)} seeds: name one, e.g. {sources[0]}')
    manifest = load_manifest(dataset, data_root)
    for setting in dict.fromkeys(s for t in tables for s in t.settings() if s.startswith('zero-shot:')):
        stop = setting.split(':')[1]
        ours[setting] = [evaluate_run(sources[0], manifest, split, 'test', features_root, data_root,
                                      torch.device(pick_device(device)), stop)]
    return format_beside(tables, ours)


def captions_beside(ours: list[dict], paper: tuple[str, list[tuple[str, dict[str, float]]]]) -> str:
    """The paper's captioning rows and ours (the mean over seeds of `train.caption` records)."""
    where, rows = paper
    fmt = lambda d, k: f'{d[k]:.1f}' if k in d else '-'  # noqa: E731
    mean = {k: sum(r['metrics'][k] for r in ours) / len(ours) for k in _CAPTION_KEYS if k in ours[0]['metrics']}
    lines = [f'paper: {where}', '| method | ' + ' | '.join(_CAPTION_KEYS) + ' |', '|---|' + '---|' * len(_CAPTION_KEYS)]
    lines += [f'| {name} | ' + ' | '.join(fmt(v, k) for k in _CAPTION_KEYS) + ' |' for name, v in rows]
    lines.append(f'| this reproduction ({len(ours)} seeds, greedy) | ' + ' | '.join(fmt(mean, k) for k in _CAPTION_KEYS) + ' |')
    lines += [f'{k} unavailable: {why}' for k, why in ours[0]['unavailable'].items()]
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog='python -m pipelines.reproduce', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split('\n\n', 1)[1])
    p.add_argument('--paper', required=True, choices=['ce', 'mee', 'mmt', 'ssb'],
                   help='whose model and config: ce, mee, mmt or ssb (the support-set model)')
    p.add_argument('--dataset', required=True, help='a registered dataset, e.g. msrvtt')
    p.add_argument('--split', default=None, help="the dataset's split, e.g. 1k-A (default: the config's)")
    p.add_argument('--release', type=Path, default=None,
                   help="the authors' released features, imported when stores are missing")
    p.add_argument('--seeds', default='0,1,2',
                   help='comma list of seeds, reported as mean and std (default: %(default)s)')
    p.add_argument('--set', dest='settings', action='append', default=[], metavar='KEY=VALUE',
                   help='override a config value for training, as for python -m train (a quick check: train.epochs=1, '
                        'or train.steps=100 where a config counts steps)')
    p.add_argument('--data-root', type=Path, default=data_root_default(),
                   help='directory holding one folder per dataset (default: %(default)s)')
    p.add_argument('--features-root', type=Path, default=features_root_default(),
                   help='where the stores are, {features root}/{dataset}/{expert}.zarr (default: %(default)s)')
    p.add_argument('--run-dir', type=Path, default=None,
                   help='default: runs/reproduce-PAPER-DATASET-SPLIT (with --pretrained: ...-pretrained)')
    p.add_argument('--pretrained', type=Path, default=None, metavar='RUN',
                   help='fine-tune from this pretraining run (make pretrain) and print the papers\' pretraining tables')
    p.add_argument('--scratch-run', type=Path, default=None,
                   help='with --pretrained: the from-scratch run printed beside (default: '
                        'runs/reproduce-PAPER-DATASET-SPLIT, what a reproduce without --pretrained writes)')
    p.add_argument('--variant', default='',
                   help="a variant of the paper's config: its file name's suffix, e.g. coco_face (MEE + Face + COCO); "
                        'default: none, the recipe itself')
    p.add_argument('--device', default='auto', help='for the zero-shot evaluation: auto (default), cpu, cuda ...')
    args = p.parse_args(argv)
    try:
        # parsed here, as train parses them: '0, 1' trained seed1, then its metrics were looked for in 'seed 1'
        seeds = parse_seeds(args.seeds)
        if args.variant and not re.fullmatch(r'[\w.-]+', args.variant):  # a file name's suffix, no path
            raise ConfigError(f'--variant {args.variant!r}: give the suffix of a config file name, e.g. coco_face')
        cfg_path = config_path(args.paper, args.dataset, args.split, finetune=args.pretrained is not None)
        if args.variant:
            cfg_path = cfg_path.with_name(f'{cfg_path.stem}_{args.variant}.yaml')
            if not cfg_path.is_file():
                raise ConfigError(f'--variant {args.variant}: no config {cfg_path}')
        cfg = load_run_cfg(cfg_path)
        missing = [e.name for e in cfg.model.experts
                   if not store_path(args.features_root, args.dataset, e.name).exists()]
        split = args.split or cfg.data.split
        scratch = (Path('runs') / f'reproduce-{args.paper}-{args.dataset}-{split}'
                   f'{f"-{args.variant}" if args.variant else ""}')
        if args.pretrained is not None:  # before hours of fine-tuning, not after
            check_scratch_run(args.scratch_run or scratch, cfg.model.model, args.dataset, split)
    except (ConfigError, DatasetError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    if missing:
        if args.release is None or args.paper not in _SOURCE:
            print(f'error: stores missing for {", ".join(missing)}: extract them (make extract) or pass --release '
                  'with the authors\' features', file=sys.stderr)
            return 1
        from pipelines.import_features import main as import_main

        code = import_main(['--source', _SOURCE[args.paper], '--root', str(args.release), '--dataset', args.dataset,
                            '--data-root', str(args.data_root), '--features-root', str(args.features_root)])
        if code:
            return code
    run = args.run_dir or (scratch.with_name(scratch.name + '-pretrained') if args.pretrained else scratch)
    overrides = [a for kv in args.settings for a in ('--set', kv)]
    init = ['--init-from', str(args.pretrained)] if args.pretrained is not None else []
    code = train_main(['--config', str(cfg_path), '--dataset', args.dataset, '--split', split,
                       '--seeds', ','.join(map(str, seeds)),
                       '--data-root', str(args.data_root), '--features-root', str(args.features_root),
                       '--run-dir', str(run), *init, *overrides])
    if code:
        return code
    metrics = [json.loads((run / f'seed{s}' / 'test_metrics.json').read_text()) for s in seeds]
    if args.pretrained is not None:
        try:
            text = compare_pretrained(PRETRAINING_TABLES.get((args.paper, args.dataset, split), ()), metrics,
                                      args.pretrained, args.scratch_run or scratch, args.dataset, split,
                                      args.data_root, args.features_root, args.device,
                                      cfg.data.stop_words, cfg.model.model)
        except (ConfigError, DatasetError, StoreError) as err:
            print(f'error: {err}', file=sys.stderr)
            return 1
    elif args.paper == 'mee' and (args.dataset, split) in MEE_TABLES:  # videos and COCO images
        extra = [run / f'seed{s}' / 'test_metrics_extra.json' for s in seeds]
        images = [next(iter(json.loads(p.read_text()).values())) for p in extra if p.is_file()]
        text = mee_beside(MEE_TABLES[args.dataset, split], args.variant, metrics, images)
    else:
        mean = {d: {k: sum(r[d][k] for r in metrics) / len(metrics) for k in metrics[0][d]} for d in metrics[0]}
        text = _beside(mean, PAPER_RESULTS.get((args.paper, args.dataset, split)))
    if args.paper == 'ssb' and (args.dataset, split) in CAPTION_RESULTS:  # the captioner of appendix 6.4
        from train.caption import caption_run

        manifest = load_manifest(args.dataset, args.data_root)
        device = torch.device(pick_device(args.device))
        records = [caption_run(run / f'seed{s}', manifest, split, 'test', args.features_root, args.data_root, device)
                   for s in seeds]
        text += '\n\n' + captions_beside(records, CAPTION_RESULTS[args.dataset, split])
    print(text)
    atomic_write_text(run / 'paper_comparison.md', text + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
