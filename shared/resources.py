"""What this job may use of the machine: CPUs and memory, from the CPU affinity and the cgroup
limits (SLURM jobs and containers are limited by cgroups, not by the machine's size). Extraction
sizes its decode pool and decode-ahead by them, training its data budget."""
from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ['cpu_limit', 'memory_limit', 'parse_bytes', 'format_bytes']


def _cgroup_files(root: Path, proc_cgroup: str | os.PathLike, v2_file: str, v1_controller: str, v1_file: str
                  ) -> list[Path]:
    """The cgroup files that may limit this process: at the cgroup root, and in its own cgroup
    and every parent (each limit applies), for cgroup v2 and for v1's `v1_controller`."""
    found = [root / v2_file, root / v1_controller / v1_file]
    try:
        for line in Path(proc_cgroup).read_text().splitlines():
            _, controllers, path = line.split(':', 2)
            parts = [p for p in path.split('/') if p]
            for k in range(1, len(parts) + 1):
                if controllers == '':  # cgroup v2
                    found.append(root.joinpath(*parts[:k], v2_file))
                elif v1_controller in controllers.split(','):
                    found.append(root.joinpath(v1_controller, *parts[:k], v1_file))
    except (OSError, ValueError):
        pass
    return found


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ''


def memory_limit(cgroup_root: str | os.PathLike = '/sys/fs/cgroup', proc_cgroup: str | os.PathLike = '/proc/self/cgroup'
                 ) -> int:
    """Bytes of memory this process may use: physical memory, or a cgroup's limit when lower
    (SLURM jobs and containers are limited by cgroups, not by the machine's memory)."""
    try:
        limit = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    except (ValueError, OSError, AttributeError):  # not POSIX
        limit = 8 << 30
    for path in _cgroup_files(Path(cgroup_root), proc_cgroup, 'memory.max', 'memory', 'memory.limit_in_bytes'):
        text = _read(path)
        if text.isdigit():  # v2 writes 'max' for no limit
            limit = min(limit, int(text))
    return limit


def cpu_limit(cgroup_root: str | os.PathLike = '/sys/fs/cgroup', proc_cgroup: str | os.PathLike = '/proc/self/cgroup'
              ) -> int:
    """CPUs this process may use: those it may run on (a SLURM job's cpuset, `taskset`), or fewer
    where a cgroup's CPU quota says so (a container's `--cpus`). `os.cpu_count()` counts the
    machine's, so a job given 8 of 64 cores would start 16 decode processes on 8 of them."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    root = Path(cgroup_root)
    for path in _cgroup_files(root, proc_cgroup, 'cpu.max', 'cpu', 'cpu.cfs_quota_us'):
        quota = _read(path).split()
        if path.name == 'cpu.max':  # v2: "QUOTA PERIOD", QUOTA 'max' for none
            if len(quota) == 2 and quota[0].isdigit() and quota[1].isdigit() and int(quota[1]):
                cpus = min(cpus, math.ceil(int(quota[0]) / int(quota[1])))
        elif quota and quota[0].isdigit():  # v1: -1 for none
            period = _read(path.with_name('cpu.cfs_period_us'))
            if period.isdigit() and int(period):
                cpus = min(cpus, math.ceil(int(quota[0]) / int(period)))
    return max(1, cpus)


_UNITS = {'': 1, 'B': 1, 'KB': 10 ** 3, 'MB': 10 ** 6, 'GB': 10 ** 9, 'TB': 10 ** 12,
          'KIB': 1 << 10, 'MIB': 1 << 20, 'GIB': 1 << 30, 'TIB': 1 << 40}


def parse_bytes(value: int | str) -> int:
    """Bytes from an int or a size such as ``512MB`` or ``2GiB``; ValueError naming what to write."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip().upper().replace(' ', '')
    number = text.rstrip('KMGTIB')
    try:
        return int(float(number) * _UNITS[text[len(number):]])
    except (KeyError, ValueError):
        raise ValueError(f'{value!r} is not a size: give bytes or e.g. 512MB, 2GiB') from None


def format_bytes(n: float) -> str:
    """``1.5 GB``, ``12.0 MB``: a size for a message."""
    for unit, size in (('TB', 1e12), ('GB', 1e9), ('MB', 1e6), ('kB', 1e3)):
        if abs(n) >= size:
            return f'{n / size:.1f} {unit}'
    return f'{int(n)} B'
