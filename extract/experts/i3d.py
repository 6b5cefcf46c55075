"""I3D (Carreira & Zisserman, 2017): Inception-v1 inflated to 3-D, RGB stream.

Layer names follow the pytorch-i3d release (`rgb_imagenet.pt`, `rgb_charades.pt`), the checkpoint
format in which I3D weights circulate for PyTorch, so those files load without renaming. Padding
is TensorFlow's "SAME", computed from the input size, as in the original model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['InceptionI3d', 'POOLS']


def _same_pad(size: int, k: int, s: int) -> tuple[int, int]:
    total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
    return total // 2, total - total // 2


def _pad3d(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    (pt0, pt1), (ph0, ph1), (pw0, pw1) = (_same_pad(n, k, s) for n, k, s in zip(x.shape[2:], kernel, stride))
    return F.pad(x, (pw0, pw1, ph0, ph1, pt0, pt1))


class Unit3D(nn.Module):
    """Conv3d ("same") + BatchNorm (eps 1e-3, momentum 0.01) + ReLU; the logits layer has bias, no BN, no ReLU."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int] = (1, 1, 1),
                 stride: tuple[int, int, int] = (1, 1, 1), bn: bool = True, relu: bool = True) -> None:
        super().__init__()
        self.kernel, self.stride, self.relu = kernel, stride, relu
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride, bias=not bn)
        self.bn = nn.BatchNorm3d(cout, eps=0.001, momentum=0.01) if bn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_pad3d(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPool3dSame(nn.Module):
    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # zero padding, as the release does: inputs are post-ReLU (>= 0), so it equals TF's -inf padding
        return F.max_pool3d(_pad3d(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionModule(nn.Module):
    def __init__(self, cin: int, c: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        self.b0 = Unit3D(cin, c[0])
        self.b1a, self.b1b = Unit3D(cin, c[1]), Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(cin, c[3]), Unit3D(c[3], c[4], (3, 3, 3))
        self.b3a, self.b3b = MaxPool3dSame((3, 3, 3), (1, 1, 1)), Unit3D(cin, c[5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


#: (name, input channels, branch widths) of the mixed blocks, the paper's Fig. 3
_MIXED = {'Mixed_3b': (192, (64, 96, 128, 16, 32, 32)), 'Mixed_3c': (256, (128, 128, 192, 32, 96, 64)),
          'Mixed_4b': (480, (192, 96, 208, 16, 48, 64)), 'Mixed_4c': (512, (160, 112, 224, 24, 64, 64)),
          'Mixed_4d': (512, (128, 128, 256, 24, 64, 64)), 'Mixed_4e': (512, (112, 144, 288, 32, 64, 64)),
          'Mixed_4f': (528, (256, 160, 320, 32, 128, 128)), 'Mixed_5b': (832, (256, 160, 320, 32, 128, 128)),
          'Mixed_5c': (832, (384, 192, 384, 48, 128, 128))}


#: `InceptionI3d.pool`: ``release`` as pytorch-i3d's `extract_features`, ``mean`` the plain mean
POOLS = ('release', 'mean')


class InceptionI3d(nn.Module):
    """I3D trunk up to Mixed_5c; `forward` returns one (B, 1024) vector per clip.

    ``pool='release'``: the mean of what the release's `extract_features` returns, the average pool
    of Mixed_5c with kernel (2, 7, 7) at stride 1 (pytorch_i3d.py, ``nn.AvgPool3d(kernel_size=[2, 7,
    7], stride=(1, 1, 1))``): on a 64-frame 224x224 clip that is CE's "(1024x7)-matrix" of a window,
    whose 7 columns each average two of Mixed_5c's 8 time steps, so the first and last step count
    half. The kernel is cut to the map where the map is smaller (clips of 8 frames or fewer), which
    the release does not allow. ``pool='mean'``: the plain mean of the map (stores made before the
    setting).
    """

    def __init__(self, pool: str = 'release') -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f'pool must be one of {", ".join(map(repr, POOLS))}, got {pool!r}')
        self.pool = pool
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = InceptionModule(*_MIXED['Mixed_3b'])
        self.Mixed_3c = InceptionModule(*_MIXED['Mixed_3c'])
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        for name in ('Mixed_4b', 'Mixed_4c', 'Mixed_4d', 'Mixed_4e', 'Mixed_4f'):
            self.add_module(name, InceptionModule(*_MIXED[name]))
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = InceptionModule(*_MIXED['Mixed_5b'])
        self.Mixed_5c = InceptionModule(*_MIXED['Mixed_5c'])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.children():
            x = layer(x)
        if self.pool == 'release':
            x = F.avg_pool3d(x, tuple(min(k, n) for k, n in zip((2, 7, 7), x.shape[2:])), stride=1)
        return x.mean(dim=(2, 3, 4))
