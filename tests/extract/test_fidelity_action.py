"""Fidelity of the action experts' input (issue 19, items 1 and 2): the project's preprocessing of
decoded uint8 frames against torchvision's `weights.transforms()` on the same frames (S3D,
R(2+1)D-18), and against ig65m-pytorch's transform for the R(2+1)D-34 IG65M weights it publishes.

Frames are real: FFmpeg-made clips of 4:3 and 16:9 at 240p and 720p, decoded to RGB at their
native size, and skimage photos. Tolerance: after undoing the normalisation, the two inputs agree
within 1/255 max-abs on [0, 1] frames (torchvision resizes the uint8 tensor and rounds it back to
uint8, which alone accounts for up to 0.5/255; we resize in float). Through the same random-weight
model, the features agree within cosine 0.9999.
"""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
import torchvision.models.video as tvv
from skimage import data as skdata
from torchvision.transforms._presets import VideoClassification

from extract.experts import create_expert
from extract.experts._base import KINETICS_MEAN, KINETICS_STD
from shared.media import ffmpeg_exe

#: max-abs difference allowed between our input and the reference's, on [0, 1] frames
TOL = 1.0 / 255
CLIP_FRAMES = 4  # preprocessing is per frame; 4 frames of motion are enough to compare
#: (width, height): 4:3 and 16:9 at 240p and 720p
SIZES = [(320, 240), (426, 240), (960, 720), (1280, 720)]
PHOTOS = ['astronaut', 'coffee', 'chelsea', 'rocket']  # 512x512, 600x400, 451x300, 640x427


def _decoded_clip(width: int, height: int, frames: int = CLIP_FRAMES) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB: an FFmpeg-made H.264 clip decoded at its native size."""
    ff = ffmpeg_exe()
    enc = subprocess.run([ff, '-v', 'error', '-f', 'lavfi', '-i', f'testsrc2=size={width}x{height}:rate=25',
                          '-frames:v', str(frames), '-c:v', 'libx264', '-pix_fmt', 'yuv420p', '-f', 'matroska',
                          'pipe:'], check=True, capture_output=True).stdout
    raw = subprocess.run([ff, '-v', 'error', '-i', 'pipe:', '-f', 'rawvideo', '-pix_fmt', 'rgb24', 'pipe:'],
                         input=enc, check=True, capture_output=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)[:frames].copy()


def _photo_clip(name: str) -> np.ndarray:
    img = getattr(skdata, name)()
    return np.stack([img, np.roll(img, 7, axis=1)])  # two frames, a small pan


@pytest.fixture(scope='module')
def clips() -> dict[str, np.ndarray]:
    out = {f'{w}x{h}': _decoded_clip(w, h) for w, h in SIZES}
    out.update({name: _photo_clip(name) for name in PHOTOS})
    return out


def _ours(name: str, clip: np.ndarray, **overrides) -> torch.Tensor:
    """(C, T, h, w) normalised, through the expert's own preprocessing."""
    e = create_expert(name, weights='random', **overrides)
    return e.preprocess(torch.from_numpy(clip[None]))[0], e


def _unnormalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    return x * torch.tensor(std).view(-1, 1, 1, 1) + torch.tensor(mean).view(-1, 1, 1, 1)


def _compare(name: str, reference: VideoClassification, clip: np.ndarray, **overrides) -> float:
    ours, e = _ours(name, clip, **overrides)
    ref = reference(torch.from_numpy(clip).permute(0, 3, 1, 2))  # (C, T, h, w)
    assert tuple(reference.mean) == pytest.approx(e.cfg.mean) and tuple(reference.std) == pytest.approx(e.cfg.std)
    assert ours.shape == ref.shape
    return float((_unnormalise(ours, e.cfg.mean, e.cfg.std) - _unnormalise(ref, reference.mean, reference.std))
                 .abs().max())


