"""`python -m train`: train and evaluate a retrieval model, or count its parameters.

    python -m train --model ce --dataset demo
    python -m train --model ce --dataset msrvtt --split full --seeds 0,1,2
    python -m train --config pipelines/configs/train/ce_msrvtt_full.yaml --count-params
    torchrun --nproc-per-node 4 -m train --model mmt --dataset msrvtt --split 1k-A   # DDP, 4 processes
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

import yaml

from shared.config import (DATA_ROOT_HELP, FEATURES_ROOT_HELP, ConfigError, data_root_default, features_root_default,
                           parse_overrides, to_dict)
from shared.datasets import DatasetError, load_manifest, require_registered
from shared.device import DEVICE_HELP, pick_device
from shared.files import atomic_write_text, raise_if_stopping, stop_asked, stop_handler
from shared.logs import setup_logging
from shared.media import count_media
from shared.store import StoreError
from train.config import RunCfg, load_run_cfg
from train.distributed import SINGLE, Dist, RanksError, agree, init_distributed, teardown
from train.loop import train_run
from train.metrics import format_results
from train.models import MODELS, count_parameters, meta_model

__all__ = ['main', 'config_path', 'parse_seeds', 'CONFIG_DIR', 'FINETUNE']

CONFIG_DIR = Path(__file__).resolve().parents[1] / 'pipelines' / 'configs' / 'train'
#: CONFIG_DIR's folder of configs that fine-tune a pretrained run (`train.init_from`)
FINETUNE = 'finetune'


def config_path(model: str, dataset: str, split: str | None, finetune: bool = False) -> Path:
    """pipelines/configs/train/{model}_{dataset}[_{split}].yaml, the most specific that exists; with
    `finetune`, the config that fine-tunes a pretrained run, in pipelines/configs/train/finetune/."""
    where = CONFIG_DIR / FINETUNE if finetune else CONFIG_DIR
    names = ([f'{model}_{dataset}_{split}'] if split else []) + [f'{model}_{dataset}']
    for name in names:
        p = where / f'{name.replace("-", "_").lower()}.yaml'
        if p.is_file():
            return p
    stem = f'{model}_{dataset}_'.replace('-', '_').lower()
    splits = sorted(str((yaml.safe_load(p.read_text()) or {}).get('data', {}).get('split', p.stem[len(stem):]))
                    for p in where.glob(f'{stem}*.yaml'))
    if splits:  # the dataset has configs per split: say which
        raise ConfigError(f'model {model} on {dataset} has a config per split{f" (not {split})" if split else ""}: '
                          f'pass --split {" | ".join(splits)} (make: SPLIT=...), or --config FILE')
    try:  # a typo in the model's or the dataset's name: say which, and its close names, not every config file
        MODELS.get(model)
    except KeyError as err:
        raise ConfigError(f'--model: {err.args[0]}') from None
    if not dataset.startswith('folder:'):
        require_registered(dataset, hint='')
    known = sorted(p.stem for p in where.glob('*.yaml'))
    what = 'no fine-tuning config' if finetune else 'no config'
    raise ConfigError(f'{what} for model {model} on {dataset}{" " + split if split else ""} in {where} '
                      f'(known: {", ".join(known)}); pass --config FILE')


def parse_seeds(text: str) -> list[int]:
    """`--seeds 0,1,2` -> [0, 1, 2]; anything else is a ConfigError saying what to give."""
    items = [s.strip() for s in text.split(',')]
    # numpy's generators take seeds in [0, 2**32): another failed deep in training, its run folder made
    if not all(s.isascii() and s.isdigit() and int(s) < 2**32 for s in items):  # '', '0,,1', '-1' and '²' included
        raise ConfigError(f'--seeds {text!r}: give one or more integers from 0 to {2**32 - 1} separated by commas, '
                          'e.g. --seeds 0,1,2')
    return [int(s) for s in items]


def _count(cfg: RunCfg) -> int:
    model = meta_model(cfg.model)  # offline, and nothing allocated: the architecture alone
    counts = count_parameters(model)
    total = counts.pop('total')
    print(f'parameters: {total} ({total / 1e6:.2f}M)')
    for name, n in counts.items():
        if n:
            print(f'  {name:<28} {n:>12}  ({n / 1e6:.2f}M)')
    for m in model.feature_extractors():
        n = sum(p.numel() for p in m.parameters())
        print(f'  not counted: {type(m).__name__}, a frozen feature extractor ({n / 1e6:.2f}M)')
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog='python -m train', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split('\n\n', 1)[1])
    p.add_argument('--model', help='mee, ce, mmt or ssb (with --dataset picks pipelines/configs/train/MODEL_DATASET.yaml)')
    p.add_argument('--dataset', help='a registered dataset (default: demo)')
    p.add_argument('--split', help="the dataset's split (default: the config's)")
    p.add_argument('--config', type=Path, help='a run config YAML (data, model, train)')
    p.add_argument('--set', dest='settings', action='append', default=[], metavar='KEY=VALUE',
                   help='override a config value, e.g. train.epochs=5 or model.embed_dim=512')
    p.add_argument('--seeds', default='0', help='comma list of seeds; results are mean +- std (default: 0)')
    p.add_argument('--data-root', type=Path, default=data_root_default(),
                   help=f'dataset folders (default: {DATA_ROOT_HELP})')
    p.add_argument('--features-root', type=Path, default=features_root_default(),
                   help=f'expert stores (default: {FEATURES_ROOT_HELP})')
    p.add_argument('--run-dir', type=Path, default=None, help='default: runs/MODEL-DATASET-SPLIT')
    p.add_argument('--init-from', metavar='RUN_DIR|CHECKPOINT',
                   help="start from another run's weights, matched by name and shape (train.init_from)")
    p.add_argument('--device', default='auto', help=DEVICE_HELP)
    p.add_argument('--count-params', action='store_true', help='build the model from its config and count parameters')
    p.add_argument('--no-progress', action='store_true', help='no progress bar (batch jobs)')
    args = p.parse_args(argv)
    setup_logging()
    ranks, base = SINGLE, None
    # SIGTERM (a SLURM pre-emption or time limit, torchrun stopping its processes, a `kill`) stops the run
    # as Ctrl-C does: its default killed the process at once, with no line saying how to go on, and left
    # the streamed parts' feature caches (GBs on local disk) behind. Both are remembered (`stop_handler`):
    # the training loop raises a lost one again (`raise_if_stopping`)
    main_thread = threading.current_thread() is threading.main_thread()  # signal.signal refuses others
    stop_asked.clear()
    previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)  # not a Ctrl-C ignored (nohup)
                if main_thread and (s == signal.SIGTERM or signal.getsignal(s) is not signal.SIG_IGN)}
    try:
        overrides = parse_overrides(args.settings)
        if args.split:
            overrides['data.split'] = args.split
        if args.init_from is not None:
            overrides['train.init_from'] = args.init_from
        if args.config is None:
            if not args.model:
                p.error('give --model (and --dataset) or --config')
            args.config = config_path(args.model, args.dataset or 'demo', args.split)
        elif not args.config.exists():  # not Python's "[Errno 2] No such file or directory: 'x.yaml'"
            raise ConfigError(f'--config {args.config}: no such file (the shipped configs: {CONFIG_DIR})')
        if args.dataset is not None:  # an empty --dataset is an error to report, not the default
            overrides['data.dataset'] = args.dataset
        cfg = load_run_cfg(args.config, overrides)
        if args.model and cfg.model.model != args.model:
            raise ConfigError(f'{args.config} is a {cfg.model.model} config, not {args.model}')
        if args.count_params:
            return _count(cfg)
        seeds = parse_seeds(args.seeds)
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated:  # the same seed twice trains the same run twice: a "± 0.0" that means nothing
            raise ConfigError(f'--seeds {args.seeds}: seed {", ".join(map(str, repeated))} given more than once; '
                              'give distinct seeds')
        device = pick_device(args.device)
        base = args.run_dir or Path('runs') / f'{cfg.model.model}-{cfg.data.dataset}-{cfg.data.split}'
        ranks, device = init_distributed(device)
        _agree(ranks, cfg, seeds, base, args)
        manifest = load_manifest(cfg.data.dataset, args.data_root, **cfg.data.dataset_options)
        if ranks.main:
            print(f'{manifest.name}: {count_media(manifest.paths)}, read from {manifest.origin}')
        results = []
        for seed in seeds:
            run_dir = base / f'seed{seed}'
            if ranks.main:
                print(f'training {cfg.model.model} on {cfg.data.dataset}/{cfg.data.split}, seed {seed}, {device}'
                      f'{f" x {ranks.world} processes" if ranks.active else ""} -> {run_dir}')
            results.append(train_run(cfg, manifest, args.features_root, args.data_root, run_dir, seed, device,
                                     progress=not args.no_progress, ranks=ranks))
            raise_if_stopping()  # one lost after the last step (testing): the next seed does not start
        if not ranks.main:  # rank 0 writes and prints the results
            return 0
        if not any(results):  # pretraining: nothing to test
            print(f'{cfg.data.dataset}/{cfg.data.split} has no test part: trained only. Fine-tune from it with '
                  f'--init-from {base / f"seed{seeds[0]}"}, or evaluate it zero-shot with python -m train.evaluate '
                  f'--run {base} --dataset DATASET')
            return 0
        table = format_results({cfg.model.model: results}, std=cfg.train.seed_std)
        atomic_write_text(base / 'results.md', f'# {cfg.model.model} on {cfg.data.dataset} ({cfg.data.split}), seeds '
                          f'{args.seeds}\n\n{table}\n')
        print(table)
        return 0
    except (ConfigError, DatasetError, StoreError, FileNotFoundError, ValueError) as err:
        if ranks.main or not isinstance(err, RanksError):  # every rank fails a RanksError alike: said once
            print(f'error: {err}' if ranks.main else f'error (process {ranks.rank}): {err}', file=sys.stderr)
        return 1
    except RuntimeError as err:
        if not (ranks.active and _peer_lost(err)):
            raise
        # a collective whose partner died (killed, or failed with its own line): some 30 lines of traceback
        # on every survivor said only that, above the line that says why
        first = str(err).split('] ', 1)[-1].split('. ')[0]
        print(f'error (process {ranks.rank}): another training process stopped while this one waited for it '
              f'({first}): its own line, or train.launch\'s last, says why', file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: last.pt is written whole or not at all; every run resumes from it
        _stopping(main_thread)
        if ranks.main:
            where = f' ({base}/seedN/checkpoints/last.pt)' if base is not None else ''
            print(f'\ninterrupted: rerun the same command to continue; each seed resumes from its last checkpoint'
                  f'{where} where it wrote one', file=sys.stderr)
        return 130
    finally:
        teardown()
        stop_asked.clear()  # (tests call `main` and the loop in one process)
        for s, handler in previous.items():
            if signal.getsignal(s) is _stop:  # (after an interrupt, SIGTERM stays ignored: `_stopping`)
                signal.signal(s, handler)


def _peer_lost(err: RuntimeError) -> bool:
    """Whether `err` is gloo's report of a collective's partner gone (its connection closed or reset)."""
    text = str(err)
    return '/gloo/transport/' in text and ('closed by peer' in text or 'reset by peer' in text)


def _stopping(main_thread: bool) -> None:
    """Stopping after Ctrl-C or SIGTERM: more SIGTERMs are ignored (the handler set up in `main` is not put
    back), so that the line saying how to go on and the cleanup after it run whole."""
    if main_thread:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _stop(signum: int, frame: object) -> None:
    """Ctrl-C and SIGTERM stop the run (last.pt stays, and the rerun resumes from it), remembered for
    `raise_if_stopping`; once the interrupt reaches `main`, more SIGTERMs are ignored (`_stopping`): SLURM
    signals every process of a job and torchrun passes its own on, and another KeyboardInterrupt in the
    handling was a traceback."""
    stop_handler(signum, frame)


def _agree(ranks: Dist, cfg: RunCfg, seeds: list[int], base: Path, args: argparse.Namespace) -> None:
    """Every process was given the same run: config, seeds and paths (`train.distributed.agree`)."""
    agree(ranks, {'config': to_dict(cfg), 'seeds': seeds, 'run_dir': str(base), 'data_root': str(args.data_root),
                  'features_root': str(args.features_root)})


if __name__ == '__main__':
    sys.exit(main())
