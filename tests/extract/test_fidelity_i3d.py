"""Fidelity of `action.i3d` (CE's Action(KN)) against its reference, piergiaj/pytorch-i3d
(pytorch_i3d.py, extract_features.py, videotransforms.py) and CE's description of its I3D
features (CE supplementary A.5: 25 fps, 64-frame windows, height 256 keeping the aspect ratio, a
224x224 centre crop, "each temporal window produces a (1024x7)-matrix of features").

`_Reference` below is written here from that description, not copied: TensorFlow's "SAME" rule
(the output ceil(n / s), the padding total max((out - 1) * s + k - n, 0), the smaller half in
front), zero-padded max-pools, Conv3d without bias + BatchNorm3d(eps 1e-3, momentum 0.01) + ReLU,
the module names of the released checkpoints, and features as `extract_features` takes them: the
(2, 7, 7) average pool, stride 1, of Mixed_5c. Its random weights, saved as the release saves a
state dict, are loaded by the expert from the weights directory.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from extract.experts import create_expert
from extract.experts.i3d import InceptionI3d


def _tf_same(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    pads = []
    for n, k, s in zip(x.shape[2:], kernel, stride):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    (t0, t1), (h0, h1), (w0, w1) = pads
    return F.pad(x, (w0, w1, h0, h1, t0, t1))


class _Unit(nn.Module):
    def __init__(self, cin: int, cout: int, k=(1, 1, 1), s=(1, 1, 1), head: bool = False) -> None:
        super().__init__()
        self.k, self.s, self.head = k, s, head
        self.conv3d = nn.Conv3d(cin, cout, k, s, padding=0, bias=head)
        if not head:
            self.bn = nn.BatchNorm3d(cout, eps=0.001, momentum=0.01)

    def forward(self, x):
        x = self.conv3d(_tf_same(x, self.k, self.s))
        return x if self.head else F.relu(self.bn(x))


class _Pool(nn.MaxPool3d):
    def forward(self, x):
        return super().forward(_tf_same(x, self.kernel_size, self.stride))


class _Mixed(nn.Module):
    def __init__(self, cin: int, c) -> None:
        super().__init__()
        self.b0 = _Unit(cin, c[0])
        self.b1a, self.b1b = _Unit(cin, c[1]), _Unit(c[1], c[2], (3, 3, 3))
        self.b2a, self.b2b = _Unit(cin, c[3]), _Unit(c[3], c[4], (3, 3, 3))
        self.b3a, self.b3b = _Pool((3, 3, 3), (1, 1, 1)), _Unit(cin, c[5])

    def forward(self, x):
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


#: Inception-v1's branch widths (the I3D paper's Fig. 3); each block's input is the previous one's sum
_WIDTHS = [('Mixed_3b', (64, 96, 128, 16, 32, 32)), ('Mixed_3c', (128, 128, 192, 32, 96, 64)), 'MaxPool3d_4a_3x3',
           ('Mixed_4b', (192, 96, 208, 16, 48, 64)), ('Mixed_4c', (160, 112, 224, 24, 64, 64)),
           ('Mixed_4d', (128, 128, 256, 24, 64, 64)), ('Mixed_4e', (112, 144, 288, 32, 64, 64)),
           ('Mixed_4f', (256, 160, 320, 32, 128, 128)), 'MaxPool3d_5a_2x2',
           ('Mixed_5b', (256, 160, 320, 32, 128, 128)), ('Mixed_5c', (384, 192, 384, 48, 128, 128))]


class _Reference(nn.Module):
    """pytorch-i3d's InceptionI3d(400) as described above; `features` is its `extract_features`."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = _Unit(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = _Pool((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = _Unit(64, 64)
        self.Conv3d_2c_3x3 = _Unit(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = _Pool((1, 3, 3), (1, 2, 2))
        cin = 192
        for item in _WIDTHS:
            if isinstance(item, str):
                self.add_module(item, _Pool((3, 3, 3) if '4a' in item else (2, 2, 2), (2, 2, 2)))
            else:
                self.add_module(item[0], _Mixed(cin, item[1]))
                cin = item[1][0] + item[1][2] + item[1][4] + item[1][5]
        self.avg_pool = nn.AvgPool3d((2, 7, 7), (1, 1, 1))
        self.logits = _Unit(1024, 400, head=True)

    def trunk(self, x):
        for name, m in self.named_children():
            if name in ('avg_pool', 'logits'):
                break
            x = m(x)
        return x

    def features(self, x):
        """(B, 1024, T', 1, 1) at 224x224: `extract_features`, CE's (1024 x 7) at 64 frames."""
        return self.avg_pool(self.trunk(x))


def _random_release(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in the release's format, with random weights and BatchNorm statistics (so a
    BatchNorm that is skipped, swapped or given another eps changes the output)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ref = _Reference()
        for m in ref.modules():
            if isinstance(m, nn.Conv3d):  # activations keep their scale through the 57 layers
                nn.init.kaiming_normal_(m.weight, nonlinearity='relu')
            if isinstance(m, nn.BatchNorm3d):
                m.running_var.uniform_(0.002, 0.02)  # near eps = 1e-3, where eps 1e-5 would show
                m.running_mean.normal_(0, 0.1)
                m.weight.data = (m.running_var + 1e-3).sqrt() * torch.empty_like(m.weight).uniform_(0.8, 1.2)
                m.bias.data.normal_(0, 0.1)
    return ref.eval().state_dict()


@pytest.fixture(scope='module')
def release() -> dict[str, torch.Tensor]:
    return _random_release()


@pytest.fixture(scope='module')
def reference(release) -> _Reference:
    ref = _Reference().eval()
    ref.load_state_dict(release, strict=True)
    return ref


@pytest.fixture()
def loaded(release, tmp_path, monkeypatch):
    """`action.i3d` loaded from the release's file name in the weights directory."""
    monkeypatch.setenv('VIDEOEXPERTS_WEIGHTS_DIR', str(tmp_path))
    torch.save(release, tmp_path / 'rgb_imagenet.pt')
    return create_expert('action.i3d').load('cpu')


def test_module_tree_is_the_releases(release):
    """Every key of the release's state dict but the 400-way logits is ours, of the same shape, and
    no other (`load` refuses missing or unexpected keys); BatchNorm has the release's eps and
    momentum, and no convolution pads by itself (the padding is SAME, computed per input)."""
    ours = InceptionI3d().state_dict()
    trunk = {k: v.shape for k, v in release.items() if not k.startswith('logits.')}
    assert {k: v.shape for k, v in ours.items()} == trunk
    assert len(trunk) == 57 * 6  # 3 stem units and 9 blocks of 6: conv weight, BN's 4 and num_batches_tracked
    bns = [m for m in InceptionI3d().modules() if isinstance(m, nn.BatchNorm3d)]
    assert len(bns) == 57 and {(m.eps, m.momentum) for m in bns} == {(0.001, 0.01)}
    convs = [m for m in InceptionI3d().modules() if isinstance(m, nn.Conv3d)]
    assert all(m.padding == (0, 0, 0) and m.bias is None for m in convs)


@pytest.mark.parametrize('size', [(9, 35, 35), (10, 64, 48), (11, 33, 50)])
def test_same_padding_and_pools_match_the_reference(reference, loaded, size):
    """Mixed_5c's map equals the reference's at odd and even sizes, where TF's SAME pads
    asymmetrically (more at the back) and the strided pools round up."""
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    got = {}
    handle = loaded.model.Mixed_5c.register_forward_hook(lambda m, i, o: got.setdefault('map', o))
    with torch.inference_mode():
        loaded.model(x.contiguous(memory_format=torch.channels_last_3d))
        want = reference.trunk(x)
    handle.remove()
    expected = [math.ceil(n / s) for n, s in zip(size, (8, 32, 32))]
    assert got['map'].shape == want.shape == (2, 1024, *expected)
    err = float((got['map'] - want).abs().max() / want.abs().max())
    assert err < 1e-4, f'relative max-abs {err:.2e}'


@pytest.mark.slow
def test_features_are_the_mean_of_ces_window_matrix(reference, loaded):
    """A clip's feature is the mean of what `extract_features` gives (the (2, 7, 7) average pool,
    stride 1, over Mixed_5c: CE's (1024 x T'-1) window matrix), not the plain mean of Mixed_5c,
    which weights its first and last time steps twice as much."""
    x = torch.randn(1, 3, 24, 224, 224, generator=torch.Generator().manual_seed(2))  # T' = 3: two windows
    with torch.inference_mode():
        ours = loaded.forward(x)[0]
        pooled = reference.features(x)
        plain = reference.trunk(x).mean(dim=(2, 3, 4))[0]
    assert pooled.shape == (1, 1024, 2, 1, 1)
    want = pooled.mean(dim=(2, 3, 4))[0]
    assert ours.shape == (1024,)
    np.testing.assert_allclose(ours.numpy(), want.numpy(), rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert float((plain - want).abs().max()) > 1e-2 * float(want.abs().max())  # the two means differ here


def test_a_release_without_num_batches_tracked_loads(release, tmp_path, monkeypatch):
    """pytorch-i3d's checkpoints were saved by a PyTorch before BatchNorm's num_batches_tracked
    (0.4.1): such a file loads, with the same weights."""
    monkeypatch.setenv('VIDEOEXPERTS_WEIGHTS_DIR', str(tmp_path))
    old = {k: v for k, v in release.items() if not k.endswith('num_batches_tracked')}
    assert len(old) == len(release) - 57
    torch.save(old, tmp_path / 'rgb_imagenet.pt')
    sd = create_expert('action.i3d').load('cpu').model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in old.items() if not k.startswith('logits.'))


def test_a_store_made_before_is_refused_and_continued_with_its_settings(tmp_path):
    """A store made before `pool`, the rounded crop and `clip_placement` (the plain mean, the
    floored crop offset, centred clips; before decode_resize too) is refused naming them;
    ``pool=mean size_rounding=legacy clip_placement=centred decode_resize=1`` continues it. A bad
    value is a one-line error."""
    from extract.experts import ConfigError
    from shared.store import StoreError, StoreSpec, create_store

    def spec(e):
        return StoreSpec(dataset='d', expert='action.i3d', feature_dim=1024, max_rows=e.cfg.max_rows, chunk_size=4,
                         has_tokens=False, **e.store_info())

    old = create_expert('action.i3d', weights='random', pool='mean', size_rounding='legacy', clip_placement='centred',
                        decode_resize=1)
    info = spec(old)
    for k in ('pool', 'size_rounding', 'clip_placement', 'decode_resize'):
        del info.config[k]
    create_store(tmp_path / 's.zarr', ['a', 'b'], info)
    with pytest.raises(StoreError, match=r"config.clip_placement: store has 'centred' \(made before this setting.*"
                                         r"config.pool: store has 'mean'.*config.size_rounding: store has 'legacy'"):
        create_store(tmp_path / 's.zarr', ['a', 'b'], spec(create_expert('action.i3d', weights='random',
                                                                         decode_resize=1)))
    create_store(tmp_path / 's.zarr', ['a', 'b'], spec(old))
    with pytest.raises(ConfigError, match="pool must be one of 'release', 'mean', got 'max'"):
        create_expert('action.i3d', pool='max')


def test_plain_mean_pool_is_the_mean_of_mixed_5c(reference, release, tmp_path, monkeypatch):
    """``pool=mean`` keeps what the stores made before it hold."""
    monkeypatch.setenv('VIDEOEXPERTS_WEIGHTS_DIR', str(tmp_path))
    torch.save(release, tmp_path / 'rgb_imagenet.pt')
    e = create_expert('action.i3d', pool='mean').load('cpu')
    x = torch.randn(1, 3, 9, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        np.testing.assert_allclose(e.forward(x)[0].numpy(), reference.trunk(x).mean(dim=(2, 3, 4))[0].numpy(),
                                   rtol=1e-4, atol=1e-5)


def _reference_input(clip: np.ndarray) -> torch.Tensor:
    """(3, T, 224, 224): CE A.5's I3D input as the pytorch-i3d code forms it, for frames that are
    enlarged (240p: no antialiasing question arises). RGB as decoded (the release flips cv2's BGR,
    charades_dataset.py ``[:, :, [2, 1, 0]]``), the short side to 256 keeping the aspect ratio with
    the long side rounded (cv2.resize's output size), bilinear, a centre crop of 224 whose offset is
    ``int(np.round((h - th) / 2.))`` (videotransforms.CenterCrop: half to even), then
    ``(img / 255.) * 2 - 1``."""
    x = torch.from_numpy(clip).double().permute(0, 3, 1, 2) / 255.0
    h, w = x.shape[-2:]
    s = 256 / min(h, w)
    x = F.interpolate(x, size=(round(h * s), round(w * s)), mode='bilinear', align_corners=False)
    i, j = (int(np.round((n - 224) / 2.0)) for n in x.shape[-2:])
    x = x[..., i:i + 224, j:j + 224]
    return (x * 2 - 1).permute(1, 0, 2, 3).float()


@pytest.mark.parametrize('width, height', [(320, 240), (426, 240), (430, 240), (240, 320), (176, 144)])
def test_input_is_ces_and_the_releases(width, height):
    """25 fps, 64 frames, resize, crop, RGB and [-1, 1] as above; 430x240 (to 459x256, where the
    crop starts at round(117.5) = 118, not 117) and portrait 240x320 included."""
    from tests.extract.test_fidelity_action import _decoded_clip

    e = create_expert('action.i3d', weights='random')
    assert (e.cfg.clip_len, e.cfg.clip_fps, e.cfg.sampling, e.cfg.fps) == (64, 25.0, 'clips', 1.0)
    clip = _decoded_clip(width, height, frames=3)
    clip[..., 0] = 0  # no red: a swapped channel order shows
    ours = e.preprocess(torch.from_numpy(clip[None]))[0]
    ref = _reference_input(clip)
    assert ours.shape == ref.shape == (3, 3, 224, 224)
    err = float((ours - ref).abs().max()) / 2  # on [0, 1]
    assert err <= 1e-4, f'max-abs {err * 255:.3f}/255'  # float32 against float64


def test_rows_of_a_decoded_25fps_video_are_ces_windows_fed_as_the_reference(tmp_path):
    """Decoding and row planning included: CE A.5's rule, "Frames extracted at 25fps and processed
    with a window length of 64 frames and a stride of 25 frames" (its features'
    ``i3d_25fps_256px_stride25_offset0_inner_stride1``: from frame 0). A 6.2 s 320x240 video at
    25 fps (155 frames) has the 4 windows that fit, frames 25k to 25k + 63, at [k, k + 2.56) s,
    each fed as `_reference_input` feeds the FFmpeg-decoded frames. ``clip_placement=inside``
    (stores made before) keeps its 7 rows centred on each second's middle, 19 frames earlier."""
    import subprocess

    from extract.decode import decode_video
    from shared.media import ffmpeg_exe

    ff, video = ffmpeg_exe(), tmp_path / 'v.mp4'
    subprocess.run([ff, '-v', 'error', '-f', 'lavfi', '-i', 'testsrc2=size=320x240:rate=25:duration=6.2', '-c:v',
                    'libx264', '-pix_fmt', 'yuv444p', str(video)], check=True)
    raw = subprocess.run([ff, '-v', 'error', '-i', str(video), '-f', 'rawvideo', '-pix_fmt', 'rgb24', 'pipe:'],
                         check=True, capture_output=True).stdout
    frames = np.frombuffer(raw, np.uint8).reshape(-1, 240, 320, 3)
    assert len(frames) == 155
    e = create_expert('action.i3d', weights='random')
    assert e.cfg.clip_placement == 'strided'
    spec = e.cfg.sampling_spec()
    decoded = decode_video(0, str(video), {'ce': spec, 'inside': dataclasses.replace(spec, clip_placement='inside')})
    assert len(decoded.frames) == 155  # every frame is some row's: the plan's indices are frame numbers
    plan = decoded.plans['ce']
    n = math.floor((155 - 64) / 25) + 1  # the windows at a stride of 25 frames from frame 0 that fit
    assert n == 4 and plan.index.tolist() == [list(range(25 * k, 25 * k + 64)) for k in range(n)]
    np.testing.assert_allclose(plan.timestamps, [[k, k + 2.56] for k in range(n)], atol=1e-5)
    for row, idx in enumerate(plan.index):
        ours = e.preprocess(torch.from_numpy(decoded.frames[idx][None]))[0]
        err = float((ours - _reference_input(frames[idx])).abs().max()) / 2
        assert err <= 1 / 255, f'row {row}: max-abs {err * 255:.2f}/255'
    old = decoded.plans['inside'].index
    assert len(old) == 7 and old[1, 0] == 6 and old[-1, -1] == 154  # around 1.5 s; the last moved inside


def test_ces_windows_of_short_and_long_videos():
    """A video shorter than a window is one window from its first frame, its last frame repeated (a
    64-frame input, whose matrix is CE's 1024x7); a video of more windows than `max_rows` keeps
    `max_rows` of them, each on the stride grid, spread evenly; a 30 fps video's windows hold its
    frames at 25 fps."""
    from extract.sampling import plan_rows

    def times(n, rate=25.0):
        t = np.arange(n) / rate
        return np.stack([t, t + 1 / rate], axis=1)

    s = create_expert('action.i3d', weights='random').cfg.sampling_spec()
    short, stamps = plan_rows(times(40), s)
    assert short.tolist() == [list(range(40)) + [39] * 24]
    np.testing.assert_allclose(stamps, [[0, 1.6]], atol=1e-6)
    assert len(plan_rows(times(64), s)[0]) == 1 and len(plan_rows(times(89), s)[0]) == 2
    long, _ = plan_rows(times(25 * 200), dataclasses.replace(s, max_rows=10))
    windows = 200 - 2  # floor(197.44) + 1 windows of 2.56 s in 200 s
    assert long.shape == (10, 64) and set((long[:, 0] % 25).tolist()) == {0}
    assert long[:, 0].tolist() == [25 * int((k + 0.5) * windows / 10) for k in range(10)]
    thirty, _ = plan_rows(times(300, 30.0), s)
    assert len(thirty) == 8 and thirty[:, 0].tolist() == [30 * k for k in range(8)]
    assert thirty[1, :6].tolist() == [30, 31, 33, 34, 35, 36]  # the frames on screen at 1 + (j + 0.5) / 25 s


def test_the_runner_writes_ces_windows_and_refuses_a_store_of_centred_rows(tmp_path, capsys):
    """Through `python -m extract`: the store holds, per real 25 fps video, CE's windows and their
    times (10 s: 8 windows at [k, k + 2.56) s; 1.6 s: one, [0, 1.6) s). A store made with the
    rows centred on each second (``clip_placement=inside``, the default before) is refused, naming
    the setting, and ``--set action.i3d.clip_placement=inside`` continues it."""
    import subprocess

    from extract.run import main
    from shared.datasets import load_manifest
    from shared.media import ffmpeg_exe
    from shared.store import open_store, store_path

    videos = tmp_path / 'videos'
    videos.mkdir()
    for name, seconds in (('a', 10), ('b', 1.6)):
        subprocess.run([ffmpeg_exe(), '-v', 'error', '-f', 'lavfi', '-i', f'testsrc2=size=64x48:rate=25:duration={seconds}',
                        '-c:v', 'libx264', '-pix_fmt', 'yuv420p', str(videos / f'{name}.mp4')], check=True)
    small = ['--set', 'action.i3d.resize=[40]', '--set', 'action.i3d.input_size=32']

    def run(features, *extra):
        return main(['--dataset', f'folder:{videos}', '--features-root', str(features), '--expert', 'action.i3d',
                     '--weights', 'random', '--workers', '1', '--no-progress', *small, *extra])

    assert run(tmp_path / 'f') == 0
    got = open_store(store_path(tmp_path / 'f', load_manifest(f'folder:{videos}').name, 'action.i3d'),
                     warn_random=False).read()
    assert got.lengths.tolist() == [8, 1]
    np.testing.assert_allclose(got.timestamps[0, :8], [[k, k + 2.56] for k in range(8)], atol=1e-5)
    np.testing.assert_allclose(got.timestamps[1, :1], [[0, 1.6]], atol=1e-5)
    inside = ['--set', 'action.i3d.clip_placement=inside']
    assert run(tmp_path / 'old', *inside) == 0
    capsys.readouterr()
    assert run(tmp_path / 'old') == 1
    assert "config.clip_placement: store has 'inside', run wants 'strided'" in capsys.readouterr().err
    assert run(tmp_path / 'old', *inside) == 0


def test_the_last_window_that_fits_a_long_decoded_video_is_kept(tmp_path):
    """decord's frame times are float32: a 100.56 s video (2514 frames at 25 fps) ends at
    100.55999756 s, and its last window, frames 2450-2513, ends there too. It fits (CE's 99
    windows: floor((2514 - 64) / 25) + 1); counted with 1e-6 s to spare, it was dropped (98 rows)."""
    import subprocess

    from extract.decode import decode_video
    from shared.media import ffmpeg_exe

    video = tmp_path / 'v.mp4'
    subprocess.run([ffmpeg_exe(), '-v', 'error', '-f', 'lavfi', '-i', 'color=c=gray:size=32x32:rate=25', '-frames:v',
                    '2514', '-c:v', 'libx264', '-preset', 'ultrafast', '-pix_fmt', 'yuv420p', str(video)], check=True)
    spec = create_expert('action.i3d', weights='random').cfg.sampling_spec()
    decoded = decode_video(0, str(video), {'ce': spec})
    assert decoded.duration == pytest.approx(100.56, abs=1e-4) and not decoded.error
    index = decoded.plans['ce'].index
    assert len(index) == 99 <= spec.max_rows
    np.testing.assert_allclose(decoded.plans['ce'].timestamps[-1], [98, 100.56], atol=1e-4)