@pytest.mark.parametrize('clip_name', [f'{w}x{h}' for w, h in SIZES] + PHOTOS)
def test_s3d_input_is_torchvision_transforms(clips, clip_name):
    """Item 1: S3D squashes to 256x256 with antialiasing off and crops 224 (not short side 256)."""
    err = _compare('action', tvv.S3D_Weights.KINETICS400_V1.transforms(), clips[clip_name])
    assert err <= TOL, f'{clip_name}: max-abs {err * 255:.2f}/255 > {TOL * 255:.0f}/255'


@pytest.mark.parametrize('clip_name', [f'{w}x{h}' for w, h in SIZES] + PHOTOS)
def test_r2plus1d_input_is_torchvision_transforms(clips, clip_name):
    """Item 2: 128x171 with antialiasing off, the 112 crop of 171 starting at 30 (rounded), not 29."""
    err = _compare('action.r2plus1d_18', tvv.R2Plus1D_18_Weights.KINETICS400_V1.transforms(), clips[clip_name])
    assert err <= TOL, f'{clip_name}: max-abs {err * 255:.2f}/255 > {TOL * 255:.0f}/255'


def _ig65m_reference(clip: np.ndarray) -> torch.Tensor:
    """(C, T, 112, 112) on [0, 1]: the transform that moabitcoin/ig65m-pytorch, the publisher of the
    R(2+1)D-34 IG65M weights, feeds them (ig65m/cli/extract.py with ig65m/transforms.py): frames to
    float / 255, the short side to 128 by `F.interpolate(scale_factor=128 / short)` (bilinear,
    align_corners False, no antialiasing; the aspect ratio kept), a centre crop of 112 whose offset
    is rounded. Written here from that description; normalisation left out (compared undone)."""
    x = torch.from_numpy(clip).float().div(255.0).permute(3, 0, 1, 2)
    x = torch.nn.functional.interpolate(x, scale_factor=128 / min(x.shape[-2:]), mode='bilinear', align_corners=False)
    top, left = (int(round((n - 112) / 2.0)) for n in x.shape[-2:])
    return x[..., top:top + 112, left:left + 112]


@pytest.mark.parametrize('clip_name', [f'{w}x{h}' for w, h in SIZES] + PHOTOS)
def test_r2plus1d_34_ig65m_input_is_its_publishers_transform(clips, clip_name):
    """R(2+1)D-34 IG65M is fed as its weights' publisher feeds them (short side 128, aspect kept,
    crop 112), not as torchvision's R(2+1)D-18 (a 128x171 squash)."""
    ours, e = _ours('action.r2plus1d_34_ig65m', clips[clip_name])
    assert (e.cfg.mean, e.cfg.std) == (KINETICS_MEAN, KINETICS_STD)  # ig65m-pytorch's Normalize
    ref = _ig65m_reference(clips[clip_name])
    assert ours.shape == ref.shape
    err = float((_unnormalise(ours, e.cfg.mean, e.cfg.std) - ref).abs().max())
    assert err <= TOL, f'{clip_name}: max-abs {err * 255:.2f}/255 > {TOL * 255:.0f}/255'


@pytest.mark.parametrize('clip_name', ['chelsea', 'rocket', '426x240'])
def test_short_side_resize_matches_torchvision(clips, clip_name):
    """Item 2: a ``[short_side]`` resize truncates the long side as torchvision does
    (640x427 -> 191x128, where rounding gives 192) and its crop offset is rounded."""
    reference = VideoClassification(crop_size=(112, 112), resize_size=(128,))
    err = _compare('action.r2plus1d_18', reference, clips[clip_name], resize=[128])
    assert err <= TOL, f'{clip_name}: max-abs {err * 255:.2f}/255 > {TOL * 255:.0f}/255'


@pytest.mark.parametrize('name, weights', [('action', tvv.S3D_Weights.KINETICS400_V1),
                                           ('action.r2plus1d_18', tvv.R2Plus1D_18_Weights.KINETICS400_V1)])
def test_same_random_model_gives_the_same_features(name, weights):
    """The inputs of a 16-frame 16:9 240p clip, through one random-weight model: features within
    cosine 0.9999."""
    clip = _decoded_clip(426, 240, frames=16)
    ours, e = _ours(name, clip)
    e.load('cpu')
    ref = weights.transforms()(torch.from_numpy(clip).permute(0, 3, 1, 2))
    a, b = e.forward(ours[None])[0], e.forward(ref[None])[0]
    cos = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
    assert cos >= 0.9999, f'feature cosine {cos:.6f}'


