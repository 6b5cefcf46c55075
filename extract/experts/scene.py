"""Scene expert: DenseNet-161 trained on Places365, 2208-d pooled features of 224x224 centre
crops at 1 fps (CE appendix A.5), from the CSAIL release checkpoint.

Frames are fed as CSAIL's own `run_placesCNN_basic.py` feeds its models: squashed to 256x256
(`trn.Resize((256,256))`, bilinear on the PIL image), centre crop 224, ImageNet mean and std.
"""
from __future__ import annotations

import re
from typing import Any

from torch import nn

from extract.experts import EXPERTS, build_expert
from extract.experts._base import Expert, ExpertCfg

__all__ = ['SceneExpert', 'default_cfgs', 'convert_places365']

PLACES365_FILE = 'densenet161_places365.pth.tar'
PLACES365_URL = 'http://places2.csail.mit.edu/models_places365/densenet161_places365.pth.tar'
# The CSAIL file predates torchvision's renaming of 'norm.1' to 'norm1' (and relu/conv alike).
_OLD_KEY = re.compile(r'^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$')


def convert_places365(sd: dict[str, Any]) -> dict[str, Any]:
    """CSAIL Places365 DenseNet-161 keys -> torchvision's, classifier dropped."""
    out = {}
    for key, value in sd.items():
        m = _OLD_KEY.match(key)
        key = m.group(1) + m.group(2) if m else key
        if not key.startswith('classifier.'):
            out[key] = value
    return out


class SceneExpert(Expert):
    def build(self) -> nn.Module:
        import torchvision.models as tvm

        model = tvm.densenet161(weights=None, num_classes=365)
        model.classifier = nn.Identity()
        return model

    def convert_state_dict(self, sd: dict[str, Any]) -> dict[str, Any]:
        return convert_places365(sd)


default_cfgs = {
    'scene': ExpertCfg(arch='torchvision:densenet161', weights=f'file:{PLACES365_FILE}', feature_dim=2208,
                       resize=(256, 256), input_size=224, license='cc-by (Places365)', origin_url=PLACES365_URL),
}


@EXPERTS.register('scene')
def densenet161_places365(**overrides: Any) -> SceneExpert:
    """DenseNet-161, Places365 (CE's scene expert)."""
    return build_expert(SceneExpert, default_cfgs, 'scene', overrides)
