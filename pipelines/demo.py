"""`make demo`: the project's main job on its embedded demo data, stage by stage.

1. generate the demo videos (skimage photos, FFmpeg) and the demo's still images (`demo_images`: JPEG
stills of the same photos), 2. extract all seven experts (weights that ship in wheels are real: MTCNN,
RapidOCR; the rest are RANDOM and said so) from the videos, and the MEE config's experts from the stills
(clip, audio and speech experts skip a still image), 3. train MEE, CE, MMT and the support-set model with
their demo configs, and "MEE + images": MEE on the demo videos plus the stills (`mee_demo_images.yaml`,
``data.extra`` at alpha 0.5, MEE sec. 4.2), 4. evaluate on the demo test split and print one comparison
table (and the stills' test part for MEE + images), then caption the test videos with the support-set
model's decoder and print the captioning metrics with three example captions, 5. answer example queries,
and index every demo video for the search page (`make serve`). A report directory gets the table, a chart
of expert availability, training curves and every step's config. Each stage reuses what an earlier run
finished, so a rerun only does what is left.

The transformer models (MMT, support-set) use text encoders built from their demo configs
(no download: a BERT and a T5 of a few layers over a word-level vocabulary of the demo's
training captions), which the report describes as the configs give them (`text_encoders`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from extract.presets import dataset_settings
from extract.run import exit_cli, main as extract_main
from shared.config import (DATA_ROOT_HELP, FEATURES_ROOT_HELP, ConfigError, data_root_default, features_root_default,
                           to_dict)
from shared.datasets import load_manifest
from shared.datasets.demo import (IMAGES_FILE, MANIFEST_FILE, DemoCfg, DemoImagesCfg, generate, generate_images,
                                  split_sizes)
from shared.device import pick_device
from shared.files import atomic_write_text
from shared.store import open_store, store_path
from train.caption import caption_run, format_captions
from train.config import load_run_cfg, settings_changed
from train.init import resolve_init
from train.main import CONFIG_DIR, config_path
from train.main import main as train_main
from train.metrics import format_results

__all__ = ['main', 'ensure_demo_data', 'ensure_generated', 'stale_run', 'set_aside_stale', 'MODELS', 'QUERIES',
           'WITH_IMAGES', 'IMAGES_CONFIG', 'text_encoders', 'serve_hint', 'min_videos', 'chance_note']

MODELS = ('mee', 'ce', 'mmt', 'ssb')
#: the table's row of MEE trained on the demo videos and the demo's still images, and its config
WITH_IMAGES = 'mee + images'
IMAGES_CONFIG = CONFIG_DIR / 'mee_demo_images.yaml'
QUERIES = ('an astronaut with a high tone', 'the word river appears over a cat', 'the camera zooms in on the moon')


def text_encoders(sources: dict[str, Path]) -> str:
    """The text encoders of MMT and the support-set model as their demo configs build them, e.g.
    'a 2-layer BERT and a 2-layer T5': read from the configs, so the report cannot drift from them."""
    built = []
    for name in ('mmt', 'ssb'):
        text = load_run_cfg(sources[name]).model.text
        built.append(f'a {text.layers}-layer {text.encoder.upper()}')
    return ' and '.join(built)


def ensure_demo_data(data_root: Path, cfg: DemoCfg, derived: tuple[Path, ...] = (), step: str = '[1/5 data]') -> Path:
    """Generate the demo dataset under ``data_root/demo`` unless the same one is already there;
    a new dataset removes the `derived` directories (stores and runs of the old videos)."""
    return ensure_generated(data_root / 'demo', MANIFEST_FILE, cfg, generate, derived, step)


def ensure_demo_images(data_root: Path, cfg: DemoImagesCfg, derived: tuple[Path, ...] = (),
                       step: str = '[1/5 data]') -> Path:
    """Generate the demo's still images under ``data_root/demo_images`` unless the same ones are there;
    new ones remove the `derived` directories (their stores and the runs trained on them)."""
    return ensure_generated(data_root / 'demo_images', IMAGES_FILE, cfg, generate_images, derived, step)


def _what(cfg: Any) -> str:
    """What a generator's config makes, for the progress lines: `videos` videos, or still images."""
    count = getattr(cfg, 'videos', None)
    return f'{count} videos' if count is not None else 'still images'


