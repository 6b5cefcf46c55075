"""The device a command runs on, checked before any work starts (both stages' `--device`)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from shared.config import ConfigError

__all__ = ['DEVICE_HELP', 'pick_device', 'torch_threads']

#: the --help of every command's --device (auto is its default)
DEVICE_HELP = 'auto (default: CUDA when present, else the CPU), cpu, cuda, cuda:1 ...'


def pick_device(requested: str) -> str:
    """`requested`, or for ``auto`` CUDA where there is one, else the CPU.

    Raises:
        ConfigError: `requested` is not a device name, or a CUDA device this machine does not have.
    """
    import torch

    if requested == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        raise ConfigError(f'--device {requested}: not a device (auto, cpu, cuda, cuda:N)') from None
    if device.type == 'cuda':
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise ConfigError(f'--device {requested}: no CUDA device is available here')
        if device.index is not None and device.index >= count:
            raise ConfigError(f'--device {requested}: this machine has {count} CUDA device(s), '
                              f'cuda:0 to cuda:{count - 1}')
    return requested


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[int]:
    """torch's intra-op threads at `n` for the block, and as they were after (code that runs
    `main` in process, tests and benchmarks, must not leave its setting behind)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