def test_other_frame_experts_keep_their_preprocessing():
    """Only the torchvision experts changed (the video ones, and ResNet-152 and timm's eval transform
    of SENet-154, tests/extract/test_fidelity_frames.py), and I3D's crop offset (rounded as
    pytorch-i3d's, tests/extract/test_fidelity_i3d.py): the others keep antialiased resizing and the
    crop/size arithmetic of the stores made before (object's 224x224 squash is CE's choice)."""
    for name in ('object.resnet152', 'object.timm_eval'):
        cfg = create_expert(name, weights='random').cfg
        assert (cfg.antialias, cfg.size_rounding) == (True, 'torchvision'), name
    for name in ('object', 'object.resnext101_wsl', 'scene', 'face'):
        cfg = create_expert(name, weights='random').cfg
        assert (cfg.antialias, cfg.size_rounding) == (True, 'legacy'), name
    cfg = create_expert('action.i3d', weights='random').cfg  # pytorch-i3d's rounded crop offset
    assert (cfg.antialias, cfg.size_rounding) == (True, 'rounded')
    assert create_expert('object', weights='random').cfg.resize == (224, 224)
    for name in ('action', 'action.r2plus1d_18'):
        cfg = create_expert(name, weights='random').cfg
        assert (cfg.antialias, cfg.size_rounding) == (False, 'torchvision'), name
    cfg = create_expert('action.r2plus1d_34_ig65m', weights='random').cfg
    assert (cfg.antialias, cfg.size_rounding) == (False, 'scale_factor')


#: what stores made before issue 19 recorded where today's settings differ (and they lack
#: antialias, size_rounding and decode_resize, whose defaults were True, 'legacy' and 1, and I3D's
#: pool, the plain mean, and clip_placement, 'centred' for clips at clip_fps)
OLD_CONFIG = {'action': {'resize': [256]}, 'action.r2plus1d_18': {},
              'action.r2plus1d_34_ig65m': {'resize': [128, 171]}, 'scene': {'resize': [256]},
              'object.resnet152': {}, 'object': {}, 'object.resnext101_wsl': {}, 'action.i3d': {}}
#: the experts whose old stores `decode_resize=1` continues: nothing else of theirs changed
CONTINUED = ('object', 'object.resnext101_wsl')


@pytest.mark.parametrize('name', list(OLD_CONFIG))
def test_a_store_made_with_the_old_preprocessing_is_not_extended(name, tmp_path):
    """A store made before issue 19 is refused by every frame and clip expert (decode_resize). With
    ``--set decode_resize=1`` it continues only where nothing else changed (`CONTINUED`); the others' preprocessing changed too (S3D's squash, the torchvision
    arithmetic of R(2+1)D-18 and ResNet-152, IG65M's publisher transform, scene's CSAIL squash),
    or I3D's pooling and crop offset (tests/extract/test_fidelity_i3d.py), so theirs are refused still, naming the
    setting."""
    from shared.store import StoreError, StoreSpec, create_store

    e = create_expert(name, weights='random')

    def spec(info):
        return StoreSpec(dataset='d', expert=name, feature_dim=e.cfg.feature_dim, max_rows=e.cfg.max_rows,
                         chunk_size=4, has_tokens=False, **info)

    old = e.store_info()
    old['config'] = {k: v for k, v in old['config'].items()
                     if k not in ('antialias', 'size_rounding', 'decode_resize', 'pool', 'clip_placement')}
    old['config'].update(OLD_CONFIG[name])
    create_store(tmp_path / 's.zarr', ['a', 'b'], spec(old))
    with pytest.raises(StoreError, match='decode_resize: store has 1.0'):
        create_store(tmp_path / 's.zarr', ['a', 'b'], spec(e.store_info()))
    resumed = spec(create_expert(name, weights='random', decode_resize=1).store_info())
    if name in CONTINUED:
        create_store(tmp_path / 's.zarr', ['a', 'b'], resumed)
    else:
        changed = {'scene': 'resize', 'action.i3d': 'clip_placement.*pool.*size_rounding',
                   'action.r2plus1d_34_ig65m': 'antialias.*clip_placement'}.get(name, 'antialias|size_rounding')
        with pytest.raises(StoreError, match=changed):
            create_store(tmp_path / 's.zarr', ['a', 'b'], resumed)
    if e.cfg.clip_fps is None:  # consecutive clips and frames are placed as they were
        assert 'clip_placement' not in str(pytest.raises(StoreError, create_store, tmp_path / 's.zarr', ['a', 'b'],
                                                          spec(e.store_info())).value)