def ensure_generated(out: Path, record: str, cfg: Any, make: Callable[[Path, Any], Path], derived: tuple[Path, ...],
                     step: str) -> Path:
    """`make(out, cfg)` unless `out`/`record` says it was made with the same `cfg` (a dataclass);
    before making it, remove the `derived` directories (stores and runs of other videos)."""
    manifest = out / record
    if manifest.is_file():
        try:
            old = json.loads(manifest.read_text(encoding='utf-8')).get('config', {})
        except json.JSONDecodeError:
            old = {}
        if old == json.loads(json.dumps(dataclasses.asdict(cfg))):
            print(f'{step} reusing {out} ({_what(cfg)}, seed {cfg.seed})')
            return out
    for stale in derived:
        if stale.exists():
            kind = 'videos' if hasattr(cfg, 'videos') else 'still images'
            print(f'{step} removing {stale}: it was built from other {kind}')
            shutil.rmtree(stale)
    print(f'{step} generating {_what(cfg)} in {out}')
    make(out, cfg)
    return out


def stale_run(run: Path, config: Path, overrides: dict[str, Any] | None = None) -> str | None:
    """Why a run (its seed0 directory) with a checkpoint, finished or stopped, is not what `config`
    with `overrides` trains now, or None: its settings differ, epochs included (a finished run is
    reused, not continued), or it was fine-tuned (``train.init_from``) from a checkpoint written
    again since its own (a source trained again: same path, other weights). A config, setting or
    source that does not load is not the run's fault: None, and the training command says what is wrong."""
    last = run / 'checkpoints' / 'last.pt'
    if not last.is_file():  # nothing trained: a fresh start, or one to resume
        return None
    try:
        cfg = resolve_init(load_run_cfg(config, overrides or {}), run, write=False)
    except ConfigError:
        return None
    try:
        diff = settings_changed(run, yaml.safe_load(yaml.safe_dump({**to_dict(cfg), 'seed': 0})), may_change=())
    except ConfigError as err:  # the run's own config.yaml no longer reads
        return str(err)
    if diff:
        return '; '.join(diff[:3]) + (f'; and {len(diff) - 3} more' if len(diff) > 3 else '')
    if cfg.train.init_from and Path(cfg.train.init_from).stat().st_mtime > last.stat().st_mtime:
        return f'its source {cfg.train.init_from} was trained again since'
    return None


def set_aside_stale(run: Path, config: Path, step: str, overrides: dict[str, Any] | None = None) -> None:
    """Move `run` to RUN.old (replacing an older one) when `stale_run` says it is stale, so that
    it is trained again; a run without a checkpoint is left to resume."""
    why = stale_run(run / 'seed0', config, overrides)
    if why:
        old = run.with_name(run.name + '.old')
        if old.exists():
            shutil.rmtree(old)
        run.rename(old)
        print(f'{step} {run} is not the run {config.name} trains now ({why}); '
              f'moved to {old}, training again')


