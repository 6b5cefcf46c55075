"""Object (appearance) experts: ImageNet classifiers, global-average-pooled features (CE A.5).

CE's Obj(IN) is SENet-154 on frames resized to 224x224 (CE used 25 fps; we default to 1 fps,
``--set fps=25`` reproduces theirs); Obj(IG) is ResNeXt-101 32x8d WSL with the same frame
preparation; the support-set model uses torchvision's ResNet-152 (resize 256, centre crop 224).

The 224x224 squash is CE's choice, kept as the default on purpose: it is what CE's released
features were made with, though it is not the transform the weights were evaluated with. That one,
timm's `resolve_data_config` + `create_transform` for SENet-154 (short side 256, centre crop 224,
bilinear, antialiased), is the `object.timm_eval` variant.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from extract.experts import EXPERTS, build_expert
from extract.experts._base import Expert, ExpertCfg

__all__ = ['ObjectExpert', 'default_cfgs']


class ObjectExpert(Expert):
    """A timm or torchvision image classifier with its head removed: (B, 3, H, W) -> (B, 2048)."""

    def build(self) -> nn.Module:
        lib, _, arch = self.cfg.arch.partition(':')
        if lib == 'timm':
            import timm

            return timm.create_model(arch, pretrained=False, num_classes=0)
        if lib == 'torchvision':
            import torchvision.models as tvm

            model = getattr(tvm, arch)(weights=None)
            model.fc = nn.Identity()
            return model
        raise ValueError(f'unknown object architecture {self.cfg.arch!r}')

    @property
    def head_keys(self) -> tuple[str, ...]:  # type: ignore[override]
        return ('last_linear.',) if 'senet' in self.cfg.arch else ('fc.',)


default_cfgs = {
    'object': ExpertCfg(arch='timm:legacy_senet154', weights='timm:legacy_senet154.in1k', feature_dim=2048,
                        resize=(224, 224), input_size=0, license='apache-2.0',
                        origin_url='https://github.com/huggingface/pytorch-image-models'),
    # timm's eval transform: resize int(224 / crop_pct 0.875) = 256 (torchvision's Resize arithmetic), centre crop 224
    'object.timm_eval': ExpertCfg(arch='timm:legacy_senet154', weights='timm:legacy_senet154.in1k', feature_dim=2048,
                                  resize=(256,), input_size=224, size_rounding='torchvision', license='apache-2.0',
                                  origin_url='https://github.com/huggingface/pytorch-image-models'),
    'object.resnext101_wsl': ExpertCfg(arch='timm:resnext101_32x8d', weights='timm:resnext101_32x8d.fb_wsl_ig1b_ft_in1k',
                                       feature_dim=2048, resize=(224, 224), input_size=0, license='cc-by-nc-4.0',
                                       origin_url='https://github.com/facebookresearch/WSL-Images'),
    # as its `weights.transforms()`: torchvision's size and crop arithmetic
    'object.resnet152': ExpertCfg(arch='torchvision:resnet152', weights='torchvision:ResNet152_Weights.IMAGENET1K_V1',
                                  feature_dim=2048, resize=(256,), input_size=224, size_rounding='torchvision',
                                  license='bsd-3-clause',
                                  origin_url='https://github.com/pytorch/vision'),
}



@EXPERTS.register('object')
def senet154(**overrides: Any) -> ObjectExpert:
    """SENet-154, ImageNet (CE's Obj(IN), MMT's appearance)."""
    return build_expert(ObjectExpert, default_cfgs, 'object', overrides)


@EXPERTS.register('object.timm_eval')
def senet154_timm_eval(**overrides: Any) -> ObjectExpert:
    """SENet-154, ImageNet, fed as timm's eval transform (resize 256, centre crop 224), not CE's squash."""
    return build_expert(ObjectExpert, default_cfgs, 'object.timm_eval', overrides)


@EXPERTS.register('object.resnext101_wsl')
def resnext101_wsl(**overrides: Any) -> ObjectExpert:
    """ResNeXt-101 32x8d, Instagram-pretrained, ImageNet-finetuned (CE's Obj(IG))."""
    return build_expert(ObjectExpert, default_cfgs, 'object.resnext101_wsl', overrides)


@EXPERTS.register('object.resnet152')
def resnet152(**overrides: Any) -> ObjectExpert:
    """ResNet-152, ImageNet (the support-set model's appearance feature)."""
    return build_expert(ObjectExpert, default_cfgs, 'object.resnet152', overrides)