def test_s3d_rows_of_a_decoded_video_are_the_clips_around_each_second(tmp_path):
    """Decoding and row planning included: a rotated 322x241 video at 29.97 fps through
    `decode_video` and the plan's frame indices (what the runner gathers for the batch) gives, per
    second, the 16 consecutive frames around the second's middle (the last clip ending at the last
    frame), fed as torchvision's S3D transform feeds them; the store's times are those frames'."""
    from extract.decode import decode_video

    ff = ffmpeg_exe()
    plain, video = tmp_path / 'plain.mp4', tmp_path / 'rotated.mp4'
    subprocess.run([ff, '-v', 'error', '-f', 'lavfi', '-i', 'testsrc2=size=322x242:rate=30000/1001:duration=2.2',
                    '-vf', 'scale=322:241', '-c:v', 'libx264', '-pix_fmt', 'yuv444p', str(plain)], check=True)
    subprocess.run([ff, '-v', 'error', '-display_rotation', '90', '-i', str(plain), '-c', 'copy', str(video)], check=True)
    raw = subprocess.run([ff, '-v', 'error', '-i', str(video), '-f', 'rawvideo', '-pix_fmt', 'rgb24', 'pipe:'],
                         check=True, capture_output=True).stdout
    frames = np.frombuffer(raw, np.uint8).reshape(-1, 322, 241, 3).copy()  # FFmpeg turns it upright: 241 wide
    fps, n = 30000 / 1001, len(frames)
    centre = np.minimum(np.floor((np.arange(3) + 0.5) * fps).astype(int), n - 1)  # 2.2 s: three rows
    first = np.clip(centre - 8, 0, n - 16)
    e = create_expert('action', weights='random')
    decoded = decode_video(0, str(video), {'action': e.cfg.sampling_spec()})
    plan = decoded.plans['action']
    assert plan.index.shape == (3, 16)
    ours = e.preprocess(torch.from_numpy(decoded.frames[plan.index]))
    reference = tvv.S3D_Weights.KINETICS400_V1.transforms()
    ref = torch.stack([reference(torch.from_numpy(frames[f:f + 16]).permute(0, 3, 1, 2)) for f in first])
    assert ours.shape == ref.shape == (3, 3, 16, 224, 224)
    err = float((_unnormalise(ours, e.cfg.mean, e.cfg.std) - _unnormalise(ref, reference.mean, reference.std)).abs().max())
    assert err <= TOL, f'max-abs {err * 255:.2f}/255'
    np.testing.assert_allclose(plan.timestamps, np.stack([first / fps, (first + 16) / fps], axis=1), atol=1e-3)


@pytest.mark.slow
def test_s3d_features_are_torchvisions_pooled_trunk():
    """S3D's feature is what torchvision's S3D puts before its classifier, the (2, 7, 7) average
    pool of `features`, averaged over what remains (one window at 16x224x224)."""
    e = create_expert('action', weights='random').load('cpu')
    ref = tvv.s3d(weights=None)
    ref.features.load_state_dict(e.model.features.state_dict())
    x = torch.randn(1, 3, 16, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = ref.eval().avgpool(ref.features(x)).mean(dim=(2, 3, 4))[0]
        got = e.forward(x)[0]
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-4 * float(want.abs().max()))
