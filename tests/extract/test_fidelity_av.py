"""Fidelity of the audio, speech and face experts' inputs (issue 19, items 5 and 6): each input is
made by the project's path and by the reference that the weights were trained with, from the same
FFmpeg-made stereo files and skimage photos, and both go through the same random-weight model.

References and tolerances (the tests fail beyond them):
- VGGish: torchvggish's `wavfile_to_examples` (the TF AudioSet `vggish_input` ported; a stereo file
  is averaged over its channels) on a 16-bit stereo WAV at 16 kHz: log-mel max-abs 1e-4 (float32
  here, float64 there). At other rates the waveform is resampy's (`shared.resample`): 1e-6 max-abs of
  resampy 0.2.2's numbers (a committed fixture) and of the installed resampy's. Head: torchvggish's `VGG` (a ReLU after the last layer) and its
  `Postprocessor` (PCA, clip, 8-bit quantisation), embeddings max-abs 1e-4 and quantised values equal
  but for at most one step where a value sits on a rounding edge.
- whisper: `whisper.load_audio` + `log_mel_spectrogram` (padded with 30 s, as `transcribe` does):
  log-mel max-abs 0.01 and mean-abs 1e-4 (whisper's FFmpeg output is 16-bit, ours float32).
- face: facenet-pytorch's `MTCNN(PIL image)` with `post_process=True` (fixed_image_standardization)
  on the native frame. Our deliberate difference: MTCNN detects on the frame shrunk to a short side
  of 300 (`face.resize`, CE's detector input), and crops come from the native frame with the boxes
  scaled back. So: the same faces in the same order; crops equal (max-abs 1e-6, their embeddings
  1e-5) where no shrink happens (240p) and to MTCNN's crops of the native frame at our boxes
  everywhere; at 720p within `FACE_MEAN_TOL` mean-abs of the reference's crops (its boxes differ by
  a few pixels). The runner feeds the expert native frames (the shrink runs on its worker thread).
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from extract.experts import create_expert
from extract.experts._base import VideoInput
from shared.media import ffmpeg_exe, load_audio


def _ff(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), '-y', '-v', 'error', *args], check=True, capture_output=True)


def _tone(freq: int, rate: int, volume: float) -> list[str]:
    return ['-f', 'lavfi', '-i', f'sine=frequency={freq}:duration=3:sample_rate={rate},volume={volume}']


def _noise(rate: int) -> list[str]:
    return ['-f', 'lavfi', '-i', f'anoisesrc=duration=3:sample_rate={rate}:amplitude=0.2:seed=3']


@pytest.fixture(scope='module')
def stereo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """3-s stereo files whose channels differ (a tone left, noise right): a 16-bit WAV at 16 kHz and
    an MP4 with AAC at 44.1 kHz beside a video stream."""
    d = tmp_path_factory.mktemp('stereo')
    wav, mp4 = d / 'stereo.wav', d / 'stereo.mp4'
    _ff(*_tone(440, 16000, 0.8), *_noise(16000), '-filter_complex',
        '[0:a][1:a]join=inputs=2:channel_layout=stereo[a]', '-map', '[a]', '-c:a', 'pcm_s16le', str(wav))
    _ff('-f', 'lavfi', '-i', 'testsrc2=size=320x240:rate=25:duration=3', *_tone(440, 44100, 0.8), *_noise(44100),
        '-filter_complex', '[1:a][2:a]join=inputs=2:channel_layout=stereo[a]', '-map', '0:v', '-map', '[a]',
        '-c:v', 'libx264', '-pix_fmt', 'yuv420p', '-c:a', 'aac', '-shortest', str(mp4))
    return {'wav': wav, 'mp4': mp4}


def _ours(path: Path) -> np.ndarray:
    audio, err = load_audio(path)
    assert audio is not None and not err, err
    return audio


# -- VGGish -----------------------------------------------------------------------------------
def test_vggish_examples_are_waveform_to_examples_of_a_stereo_file(stereo: dict[str, Path]) -> None:
    from torchvggish import vggish_input

    from extract.experts.audio import VGGish, log_mel_examples

    ref = vggish_input.wavfile_to_examples(str(stereo['wav'])).detach()[:, 0]  # (K, 96, 64)
    ours = log_mel_examples(torch.from_numpy(_ours(stereo['wav'])))
    assert ours.shape == ref.shape == (3, 96, 64)
    assert (ours - ref).abs().max().item() <= 1e-4
    torch.manual_seed(0)
    model = VGGish().eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ours), model(ref.float()), rtol=0, atol=1e-4)


@pytest.mark.parametrize('samples, examples', [(15599, 0), (15600, 1), (30959, 1), (30960, 2)])
def test_vggish_examples_end_where_waveform_to_examples_ends_them(samples: int, examples: int) -> None:
    """The last whole 0.96 s example is there exactly when the reference has it: 15600 samples (400 +
    95 hops of 160) make 96 STFT frames, one example; a sample fewer, none (and 30960, 192 frames, two)."""
    from torchvggish import vggish_input

    from extract.experts.audio import example_count, log_mel_examples

    wave = np.random.default_rng(samples).uniform(-0.5, 0.5, samples).astype(np.float32)
    ref = vggish_input.waveform_to_examples(wave, 16000, return_tensor=False)  # (K, 96, 64)
    ours = log_mel_examples(torch.from_numpy(wave))
    assert example_count(samples) == len(ours) == len(ref) == examples
    if len(ref):
        assert np.abs(ours.numpy() - ref).max() <= 1e-4


#: the log-mel examples of one waveform differ in float32 (here) and float64 (the reference) by up to
#: this, in near-silent bands (log(x + 0.01) of tiny x): 6e-4 measured on 16 kHz input, where nothing is resampled
LOG_MEL_FLOAT32_TOL = 2e-3


def test_vggish_examples_of_44k_audio_are_waveform_to_examples(stereo: dict[str, Path]) -> None:
    """A decoded 44.1 kHz stereo AAC track against `waveform_to_examples` on the same track at its own
    rate (channel mean, then resampy to 16 kHz, the installed resampy's `kaiser_best`): the expert's
    waveform (`resampler` of the installed resampy's version) is resampy's, its examples theirs. FFmpeg's
    resampler, which the expert had before `resampler`, differed by 0.21 mean-abs in the top mel band."""
    import resampy
    from torchvggish import vggish_input

    from extract.experts.audio import log_mel_examples
    from extract.sampling import precheck

    raw = subprocess.run([ffmpeg_exe(), '-v', 'error', '-i', str(stereo['mp4']), '-map', '0:a:0', '-f', 'f32le',
                          'pipe:'], check=True, capture_output=True).stdout
    native = np.frombuffer(raw, np.float32).reshape(-1, 2).astype(np.float64)  # 44.1 kHz, both channels
    ref = vggish_input.waveform_to_examples(native, 44100, return_tensor=False)
    resampler = 'kaiser_best' if resampy.__version__.startswith(('0.1', '0.2')) else 'kaiser_best_v0.3'
    sampling = create_expert('audio', weights='random', resampler=resampler).cfg.sampling_spec()
    wave = precheck(0, str(stereo['mp4']), {'audio': sampling}).audio[resampler]
    want = resampy.resample(native.mean(axis=1), 44100, 16000)
    assert len(wave) == len(want) and np.abs(wave - want).max() <= 1e-6
    ours = log_mel_examples(torch.from_numpy(wave)).numpy()
    assert ours.shape == ref.shape == (3, 96, 64)
    assert np.abs(ours - ref).max() <= LOG_MEL_FLOAT32_TOL


def _reference_signals():
    """tests/extract/data/make_vggish_resampled.py, which made the reference waveforms."""
    import importlib.util

    path = Path(__file__).parent / 'data' / 'make_vggish_resampled.py'
    spec = importlib.util.spec_from_file_location('make_vggish_resampled', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('rate', [44100, 48000, 8000])
def test_vggish_input_is_vggish_input_with_resampy_0_2(rate: int, tmp_path: Path) -> None:
    """The audio expert's waveform of a 16-bit WAV, as the runner reads it (`precheck` with the
    expert's sampling), is `vggish_input`'s with resampy 0.2.2's `kaiser_best` (CE's and MMT's):
    reference numbers in tests/extract/data/vggish_resampled.npz, made by
    `make_vggish_resampled.py` there (run it with resampy 0.2.2; its docstring says how). Its log-mel
    examples are `waveform_to_examples` of that waveform, and a random VGGish embeds both alike.
    FFmpeg's resampler (`resampler=ffmpeg`, before) was 5e-4 (44.1 and 48 kHz) and 2e-2 (8 kHz) off in
    relative embedding error on these signals."""
    import wave

    from torchvggish import vggish_input

    from extract.experts.audio import VGGish, log_mel_examples
    from extract.sampling import precheck

    make = _reference_signals()
    ref = np.load(Path(__file__).parent / 'data' / 'vggish_resampled.npz')
    samples = make.signals(rate)
    assert make.digest(samples) == str(ref[f'sha256_{rate}']), 'the test signal is not the one the reference had'
    path = tmp_path / f'{rate}.wav'
    with wave.open(str(path), 'wb') as w:
        w.setnchannels(samples.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    expert = create_expert('audio', weights='random')
    assert expert.cfg.resampler == 'kaiser_best'
    ours = precheck(0, str(path), {'audio': expert.cfg.sampling_spec()}).audio['kaiser_best']
    want = ref[f'wave_{rate}']
    assert ours.shape == want.shape == (16000,)
    assert np.abs(ours - want).max() <= 1e-6, np.abs(ours - want).max()
    mine = log_mel_examples(torch.from_numpy(ours))
    theirs = vggish_input.waveform_to_examples(want.astype(np.float64), 16000, return_tensor=False)
    assert mine.shape == theirs.shape == (1, 96, 64)
    assert np.abs(mine.numpy() - theirs).max() <= LOG_MEL_FLOAT32_TOL
    torch.manual_seed(0)
    model = VGGish().eval()
    with torch.no_grad():
        a, b = model(mine), model(torch.from_numpy(theirs).float())
    assert ((a - b).norm() / b.norm()).item() <= 1e-5


@pytest.mark.parametrize('rate', [44100, 48000, 22050, 11025, 8000, 44056])
def test_resample_is_the_installed_resampy(rate: int) -> None:
    """`shared.resample` against the resampy installed beside torchvggish, with the filter of its
    version (float32 output: equal to 1e-7), on noise long enough for several blocks."""
    resampy = pytest.importorskip('resampy')
    import shared.resample as ours

    name = 'kaiser_best' if resampy.__version__.startswith(('0.1', '0.2')) else 'kaiser_best_v0.3'
    x = np.random.default_rng(rate).normal(size=rate * 2 + 7) * 0.1
    want = resampy.resample(x, rate, 16000)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ours, '_BLOCK', 5000)  # block edges inside the signal
        got = ours.resample(x.astype(np.float32), rate, 16000, name)
    assert got.dtype == np.float32 and len(got) == len(want)
    assert np.abs(got - want).max() <= 1e-7


def _torchvggish(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    from torchvggish.torchvggish import VGG, make_layers

    ref = VGG(make_layers(), postprocess=False).eval()
    ref.load_state_dict(state)
    return ref


def test_vggish_head_is_the_one_ce_and_mmt_used() -> None:
    """The default head has torchvggish's (and 2019-2020 TF VGGish's) final ReLU; `linear` is
    the pre-activation of TF VGGish since August 2020, the same weights."""
    from extract.experts.audio import VGGish

    torch.manual_seed(0)
    ours = VGGish().eval()
    ref = _torchvggish(ours.state_dict())
    linear = VGGish('linear').eval()
    linear.load_state_dict(ours.state_dict())
    x = torch.randn(4, 96, 64) * 3
    with torch.no_grad():
        want = ref(x[:, None])
        torch.testing.assert_close(ours(x), want, rtol=0, atol=1e-5)
        pre = linear(x)
    assert (pre < 0).any(), 'no negative pre-activation: the test cannot tell the heads apart'
    torch.testing.assert_close(pre.clamp(min=0), want, rtol=0, atol=1e-5)


def test_vggish_pca_postprocess_is_torchvggish_postprocessor(stereo: dict[str, Path], tmp_path: Path) -> None:
    """`postprocess=pca` on the expert: the rows are torchvggish's `Postprocessor` of its `VGG` on
    the reference examples (PCA parameters from a .pth file, as torchvggish publishes them)."""
    from torchvggish import vggish_input
    from torchvggish.torchvggish import Postprocessor

    rng = np.random.default_rng(0)
    vectors = torch.from_numpy(rng.normal(size=(128, 128)).astype(np.float32) * 0.3)
    means = torch.from_numpy(rng.normal(size=(128, 1)).astype(np.float32) * 0.1)
    torch.save({'pca_eigen_vectors': vectors, 'pca_means': means}, tmp_path / 'pca.pth')
    np.savez(tmp_path / 'pca.npz', pca_eigen_vectors=vectors.numpy(), pca_means=means.numpy())  # TF's form
    from extract.experts.audio import load_pca_params
    for got, want in zip(load_pca_params(tmp_path / 'pca.npz'), (vectors, means.reshape(-1))):
        assert torch.equal(got, want)
    expert = create_expert('audio', weights='random', postprocess='pca', pca_params=str(tmp_path / 'pca.pth'))
    expert.load('cpu')
    result = expert.process(VideoInput(audio=_ours(stereo['wav'])))

    post = Postprocessor.__new__(Postprocessor)  # its __init__ downloads the released parameters
    post._pca_matrix, post._pca_means = vectors, means
    with torch.no_grad():
        ref_rows = _torchvggish(expert.model.state_dict())(vggish_input.wavfile_to_examples(str(stereo['wav'])))
        want = post.postprocess(ref_rows).numpy()
    assert result.features.shape == want.shape == (3, 128)
    assert np.all(result.features == np.round(result.features)) and result.features.min() >= 0
    assert result.features.max() <= 255 and len(np.unique(result.features)) > 10
    step = np.abs(result.features - want)
    assert step.max() <= 1 and (step > 0).mean() < 0.01, f'{(step > 0).sum()} of {step.size} values differ'


def test_vggish_store_of_the_old_head_is_refused_not_extended() -> None:
    """Stores made before `head` existed had the linear head: `config_defaults` says so, so a run
    with the ReLU head refuses to extend them (shared.store's compatibility check)."""
    info = create_expert('audio', weights='random').store_info()
    assert info['config']['head'] == 'relu'
    assert info['config_defaults']['head'] == 'linear'
    assert info['config_defaults']['postprocess'] == 'none'


def test_vggish_store_resampled_by_ffmpeg_is_refused_not_extended(tmp_path: Path) -> None:
    """A store made before `resampler` (FFmpeg's resampling; no `resampler` in its config) is refused,
    naming the setting, rather than extended with rows resampled otherwise; `resampler=ffmpeg`
    extends it, and reads FFmpeg's waveform."""
    from extract.sampling import precheck
    from shared.store import StoreError, StoreSpec, create_store

    def spec(info: dict) -> StoreSpec:
        return StoreSpec(dataset='d', expert='audio', feature_dim=128, max_rows=1024, chunk_size=4, **info)

    new, old = create_expert('audio', weights='random'), create_expert('audio', weights='random', resampler='ffmpeg')
    before = old.store_info()
    before['config'] = {k: v for k, v in before['config'].items() if k != 'resampler'}
    create_store(tmp_path / 's.zarr', ['a', 'b'], spec(before))
    with pytest.raises(StoreError, match="resampler: store has 'ffmpeg' .made before this setting"):
        create_store(tmp_path / 's.zarr', ['a', 'b'], spec(new.store_info()))
    create_store(tmp_path / 's.zarr', ['a', 'b'], spec(old.store_info()))
    wav = tmp_path / 'tone.wav'
    subprocess.run([ffmpeg_exe(), '-v', 'error', *_tone(440, 44100, 0.5), str(wav)], check=True)
    audio = precheck(0, str(wav), {'new': new.cfg.sampling_spec(), 'old': old.cfg.sampling_spec()}).audio
    assert sorted(audio) == ['ffmpeg', 'kaiser_best']
    assert np.array_equal(audio['ffmpeg'], _ours(wav)) and not np.array_equal(audio['kaiser_best'], _ours(wav))


def test_audio_and_speech_inputs_come_from_one_decode_as_from_two(stereo: dict[str, Path],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """With the audio and speech experts both running, the file's audio was decoded twice (FFmpeg at
    16 kHz for whisper, at the stream's own rate for VGGish's resampy); now one FFmpeg run writes both,
    and each waveform is bit-identical to its own `load_audio` (AAC stereo at 44.1 kHz)."""
    import shared.media
    from extract.sampling import precheck

    audio, speech = create_expert('audio', weights='random'), create_expert('speech', weights='random')
    want = {r: _ours_by(stereo['mp4'], r) for r in ('ffmpeg', 'kaiser_best')}
    popen, decodes = subprocess.Popen, []

    def counting(cmd: list[str], **kwargs) -> subprocess.Popen:
        decodes.extend(['pcm_f32le' in cmd])
        return popen(cmd, **kwargs)

    monkeypatch.setattr(shared.media.subprocess, 'Popen', counting)
    got = precheck(0, str(stereo['mp4']), {'audio': audio.cfg.sampling_spec(), 'speech': speech.cfg.sampling_spec()})
    assert sum(decodes) == 1 and got.audio_error == ''
    assert sorted(got.audio) == sorted(want)
    for r, wave in want.items():
        assert got.audio[r].dtype == wave.dtype and np.array_equal(got.audio[r], wave), r


def _ours_by(path: Path, resampler: str) -> np.ndarray:
    audio, err = load_audio(path, 16000, resampler)
    assert audio is not None and not err, err
    return audio


# -- whisper ----------------------------------------------------------------------------------
def test_speech_input_is_whisper_load_audio_and_log_mel(stereo: dict[str, Path], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import whisper
    from whisper.audio import N_FRAMES, N_SAMPLES

    from extract.experts._whisper import whisper_input
    from extract.experts.speech import random_whisper

    (tmp_path / 'ffmpeg').symlink_to(ffmpeg_exe())  # whisper runs `ffmpeg` from PATH
    monkeypatch.setenv('PATH', f'{tmp_path}{os.pathsep}{os.environ.get("PATH", "")}')
    dims = dict(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=1, n_vocab=51865,
                n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=1)
    model = random_whisper(dims, seed=0).eval()
    for path in stereo.values():
        ref = whisper.log_mel_spectrogram(whisper.load_audio(str(path)), 80, padding=N_SAMPLES)
        ours = whisper_input(_ours(path), 80, 'cpu')
        assert ours.shape == ref.shape
        gap = (ours - ref).abs()
        assert gap.max().item() <= 0.01 and gap.mean().item() <= 1e-4, (path.name, gap.max().item())
        with torch.no_grad():
            a, b = model.encoder(ours[None, :, :N_FRAMES]), model.encoder(ref[None, :, :N_FRAMES])
        assert (a - b).abs().max().item() <= 0.01 * a.abs().max().item(), path.name


# -- face -------------------------------------------------------------------------------------
def _face_frames() -> list[np.ndarray]:
    """The astronaut (a real face) beside the coffee photo, on 4:3 and 16:9 frames at 240p and 720p."""
    from PIL import Image
    from skimage import data

    face, other = Image.fromarray(data.astronaut()), Image.fromarray(data.coffee())
    frames = []
    for w, h in ((320, 240), (426, 240), (960, 720), (1280, 720)):
        canvas = other.resize((w, h), Image.BILINEAR)
        canvas.paste(face.resize((h, h), Image.BILINEAR), ((w - h) // 3, 0))
        frames.append(np.asarray(canvas))
    return frames


#: mean-abs allowed, in fixed_image_standardization units, between our 720p crops (boxes found at a
#: short side of 300) and MTCNN's on the native frame (crops from the 300 frame: 0.085-0.11)
FACE_MEAN_TOL = 0.11


def test_face_crops_are_mtcnn_on_pil_images() -> None:
    from facenet_pytorch import MTCNN
    from facenet_pytorch.models.mtcnn import fixed_image_standardization
    from facenet_pytorch.models.utils.detect_face import extract_face
    from PIL import Image

    expert = create_expert('face', weights='random')
    expert.load('cpu')
    cfg = expert.cfg
    frames = _face_frames()
    inputs = [VideoInput(frames=f[None], timestamps=np.array([[0.0, 1.0]], np.float32)) for f in frames]
    seen: list[torch.Tensor] = []  # the crops the embedder is given, in order
    expert.model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    results = expert.process_batch(inputs)
    ours = torch.cat(seen)
    ref = MTCNN(image_size=160, margin=cfg.margin, min_face_size=cfg.min_face_size, keep_all=True,
                post_process=True, device='cpu')
    start = 0
    for frame, result in zip(frames, results):
        crops, probs = ref(Image.fromarray(frame), return_prob=True)
        assert crops is not None, f'no face found on {frame.shape}'
        crops = crops[torch.from_numpy(np.asarray(probs, np.float64) >= cfg.min_prob)]
        assert len(result.features) == len(crops) >= 1, frame.shape
        got = ours[start:start + len(crops)]
        # our boxes: found on the frame shrunk to 300, scaled to the native frame, cropped from its PIL image
        small = expert.own_frames(frame[None])[0]
        boxes, box_probs = ref.detect(Image.fromarray(small))
        scale = np.array([frame.shape[1] / small.shape[1], frame.shape[0] / small.shape[0]] * 2)
        mine = torch.stack([fixed_image_standardization(extract_face(Image.fromarray(frame), b * scale, 160, cfg.margin))
                            for b in boxes[np.asarray(box_probs, np.float64) >= cfg.min_prob]])
        assert (got - mine).abs().max().item() <= 1e-6, f'{frame.shape}: not cropped from the native frame'
        gap = (got - crops).abs()
        if min(frame.shape[:2]) <= cfg.resize[0]:  # no shrink: the reference's own pixels
            assert gap.max().item() <= 1e-6, f'{frame.shape}: crops max-abs {gap.max().item():.4f} from MTCNN on PIL'
            with torch.inference_mode():
                want = expert.model(crops).numpy()
            np.testing.assert_allclose(result.features, want, rtol=0, atol=1e-5, err_msg=str(frame.shape))
        else:
            assert gap.mean().item() <= FACE_MEAN_TOL, f'{frame.shape}: crops mean-abs {gap.mean().item():.4f}'
        start += len(crops)


def test_runner_gives_the_face_expert_native_frames(tmp_path: Path) -> None:
    """Through the runner, a 720p video's faces are cropped from its native frames: the shrink to
    300 for detection happens inside the expert, on its worker thread, not before it."""
    from extract.decode import decode_video
    from extract.run import main
    from shared.datasets.folder import folder_name
    from shared.store import open_store

    frame = _face_frames()[3]  # 1280x720
    data = tmp_path / 'videos'
    data.mkdir()
    subprocess.run([ffmpeg_exe(), '-y', '-v', 'error', '-f', 'rawvideo', '-pix_fmt', 'rgb24', '-s', '1280x720',
                    '-r', '1', '-i', 'pipe:0', '-c:v', 'libx264', '-crf', '12', '-pix_fmt', 'yuv420p',
                    str(data / 'face.mp4')], input=frame.tobytes(), check=True, capture_output=True)
    assert main(['--dataset', f'folder:{data}', '--features-root', str(tmp_path / 'f'), '--expert', 'face',
                 '--weights', 'random', '--workers', '0', '--no-progress']) == 0
    rows = open_store(tmp_path / 'f' / folder_name(data) / 'face.zarr', warn_random=False).read(ids=['face.mp4'])
    expert = create_expert('face', weights='random').load('cpu')
    decoded = decode_video(0, str(data / 'face.mp4'), {'face': expert.cfg.sampling_spec()})
    plan = decoded.plans['face']
    assert decoded.frames.shape[1:3] == (720, 1280)
    want = expert.process(VideoInput(frames=decoded.frames[plan.index[:, 0]], timestamps=plan.timestamps))
    # what the expert gives when handed frames shrunk before it (crops from the 300 frame)
    shrunk = expert.process(VideoInput(frames=expert.own_frames(decoded.frames[plan.index[:, 0]]),
                                       timestamps=plan.timestamps))
    n = int(rows.lengths[0])
    assert n == len(want.features) == len(shrunk.features) >= 1
    got = rows.features[0, :n].astype(np.float32)
    # random weights move little (2.7e-4 between the two), float16 storage 5e-5: nearer to the native crops
    assert np.abs(got - want.features).max() < 0.5 * np.abs(shrunk.features - want.features).max()


def test_a_face_store_with_crops_from_the_detection_frame_is_not_extended(tmp_path: Path) -> None:
    """Face stores made before `face.crop` cropped from the frame MTCNN detected on: refused, naming
    the setting; `--set face.crop=detected` continues one, and crops from that frame again."""
    from facenet_pytorch import MTCNN
    from PIL import Image

    from shared.store import StoreError, StoreSpec, create_store

    def spec(info):
        return StoreSpec(dataset='d', expert='face', feature_dim=512, max_rows=256, chunk_size=4, has_tokens=False,
                         **info)

    old = create_expert('face', weights='random').store_info()
    old['config'] = {k: v for k, v in old['config'].items() if k != 'crop'}
    create_store(tmp_path / 's.zarr', ['a', 'b'], spec(old))
    with pytest.raises(StoreError, match="crop: store has 'detected'|crop: store has detected"):
        create_store(tmp_path / 's.zarr', ['a', 'b'], spec(create_expert('face', weights='random').store_info()))
    detected = create_expert('face', weights='random', crop='detected')
    create_store(tmp_path / 's.zarr', ['a', 'b'], spec(detected.store_info()))
    detected.load('cpu')
    seen: list[torch.Tensor] = []
    detected.model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    frame = _face_frames()[3]  # 1280x720
    detected.process(VideoInput(frames=frame[None], timestamps=np.array([[0.0, 1.0]], np.float32)))
    cfg = detected.cfg
    crops, probs = MTCNN(image_size=160, margin=cfg.margin, min_face_size=cfg.min_face_size, keep_all=True,
                         post_process=True, device='cpu')(Image.fromarray(detected.own_frames(frame[None])[0]),
                                                          return_prob=True)
    crops = crops[torch.from_numpy(np.asarray(probs, np.float64) >= cfg.min_prob)]
    assert (torch.cat(seen) - crops).abs().max().item() <= 1e-5


# -- OCR --------------------------------------------------------------------------------------
def test_ocr_reads_each_seconds_decoded_frame_shrunk_to_480(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The frames the OCR expert hands easyocr (through `decode_video`'s plan, as the runner hands
    them): per second, the frame on screen at its middle, RGB, at native size when the short side
    is under `ocr.resize` (480) and else shrunk to it as PIL's bilinear filter shrinks it (within
    one level: we resize in float); each word's time is its frame's."""
    from PIL import Image

    import extract.experts._easyocr as easy
    from extract.decode import decode_video
    from gensim.models import Word2Vec

    wv = tmp_path / 'w2v.bin'
    Word2Vec([['text']] * 5, vector_size=8, min_count=1, workers=1, seed=1).wv.save_word2vec_format(str(wv), binary=True)
    expert = create_expert('ocr', weights='random', word_vectors=str(wv))
    expert.resolve()  # the word vectors; easyocr's networks are not needed: what reaches them is caught
    expert.engine = None
    seen: list[np.ndarray] = []
    monkeypatch.setattr(easy, 'readtext_batched', lambda _r, frames, *_a: seen.extend(frames) or
                        [[[('text', 1.0)] for _ in f] for f in frames])
    for (w, h), rate, fps in (((322, 242), '30000/1001', 30000 / 1001), ((1280, 720), '25', 25.0)):
        video = tmp_path / f'{w}x{h}.mp4'
        _ff('-f', 'lavfi', '-i', f'testsrc2=size={w}x{h}:rate={rate}:duration=2.5', '-vf', f'scale={w}:{h - (w == 322)}',
            '-c:v', 'libx264', '-pix_fmt', 'yuv444p', str(video))
        h -= w == 322  # 322x241
        raw = subprocess.run([ffmpeg_exe(), '-v', 'error', '-i', str(video), '-f', 'rawvideo', '-pix_fmt', 'rgb24',
                              'pipe:'], check=True, capture_output=True).stdout
        frames = np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)
        # the frames at 0.5, 1.5 and 2.5 s (past the end: the last frame)
        at = np.minimum(np.floor((np.arange(3) + 0.5) * fps + 1e-9).astype(int), len(frames) - 1)
        decoded = decode_video(0, str(video), {'ocr': expert.cfg.sampling_spec()})
        plan = decoded.plans['ocr']
        seen.clear()
        rows = expert.process_batch([VideoInput(frames=decoded.frames[plan.index[:, 0]], timestamps=plan.timestamps)])
        got = seen[0]
        scale = 480 / min(h, w)
        size = (round(w * scale), round(h * scale)) if scale < 1 else (w, h)
        want = np.stack([np.asarray(Image.fromarray(frames[i]).resize(size, Image.BILINEAR)) for i in at])
        assert got.shape == want.shape, (got.shape, want.shape)
        assert np.abs(got.astype(int) - want).max() <= (1 if scale < 1 else 0), (w, h)
        np.testing.assert_allclose(rows[0].timestamps, [[at[0] / fps, at[-1] / fps + 1 / fps]], atol=1e-3)
