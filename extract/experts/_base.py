"""The expert contract: a config (input contract + weights), a model, and pure compute on rows.

An expert receives rows that the decoder (`extract.sampling` plans them) has cut from one decode of the video (frames or
clips, uint8), preprocesses them on its device (resize, centre crop, normalise) and returns one
feature vector per row. It opens no files and writes no stores: the runner does that.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import zlib
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from extract.sampling import Sampling
from extract.weights import ResolvedWeights, WeightsError, load_state_dict, resolve_weights
from shared.store import VideoResult

__all__ = ['ExpertCfg', 'Expert', 'VideoExpert', 'VideoInput', 'IMAGENET_MEAN', 'IMAGENET_STD', 'KINETICS_MEAN', 'KINETICS_STD']

_logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
#: the largest side of a resized frame or crop (4K frames have a short side of 2160)
MAX_SIDE = 4096
#: frames converted to float and resized at once in `Expert.preprocess` (64 720p frames: 0.7 GB)
PREPROCESS_FRAMES = 64
#: `ExpertCfg.size_rounding`: how a short-side resize sizes and samples, and where the crop starts
SIZE_ROUNDINGS = ('legacy', 'torchvision', 'scale_factor', 'rounded')
#: settings of how frames are decoded, which only experts that take frames have
FRAME_DECODE_SETTINGS = ('decode_resize',)


@dataclasses.dataclass(frozen=True)
class ExpertCfg:
    """Everything about an expert's input and weights (timm's PretrainedCfg, for experts).

    Args:
        arch: the architecture (``timm:NAME`` or ``torchvision:NAME`` or an expert-specific id).
        weights: weight spec (see `extract.weights`), ``random`` only when asked for.
        feature_dim: D of the store.
        sampling: ``frames`` or ``clips``.
        fps: rows per second.
        clip_len: frames per clip (clips only).
        clip_fps: frame rate inside a clip; None for consecutive frames at the video's rate.
        clip_placement: where a clip at `clip_fps` lies (`extract.sampling.Sampling`): ``inside``
            (the default), inside the video, as a clip of consecutive frames is, with a time on a
            frame boundary taking the later frame; ``centred``, what stores made before this setting
            hold: repeating the first or last frame past the video's ends (a 64-frame I3D clip at
            25 fps around 0.5 s held frame 0 20 times) and, in 25 fps video, repeating and skipping
            frames inside (its times fell on frame boundaries, taken as float rounding went);
            ``strided``, CE's sliding windows, one from the start of each row's bin, those that fit
            in the video (`action.i3d`'s default).
        resize: ``[short_side]`` keeps the aspect ratio, ``[height, width]`` resizes to exactly that.
        input_size: side of the centre crop after resizing; 0 for no crop.
        antialias: bilinear resizing with antialiasing (as PIL and timm's transforms do); torchvision's
            video transforms (``weights.transforms()`` of S3D, R(2+1)D) resize with it off.
        size_rounding: how a ``[short_side]`` resize sizes the long side and where the centre crop
            starts. ``torchvision``: the long side truncated as in torchvision's
            ``_compute_resized_output_size`` (``int(short * long / short_in)``) and the crop offset
            rounded as in its ``center_crop`` (``int(round((x - c) / 2))``), as the reference
            transforms of torchvision's weights do. ``scale_factor``: ``F.interpolate`` with
            ``scale_factor=short_side / short_in``, so the long side is floored and both axes are
            sampled at that one scale, and the crop offset rounded, as ig65m-pytorch's ``Resize`` and
            ``CenterCrop`` (ig65m/transforms.py) feed its R(2+1)D-34 weights. ``rounded``: the long
            side rounded (cv2.resize's output size) and the crop offset rounded, as pytorch-i3d's
            ``videotransforms.CenterCrop`` (``int(np.round((h - th) / 2.))``). ``legacy`` (the default,
            what every store made before this setting used): the long side rounded, the crop offset
            ``(x - c) // 2``.
        decode_resize: 0 (the default): the expert's frames are the decoded RGB frames at the video's
            native size, which its own resize then shrinks as its reference transform does, whatever
            other experts run beside it. A factor k >= 1 is a speed option: the decoder may shrink
            frames (decord and FFmpeg in YUV, before the RGB conversion) to a short side of k times
            what this expert needs, or what the run's other experts need where that is larger; every
            frame expert of the run must ask for it. At k = 2, model inputs of sharp 720p video (FFmpeg's
            testsrc2) stay within mean-abs 1.1/255 and max-abs 48/255 of native decoding
            (tests/extract/test_fidelity_frames.py); k = 1 is what stores made before this setting
            used (there: mean-abs up to 2.9/255, max-abs up to 204/255).
        mean, std: normalisation of [0, 1] RGB.
        max_rows: the store's T (rows kept per video: 1 per `fps` up to T, and T rows spread evenly
            over a longer video). A dataset whose videos are long raises it (`extract.presets`).
        batch_size: rows per forward pass (across videos); 0 chooses by device: 32 on the CPU, and on
            CUDA 128 frames or 32 clips (an H100 ran SENet-154 at 886 images/s with 32, 2,406 with 128).
        cuda_graph: on CUDA, run a frame or clip expert's forward pass as a CUDA graph captured
            once per input shape at `batch_size` rows (smaller batches padded), instead of launching
            each kernel from Python. On an H100, object + scene extraction ran at 70.3 videos/s
            with graphs and 53.3 without (steady state, BENCHMARKS.md); a shape that cannot be
            captured runs eagerly.
        license, origin_url: where the weights come from, for the record.
    """

    arch: str
    weights: str
    feature_dim: int
    sampling: str = 'frames'
    fps: float = 1.0
    clip_len: int = 1
    clip_fps: float | None = None
    clip_placement: str = 'inside'
    resize: tuple[int, ...] = (256,)
    input_size: int = 224
    antialias: bool = True
    size_rounding: str = 'legacy'
    decode_resize: float = 0.0
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    max_rows: int = 128
    batch_size: int = 0
    cuda_graph: bool = True
    license: str = ''
    origin_url: str = ''

    def __post_init__(self) -> None:
        if len(self.resize) not in (1, 2) or min(self.resize) < 1:
            raise ValueError(f'resize must be [short_side] or [height, width], got {self.resize}')
        # decoded frames and model inputs are this large: beyond it, memory runs out before a row is done
        if max(self.resize) > MAX_SIDE or self.input_size > MAX_SIDE:
            raise ValueError(f'resize and input_size may be at most {MAX_SIDE} pixels, got resize {list(self.resize)}, '
                             f'input_size {self.input_size}')
        if self.batch_size < 0:
            raise ValueError('batch_size must be >= 1, or 0 to choose by device')
        if self.size_rounding not in SIZE_ROUNDINGS:
            raise ValueError(f'size_rounding must be one of {", ".join(SIZE_ROUNDINGS)}, got {self.size_rounding!r}')
        if not (self.decode_resize == 0 or 1 <= self.decode_resize < math.inf):
            raise ValueError(f'decode_resize must be 0 (decode at native size) or a factor >= 1, got {self.decode_resize}')
        if self.input_size < 0:
            raise ValueError(f'input_size must be >= 1, or 0 for no crop, got {self.input_size}')
        self.sampling_spec()  # fps, clip_len, max_rows, clip_placement: checked now, before a store is made with them

    def sampling_spec(self) -> Sampling:
        if self.sampling == 'audio':
            return Sampling('audio', max_rows=self.max_rows)
        decode_side = math.ceil(self.needed_side * self.decode_resize) if self.decode_resize else 0
        return Sampling(self.sampling, self.fps, self.clip_len, self.clip_fps, self.max_rows, decode_side,
                        self.clip_placement)

    @property
    def needed_side(self) -> int:
        """The short side of the frames this expert's own resize and crop work from, at least."""
        return max(self.resize[0] if len(self.resize) == 1 else min(self.resize), self.input_size)


class Expert:
    """Base class: subclasses implement `build` (random-initialised model whose forward gives
    (B, D) features) and may override `head_keys` / `convert_state_dict` for their checkpoints."""

    #: state-dict prefixes of classifier heads that the headless model does not have
    head_keys: tuple[str, ...] = ()
    per_video = False
    has_tokens = False
    modality = 'video'
    #: (setting, value) for a setting whose default changed what the expert computes: a store made
    #: before the setting existed counts as made with `value`, so it is refused, not extended
    legacy_defaults: tuple[tuple[str, Any], ...] = (('decode_resize', 1.0),)
    #: with `weights: random`, the part that is random and the part that keeps its real weights (they
    #: ship in its wheel), for the log: '' when the whole model is random
    random_part = real_part = ''

    def __init__(self, name: str, cfg: ExpertCfg) -> None:
        self.name = name
        self.cfg = cfg
        self.model: nn.Module | None = None
        self.device = torch.device('cpu')
        self.dtype = torch.float32
        self.weights: ResolvedWeights | None = None
        self._norm: tuple[torch.Tensor, torch.Tensor] | None = None  # mean, std on the device
        self._graphs: dict[tuple, _GraphedForward | None] = {}  # by input shape; None: capture failed, eager

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.name!r}, arch={self.cfg.arch!r}, weights={self.cfg.weights!r})'

    @property
    def settings(self) -> set[str]:
        """The config fields a run's settings (`--set`) may change: those that bear on what this
        expert computes. Audio experts take no frames, so the frame-decoding options are not theirs
        (a run-wide ``--set decode_resize=2`` would otherwise refuse their existing stores)."""
        names = {f.name for f in dataclasses.fields(self.cfg)}
        return names - set(FRAME_DECODE_SETTINGS) if self.modality == 'audio' else names

    # -- model ------------------------------------------------------------------------------
    def build(self) -> nn.Module:
        raise NotImplementedError

    def convert_state_dict(self, sd: dict[str, Any]) -> dict[str, Any]:
        """Checkpoint keys -> model keys; drops the classifier head by default."""
        return {k: v for k, v in sd.items() if not k.startswith(self.head_keys)} if self.head_keys else sd

    def resolve(self) -> ResolvedWeights:
        """Find the weights (no loading): the store records them before any work starts."""
        if self.weights is None:
            self.weights = resolve_weights(self.cfg.weights, self.cfg.origin_url)
        return self.weights

    def load(self, device: torch.device | str) -> Expert:
        """Build the model, load its weights, move it to `device`: channels_last, in bf16 on CUDA
        and fp32 on the CPU. channels_last pays on the CPU too (oneDNN): measured on 2 cores,
        1.1-1.5x the images/s for the 2D models and 2.1x the clips/s for S3D (BENCHMARKS.md)."""
        weights = self.resolve()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(zlib.crc32(self.name.encode()))  # the same 'random' weights in every process
            model = self.build()
        if not weights.random and weights.path is not None:  # None: the library manages its own files
            sd = self.convert_state_dict(load_state_dict(weights.path))
            missing, unexpected = model.load_state_dict(sd, strict=False)
            if missing or unexpected:
                raise WeightsError(f'{self.name}: {weights.path} does not fit {self.cfg.arch}: missing keys '
                                   f'{missing[:5]}, unexpected keys {unexpected[:5]}')
        self.device = torch.device(device)
        self.dtype = torch.bfloat16 if self.device.type == 'cuda' else torch.float32
        model = model.eval().to(self.device, self.dtype)
        model = model.to(memory_format=torch.channels_last_3d if self.cfg.sampling == 'clips' else torch.channels_last)
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model
        return self

    @property
    def batch_size(self) -> int:
        """Rows per forward pass on the loaded device (see `ExpertCfg.batch_size`)."""
        if self.cfg.batch_size:
            return self.cfg.batch_size
        if self.device.type == 'cuda':
            return 32 if self.cfg.sampling == 'clips' else 128
        return 32

    # -- compute ----------------------------------------------------------------------------
    def preprocess(self, rows: torch.Tensor) -> torch.Tensor:
        """uint8 rows (L, H, W, 3) or (L, T, H, W, 3) on the device -> normalised model input."""
        clips = rows.ndim == 5
        if clips:
            n, t = rows.shape[:2]
            rows = rows.reshape(n * t, *rows.shape[2:])
        # PREPROCESS_FRAMES frames at a time: frames are independent, and floats at native size are
        # 12 bytes a pixel (a batch of 32 clips of 16 720p frames: 5.7 GB at once)
        x = torch.cat([self._frames_input(r) for r in rows.split(PREPROCESS_FRAMES)])
        if clips:
            x = x.reshape(n, t, *x.shape[1:]).permute(0, 2, 1, 3, 4)  # (N, C, T, H, W)
        return x.contiguous()

    def _frames_input(self, rows: torch.Tensor) -> torch.Tensor:
        """uint8 frames (L, H, W, 3) -> (L, 3, h, w) normalised: resized, cropped as the cfg says."""
        x = rows.permute(0, 3, 1, 2).float().div_(255.0)
        h, w = x.shape[-2:]
        tv = self.cfg.size_rounding != 'legacy'  # torchvision's, ig65m-pytorch's, pytorch-i3d's crop offset: rounded
        if len(self.cfg.resize) == 1 and self.cfg.size_rounding == 'scale_factor':
            size = None  # ig65m-pytorch's Resize: one scale for both axes, the output size floored
        elif len(self.cfg.resize) == 1:
            target = self.cfg.resize[0]
            if self.cfg.size_rounding == 'torchvision':  # transforms.functional._compute_resized_output_size
                short, long = min(h, w), max(h, w)
                new_long = int(target * long / short)
                size = (target, new_long) if h <= w else (new_long, target)
            else:
                s = target / min(h, w)
                size = (max(1, round(h * s)), max(1, round(w * s)))
        else:
            size = (self.cfg.resize[0], self.cfg.resize[1])
        if size is None:
            x = F.interpolate(x, scale_factor=self.cfg.resize[0] / min(h, w), mode='bilinear', align_corners=False,
                              antialias=self.cfg.antialias)
        elif size != (h, w):
            x = F.interpolate(x, size=size, mode='bilinear', align_corners=False, antialias=self.cfg.antialias)
        c = self.cfg.input_size
        if c:
            dh, dw = x.shape[-2] - c, x.shape[-1] - c
            if tv:  # torchvision.transforms.functional.center_crop (Python's round: half to even, as np.round)
                top, left = max(0, int(round(dh / 2.0))), max(0, int(round(dw / 2.0)))
            else:
                top, left = max(0, dh // 2), max(0, dw // 2)
            x = x[..., top:top + c, left:left + c]
        # made once per device: a tensor built from a list per batch is a synchronous host-to-device copy
        if self._norm is None or self._norm[0].device != x.device:
            self._norm = (torch.tensor(self.cfg.mean, device=x.device).view(1, 3, 1, 1),
                          torch.tensor(self.cfg.std, device=x.device).view(1, 3, 1, 1))
        mean, std = self._norm
        return (x - mean) / std

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed rows -> (B, D) float32 features."""
        assert self.model is not None, 'call load() first'
        x = x.to(self.dtype).contiguous(memory_format=torch.channels_last_3d if x.ndim == 5 else torch.channels_last)
        if self.device.type == 'cuda' and self.cfg.cuda_graph and len(x) <= self.batch_size:
            graphed = self._graphed(x)
            if graphed is not None:
                return graphed(x)
        return self.model(x).float()

    def _graphed(self, x: torch.Tensor) -> _GraphedForward | None:
        key = (tuple(x.shape[1:]), x.dtype)
        if key not in self._graphs:
            try:
                self._graphs[key] = _GraphedForward(self.model, x, self.batch_size)
            except RuntimeError as err:  # an op that cannot be captured: this shape runs eagerly
                _logger.warning('%s: CUDA graph capture failed for input %s, running eagerly: %s',
                                self.name, tuple(x.shape[1:]), str(err).splitlines()[0] if str(err) else err)
                self._graphs[key] = None
        return self._graphs[key]

    @torch.inference_mode()
    def extract(self, rows: np.ndarray) -> np.ndarray:
        """Convenience for one batch of uint8 rows: (B, D) float32 numpy."""
        x = self.preprocess(torch.from_numpy(np.ascontiguousarray(rows)).to(self.device))
        return self.forward(x).cpu().numpy()

    def store_info(self) -> dict[str, Any]:
        """What the store's attributes say about this expert."""
        w = self.resolve()
        return {'model': self.cfg.arch, 'weights': w.source, 'weights_sha256': w.sha256,
                'sampling': {'kind': self.cfg.sampling, 'fps': self.cfg.fps, 'clip_len': self.cfg.clip_len,
                             'clip_fps': self.cfg.clip_fps},
                'input_size': [self.cfg.input_size] if self.cfg.input_size else list(self.cfg.resize),
                'config': dataclasses.asdict(self.cfg),
                'config_defaults': {**{f.name: f.default for f in dataclasses.fields(self.cfg)
                                       if f.default is not dataclasses.MISSING}, **dict(self.legacy_defaults),
                                    **self._placement_before()}}

    def _placement_before(self) -> dict[str, str]:
        """`clip_placement` of stores made before it: clips at clip_fps were centred; consecutive
        clips and frames are placed as they were."""
        return {'clip_placement': 'centred'} if self.cfg.sampling == 'clips' and self.cfg.clip_fps else {}


@dataclasses.dataclass
class VideoInput:
    """What a per-video expert receives: its sampled frames and their times, and/or the audio."""

    frames: np.ndarray | None = None  # (L, H, W, 3) uint8 at the decoded (native) size
    timestamps: np.ndarray | None = None  # (L, 2) seconds
    audio: np.ndarray | None = None  # mono float32 at the cfg's sample rate


class VideoExpert(Expert):
    """An expert that turns a whole video into a variable number of rows (faces, words, audio
    examples): `process` returns the video's `VideoResult` instead of one row per input row."""

    per_video = True
    has_tokens = False
    #: 'video' experts get frames, 'audio' experts get the waveform
    modality = 'video'

    def process(self, inputs: VideoInput) -> VideoResult:
        raise NotImplementedError

    def own_frames(self, frames: np.ndarray) -> np.ndarray:
        """Decoded (L, H, W, 3) uint8 frames at this expert's own size: the short side shrunk to
        ``resize[0]`` (never enlarged), in RGB with antialiased bilinear resizing (PIL's), so that
        what the expert sees does not depend on the decode size, which other experts may set.
        Called in `process_batch`, on the expert's own worker thread: the runner hands native frames."""
        h, w = frames.shape[1:3]
        scale = self.cfg.resize[0] / min(h, w)
        if scale >= 1.0 or not len(frames):
            return frames
        x = torch.from_numpy(np.require(frames, requirements=("C", "W"))).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode='bilinear',
                          align_corners=False, antialias=True)
        return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()

    @property
    def videos_per_batch(self) -> int:
        """Videos the runner hands to `process_batch` at once."""
        return 16

    def process_batch(self, inputs: list[VideoInput]) -> list[VideoResult]:
        """Several videos at once, one result each, in order. Experts whose models batch across
        videos (speech, OCR, face) override this; `process` is then `process_batch([x])[0]`. When
        it raises, the runner redoes the videos one at a time, so one bad video fails alone."""
        return [self.process(x) for x in inputs]


class _GraphedForward:
    """A model's forward pass captured once as a CUDA graph for `batch` rows of one input shape.

    Eager PyTorch dispatches each operator of a forward pass from Python (821 for SENet-154, 570
    for DenseNet-161), which costs the host milliseconds per batch; a replay is one launch.
    Smaller batches are padded to the captured size: rows are independent in eval mode, so the
    padding changes nothing, and every row runs the same kernels whatever its batch.
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, batch: int) -> None:
        device = example.device
        fmt = torch.channels_last_3d if example.ndim == 5 else torch.channels_last
        self.input = torch.zeros((batch, *example.shape[1:]), dtype=example.dtype, device=device)
        self.input = self.input.contiguous(memory_format=fmt)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm up outside the capture: lazy cuDNN/cuBLAS set-up
            for _ in range(2):
                model(self.input)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: NVDEC decode threads keep using CUDA while this thread captures
        with torch.cuda.graph(self.graph, capture_error_mode='thread_local'):
            self.output = model(self.input).float()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        self.input[:n].copy_(x)
        self.graph.replay()  # on the current stream, after the copy, before anything queued later
        return self.output[:n].clone()  # the next replay overwrites `output`
