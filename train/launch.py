"""`python -m train.launch [torchrun options] -m train ...`: torchrun (`torch.distributed.run`), whose
failure ends in one line.

Each training process states what went wrong in its own `error:` line. torchrun then raises
ChildFailedError: a traceback and a failure table of some 30 lines that repeat only exit codes and
pids, below the line that says what to fix. This runs torchrun's own `run` and ends a failure with one
line instead; options, rendezvous and process handling are torchrun's.
"""
from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run

__all__ = ['main']


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