def _availability_chart(features_root: Path, experts: list[str], out: Path) -> dict[str, float]:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rates = {}
    for name in experts:
        rows = open_store(store_path(features_root, 'demo', name), warn_random=False).read()
        rates[name] = 100.0 * float(rows.available.mean())
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(list(rates), list(rates.values()), color='tab:blue')
    ax.set_ylabel('videos with the expert (%)')
    ax.set_ylim(0, 105)
    ax.set_title('Expert availability across the demo videos')
    for i, v in enumerate(rates.values()):
        ax.text(i, v + 1.5, f'{v:.0f}', ha='center', fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return rates


def _curves(runs: dict[str, Path], out: Path) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, run in runs.items():
        lines = [json.loads(x) for x in (run / 'metrics.jsonl').read_text().splitlines()]
        epochs = [r['epoch'] for r in lines]
        a.plot(epochs, [r['train/loss'] for r in lines], label=name)
        if 'val/t2v/R1' in lines[0]:
            b.plot(epochs, [r['val/t2v/R1'] for r in lines], label=name)
    a.set(xlabel='epoch', ylabel='training loss', title='Training loss', yscale='log')  # losses differ in scale
    b.set(xlabel='epoch', ylabel='val t2v R@1 (%)', title='Validation R@1')
    a.legend()
    b.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def chance_note(videos: int, captions: int) -> str:
    """What the table's numbers are to be read against: the test part's size and chance t2v R@1
    (one relevant video among `videos`), which `--videos` changes."""
    return (f'Tested on {videos} videos and {captions} captions: chance t2v R@1 is {100 / videos:.1f}, '
            f'R@5 {min(100.0, 500 / videos):.1f}.')


def serve_hint(run: Path, index: Path, data_root: Path) -> str:
    """The demo's last line: `make serve` with the roots this demo used where they are not make's
    defaults (a `make demo DATA_ROOT=...` is served from that root), and the command it runs."""
    from train.index import serve_command

    given = ([f'DATA_ROOT={data_root}'] if data_root != data_root_default() else []) + (
        [f'RUN={run}'] if run != Path('runs/demo/ce/seed0') else [])
    return (f'search the demo in the browser: {shlex.join(["make", "serve", *given])} '
            f'({serve_command(run, index, data_root)}), then open http://127.0.0.1:8000/')


def _demo_batch() -> int:
    """The largest training batch of the demo's configs (every one of them must fill it from the demo's videos)."""
    return max(load_run_cfg(path).train.batch_size
               for path in (*(config_path(m, 'demo', None) for m in MODELS), IMAGES_CONFIG))


def min_videos(cfg: DemoCfg) -> int:
    """The fewest demo videos whose training part fills the demo configs' batch."""
    batch, videos = _demo_batch(), 3
    while split_sizes(videos, cfg.split)[0] < batch:
        videos += 1
    return videos


EXAMPLES = '''examples:
  python -m pipelines.demo
  make demo                   # the same, through the Makefile (its DATA_ROOT, FEATURES_ROOT)
  python -m pipelines.demo --videos 40 --data-root /tmp/demo/data --features-root /tmp/demo/features \\
      --runs /tmp/demo/runs --report /tmp/demo/report    # the smallest demo, all of it under /tmp/demo'''


def main(argv: list[str] | None = None) -> int:
    d = DemoCfg()
    parser = argparse.ArgumentParser(prog='python -m pipelines.demo', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    parser.add_argument('--data-root', type=Path, default=data_root_default(),
                        help='where the demo videos and stills are generated (DATA_ROOT/demo, DATA_ROOT/demo_images; '
                             f'default: {DATA_ROOT_HELP})')
    parser.add_argument('--features-root', type=Path, default=features_root_default(),
                        help=f'where the expert stores go (default: {FEATURES_ROOT_HELP})')
    parser.add_argument('--runs', type=Path, default=Path('runs/demo'), help='run directories (default: runs/demo)')
    parser.add_argument('--report', type=Path, default=Path('reports/demo'), help='report directory (default: reports/demo)')
    parser.add_argument('--videos', type=int, default=d.videos,
                        help=f'demo videos to generate (default: {d.videos}; at least {min_videos(d)}, for the '
                             'configs\' training batch; another count makes a new dataset, replacing its stores and runs)')
    parser.add_argument('--seed', type=int, default=d.seed, help=f'seed of the generated data (default: {d.seed})')
    args = parser.parse_args(argv)
    least = min_videos(d)
    if args.videos < least:  # before anything is generated: the trainings would stop at their first batch
        parser.error(f'--videos {args.videos} gives {split_sizes(args.videos, d.split)[0]} training videos, fewer '
                     f'than the demo configs\' batch of {_demo_batch()}: give --videos {least} or more '
                     f'(make demo VIDEOS={least})')
    t0 = time.time()
    images_run = args.runs / 'mee_images'
    # the stills' OCR reads the demo's word2vec: new videos make their stores stale too
    ensure_demo_data(args.data_root, DemoCfg(videos=args.videos, seed=args.seed),
                     derived=(args.features_root / 'demo', args.features_root / 'demo_images', args.runs))
    ensure_demo_images(args.data_root, DemoImagesCfg(seed=args.seed),
                       derived=(args.features_root / 'demo_images', images_run))
    manifest = load_manifest('demo', args.data_root)
    print(manifest.describe())
    print(load_manifest('demo_images', args.data_root).describe())

    print('[2/5 extract] all seven experts; RANDOM weights except MTCNN (face detection) and RapidOCR, '
          'whose weights ship in their wheels')
    from extract.experts import resolve_expert_names

    experts = resolve_expert_names('all')
    code = extract_main(['--dataset', 'demo', '--expert', 'all', '--weights', 'random', '--data-root',
                         str(args.data_root), '--features-root', str(args.features_root)])
    if code:
        return code
    image_experts = [e.name for e in load_run_cfg(IMAGES_CONFIG).model.experts]
    print(f'[2/5 extract] the still images: {", ".join(image_experts)} (the experts of MEE + images; clip, audio '
          'and speech experts skip a still image)')
    code = extract_main(['--dataset', 'demo_images', '--expert', ','.join(image_experts), '--weights', 'random',
                         '--data-root', str(args.data_root), '--features-root', str(args.features_root)])
    if code:
        return code

    runs, results, sources = {}, {}, {}
    jobs = [(m, args.runs / m, ['--model', m, '--dataset', 'demo'], config_path(m, 'demo', None)) for m in MODELS]
    jobs.append((WITH_IMAGES, images_run, ['--config', str(IMAGES_CONFIG)], IMAGES_CONFIG))
    for i, (name, run, how, source) in enumerate(jobs):
        metrics = run / 'seed0' / 'test_metrics.json'
        # trained (or begun) by an earlier version of the demo config: kept aside, trained again
        set_aside_stale(run, source, '[3/5 train]')
        if metrics.is_file():
            print(f'[3/5 train] reusing {run}')
        else:
            print(f'[3/5 train] {name} ({i + 1}/{len(jobs)})')
            code = train_main([*how, '--data-root', str(args.data_root), '--features-root', str(args.features_root),
                               '--run-dir', str(run)])
            if code:
                return code
        runs[name] = run / 'seed0'
        results[name] = [json.loads(metrics.read_text())]
        sources[name] = source

    print('[4/5 evaluate] demo test split (random-weight experts: the numbers show the pipeline works, '
          'not what the papers\' experts achieve)')
    table = format_results(results, keys=('R1', 'R5', 'R10', 'MdR'))
    test = manifest.splits['official'].test
    table += '\n\n' + chance_note(len(test), sum(len(manifest.captions[v]) for v in test))
    print(table)
    print(f'[4/5 evaluate] {WITH_IMAGES} on the test part of its still images (10 stills: the numbers are coarse)')
    stills = {f'{WITH_IMAGES}, {name}': [m] for name, m in
              json.loads((runs[WITH_IMAGES] / 'test_metrics_extra.json').read_text()).items()}
    images_table = format_results(stills, keys=('R1', 'R5', 'R10', 'MdR'))
    print(images_table)
    print('[4/5 evaluate] the support-set model as a captioner: greedy captions of the demo test videos from '
          'their own features, scored against all their references')
    captioned = format_captions(caption_run(runs['ssb'], manifest, 'official', 'test', args.features_root,
                                            args.data_root, torch.device(pick_device('auto'))))
    print(captioned)

    print('[5/5 search] example queries, top 3 test videos')
    from train.search import Searcher

    answers = []
    for model in ('ce', 'mmt'):
        searcher = Searcher(runs[model], args.data_root)
        for q in QUERIES:
            top = searcher.search(q, 3)
            answers.append(f'- "{q}" ({model}): ' + ', '.join(f'{v} ({s:.3f})' for v, s in top))
            print(answers[-1][2:])

    report = args.report
    (report / 'configs').mkdir(parents=True, exist_ok=True)
    rates = _availability_chart(args.features_root, experts, report / 'availability.png')
    _curves(runs, report / 'training_curves.png')
    for name, run in runs.items():
        stem = run.parent.name  # the run directory: mee_images for MEE + images
        shutil.copy(run / 'config.yaml', report / 'configs' / f'train_{stem}.yaml')
        shutil.copy(sources[name], report / 'configs' / f'train_{stem}_source.yaml')
    extract_cfg = {name: open_store(store_path(args.features_root, 'demo', name), warn_random=False).attrs
                   for name in experts}
    atomic_write_text(report / 'configs' / 'extract.yaml', yaml.safe_dump(
        {'lighter_demo_settings': dataset_settings('demo', args.data_root), 'stores': extract_cfg}, sort_keys=False))
    atomic_write_text(report / 'configs' / 'data.json', json.dumps(dataclasses.asdict(DemoCfg(args.videos, args.seed))))
    atomic_write_text(
        report / 'results.md',
        '# Demo results\n\nExperts with RANDOM weights (all but MTCNN face detection and RapidOCR): the numbers '
        'show that the pipeline learns from what the experts do capture, not the papers\' results.\n\n'
        f'{table}\n\n## {WITH_IMAGES}: the test part of the still images (demo_images)\n\nMEE trained on the '
        'demo videos and the demo\'s still images (data.extra, alpha 0.5, MEE sec. 4.2), tested on the stills.'
        f'\n\n{images_table}\n\n## Expert availability (% of demo videos)\n\n'
        + '\n'.join(f'- {k}: {v:.1f}' for k, v in rates.items())
        + '\n\n## Captions of the support-set model (demo test videos, greedy)\n\n' + captioned
        + '\n\n![availability](availability.png)\n\n![curves](training_curves.png)\n\n## Example queries\n\n'
        + '\n'.join(answers) + '\n\nLighter expert settings than the papers\' defaults: '
        + ', '.join(f'{k}={v}' for k, v in dataset_settings('demo', args.data_root).items() if k != 'word_vectors')
        + '.\n\nText encoders: word2vec trained on the demo captions (MEE, CE); MMT and the support-set model '
        f'use {text_encoders(sources)} built from their demo configs with random initial weights and a '
        'word-level vocabulary of the training captions (the papers fine-tune bert-base-cased and t5-base).\n')
    print(f'report: {report} (results.md, availability.png, training_curves.png, configs/)')
    print('[5/5 search] every demo video embedded by CE, with thumbnails, for the search page')
    from train.index import default_out
    from train.index import main as index_main

    index = default_out(runs['ce'], 'demo')
    code = index_main(['--run', str(runs['ce']), '--dataset', 'demo', '--data-root', str(args.data_root),
                       '--features-root', str(args.features_root), '--out', str(index),
                       '--overwrite'])  # a demo run retrained since its last index: the index follows it
    if code:
        return code
    print(f'demo finished in {time.time() - t0:.0f} s')
    print(serve_hint(runs['ce'], index, args.data_root))
    return 0


if __name__ == '__main__':
    exit_cli(main())  # a second Ctrl-C in its extraction: see exit_cli
