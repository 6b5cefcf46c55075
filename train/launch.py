"""`python -m train.launch [torchrun options] -m train ...`: torchrun (`torch.distributed.run`), whose
failure ends in one line.

Each training process states what went wrong in its own `error:` line. torchrun then raises
ChildFailedError: a traceback and a failure table of some 30 lines that repeat only exit codes and
pids, below the line that says what to fix. This runs torchrun's own `run` and ends a failure with one
line instead; options, rendezvous and process handling are torchrun's.
"""
from __future__ import annotations

import argparse
import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import get_args_parser, run

__all__ = ['main', 'parser']

_EXAMPLES = '''examples:
  python -m train.launch --standalone --nproc-per-node 8 -m train --model mmt --dataset msrvtt --split 1k-A
  python -m train.launch --standalone --nproc-per-node 2 -m train --model ce --dataset demo --device cpu
  make train MODEL=mmt DATASET=msrvtt SPLIT=1k-A GPUS=8      (the same through make)

Several nodes: the same command on each, with --nnodes N --node-rank R --master-addr HOST
--master-port PORT (or --rdzv-backend c10d --rdzv-endpoint HOST:PORT); pipelines/slurm/train.sbatch
does this under SLURM. Exit status: 0, 1 with one line when a process failed, 128+N after signal N.'''


def parser() -> argparse.ArgumentParser:
    """torchrun's own parser, introduced as this command."""
    p = get_args_parser()
    p.prog = 'python -m train.launch'
    p.description = ('torchrun (torch.distributed.run): one training process per GPU (DistributedDataParallel), '
                     'or per --nproc-per-node on the CPU with gloo. Its options are torchrun\'s; a failure ends '
                     'in one line under the processes\' own error lines instead of torchrun\'s traceback.')
    p.epilog = _EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        processes = int(args.nproc_per_node)
    except ValueError:  # torchrun's own words, or nothing it takes
        processes = 1 if args.nproc_per_node in ('auto', 'gpu', 'cpu', 'xpu') else 0
    if processes < 1:  # else torchrun's bare AssertionError, or its ValueError traceback
        print(f'error: --nproc-per-node {args.nproc_per_node}: give 1 or more processes (or auto, gpu, cpu)',
              file=sys.stderr)
        return 1
    try:
        run(args)
    except SignalException as err:  # Ctrl-C or SIGTERM: torchrun stopped the processes, whose rank 0 said how to go on
        return 128 + int(err.sigval)
    except ChildFailedError as err:
        failures = list(err.failures.values())
        codes = ', '.join(str(c) for c in sorted({f.exitcode for f in failures}))
        # a process that exited with an error makes torchrun stop the others (SIGTERM): its line says
        # why; any other signal (SIGKILL from the out-of-memory killer, whose victim wrote no line, and
        # whose partner's collective then failed with a misleading one) is named all the same
        errored = any(f.exitcode > 0 for f in failures)
        signals = {f.signal_name() for f in failures if f.exitcode < 0}
        # beside another signal, a SIGTERM is torchrun's own: it stops the survivors of a killed process
        killed = sorted(signals - ({'SIGTERM'} if errored or len(signals) > 1 else set()))
        why = ', '.join((*(['their error lines above say why'] if errored else []),
                         *([f'killed by {", ".join(killed)}'] if killed else [])))
        if 'SIGKILL' in killed:
            why += ' (most often the out-of-memory killer: see dmesg)'
        print(f'error: {len(failures)} training process(es) stopped (exit code {codes}): {why}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
