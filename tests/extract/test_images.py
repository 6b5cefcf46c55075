"""Still images as one-frame videos (issue 23, item 1): image files of every kind written here with
Pillow, real models with random weights, MTCNN with its shipped weights, real stores."""
from __future__ import annotations

import re
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from extract.decoders import choose_decoder
from extract.images import ALPHA_BACKGROUND, MAX_IMAGE_ASPECT, MAX_IMAGE_PIXELS, STILL_IMAGE, read_image
from extract.run import main
from shared.datasets import load_manifest
from shared.datasets.folder import folder_name
from shared.media import ffmpeg_exe
from shared.store import DONE, FAILED, SKIPPED, check_store, open_store
from tests.extract.test_av_experts import _word2vec

#: tiny settings for the random-weight models (the face expert keeps its own: MTCNN must see the face)
SMALL = ['--set', 'object.arch=timm:resnet18', '--set', 'object.feature_dim=512', '--set', 'object.resize=[40]',
         '--set', 'object.input_size=32',
         '--set', 'action.r2plus1d_18.resize=[40]', '--set', 'action.r2plus1d_18.input_size=32',
         '--set', 'action.r2plus1d_18.clip_len=4', '--weights', 'random']


def _photo(size: tuple[int, int] = (96, 64)) -> np.ndarray:
    """A picture with detail everywhere (a rotation or a wrong conversion changes its features)."""
    import skimage.data

    return np.asarray(Image.fromarray(skimage.data.astronaut()).resize(size, Image.Resampling.BILINEAR))


def _exif_rotated_jpeg(path: Path, rgb: np.ndarray) -> Path:
    """`rgb` stored sideways with EXIF orientation 6 (turn 90 degrees clockwise to view), as phones do."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.rot90(rgb, 1)).save(path, quality=95, exif=exif)
    return path


def _upright_png(rotated: Path, path: Path) -> Path:
    """The rotated JPEG as viewers show it, stored losslessly: the same pixels, no EXIF."""
    with Image.open(rotated) as im:
        ImageOps.exif_transpose(im).save(path)
    return path


def _bomb_png(path: Path, side: int) -> Path:
    """A valid 1-bit `side` x `side` PNG of zeros: a few hundred KB on disk, side^2 pixels decoded."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack('>I', len(data)) + tag + data + struct.pack('>I', zlib.crc32(tag + data))

    z, row = zlib.compressobj(9), b'\0' * (1 + (side + 7) // 8)  # filter byte, then 8 pixels a byte
    body = b''.join(z.compress(row * 500) for _ in range(side // 500)) + z.compress(row * (side % 500)) + z.flush()
    ihdr = struct.pack('>IIBBBBB', side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', body) + chunk(b'IEND', b''))
    return path


def _images(d: Path) -> dict[str, np.ndarray]:
    """One image of each kind under `d`, and the RGB each should decode to (where it is exact)."""
    d.mkdir(parents=True, exist_ok=True)
    rgb = _photo()
    _exif_rotated_jpeg(d / 'rotated.jpg', rgb)
    _upright_png(d / 'rotated.jpg', d / 'upright.png')
    alpha = np.linspace(0, 255, rgb.shape[1]).astype(np.uint8)[None, :].repeat(rgb.shape[0], 0)
    Image.fromarray(np.dstack([rgb, alpha])).save(d / 'alpha.png')
    gray = rgb.mean(axis=2).astype(np.uint8)
    Image.fromarray(gray).save(d / 'gray.png')
    Image.fromarray(rgb).convert('CMYK').save(d / 'cmyk.jpg', quality=95)
    palette = Image.fromarray(rgb).quantize(16)
    other = Image.fromarray(255 - rgb).quantize(16)  # an animated GIF: only its first frame counts
    palette.save(d / 'palette.gif', save_all=True, append_images=[other], duration=100)
    Image.fromarray(rgb).save(d / 'lossless.webp', lossless=True)
    Image.fromarray(rgb).save(d / 'plain.bmp')
    gray16 = (gray.astype(np.uint16) << 8) | 0xFF  # the low byte set: only scaling gives the 8-bit gray back
    Image.fromarray(gray16).save(d / 'gray16.png')
    a = alpha[:, :, None].astype(np.uint32)
    over_white = ((rgb * a + np.uint32(ALPHA_BACKGROUND[0]) * (255 - a) + 127) // 255).astype(np.uint8)
    return {'lossless.webp': rgb, 'alpha.png': over_white, 'gray.png': np.dstack([gray] * 3),
            'palette.gif': np.asarray(palette.convert('RGB')), 'plain.bmp': rgb,
            'gray16.png': np.dstack([gray] * 3)}


def test_every_kind_of_image_decodes_to_upright_rgb(tmp_path: Path) -> None:
    expected = _images(tmp_path)
    for name, want in expected.items():
        got = read_image(str(tmp_path / name))
        assert got.dtype == np.uint8 and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    rgb = expected['lossless.webp']
    rotated = read_image(str(tmp_path / 'rotated.jpg'))
    np.testing.assert_array_equal(rotated, read_image(str(tmp_path / 'upright.png')))
    for lossy in (rotated, read_image(str(tmp_path / 'cmyk.jpg'))):  # CMYK: its inks as RGB, not 4 channels
        assert lossy.shape == rgb.shape and np.abs(lossy.astype(int) - rgb).mean() < 8  # JPEG's loss only
    assert read_image(str(tmp_path / 'upright.png'), short_side=32).shape == (32, 48, 3)  # the decoder's resize


def test_each_image_gives_one_row_and_clip_and_sound_experts_skip_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / 'images'
    _images(data)
    features = tmp_path / 'features'
    vectors = _word2vec(tmp_path / 'w2v.bin', ['astronaut'])
    popen = subprocess.Popen

    def no_ffmpeg(args, *a, **kw):  # noqa: ANN001, ANN202 - images are read without FFmpeg (COCO: 123k of them)
        assert 'ffmpeg' not in str(args[0] if isinstance(args, (list, tuple)) else args), args
        return popen(args, *a, **kw)

    monkeypatch.setattr(subprocess, 'Popen', no_ffmpeg)  # decoding runs in this process (--workers 0)
    experts = 'object,action.r2plus1d_18,audio,speech'
    assert main(['--dataset', f'folder:{data}', '--features-root', str(features), '--expert', experts, *SMALL,
                 '--set', f'word_vectors={vectors}', '--workers', '0', '--no-progress']) == 0
    ids = load_manifest(f'folder:{data}').video_ids
    assert f'done: 9 still images of {folder_name(data)} in ' in capsys.readouterr().out
    assert len(ids) == 9 and {'cmyk.jpg', 'palette.gif', 'gray16.png', 'lossless.webp', 'plain.bmp'} <= set(ids)
    stores = {e: open_store(features / folder_name(data) / f'{e}.zarr', warn_random=False) for e in experts.split(',')}
    rows = stores['object'].read()
    assert (rows.status == DONE).all() and (rows.lengths == 1).all() and rows.available.all(), rows.errors
    assert not rows.timestamps.any()  # one row, [0, 0]
    by = {v: i for i, v in enumerate(rows.video_ids)}
    feats = rows.features[:, 0]
    np.testing.assert_array_equal(feats[by['rotated.jpg']], feats[by['upright.png']])
    assert not np.array_equal(feats[by['gray.png']], feats[by['upright.png']])
    for name in ('action.r2plus1d_18', 'audio', 'speech'):
        r = stores[name].read()
        assert (r.status == SKIPPED).all() and not r.available.any() and not r.lengths.any(), name
        assert r.errors.tolist() == [STILL_IMAGE] * len(ids), name
    for s in stores.values():
        assert check_store(s.path).exit_code == 0, check_store(s.path).summary()


def test_the_astronaut_image_gets_a_face(tmp_path: Path) -> None:
    import skimage.data

    data = tmp_path / 'images'
    data.mkdir()
    _exif_rotated_jpeg(data / 'astronaut.jpg', np.asarray(Image.fromarray(skimage.data.astronaut()).resize((256, 256))))
    Image.fromarray(skimage.data.coffee()).save(data / 'coffee.png')
    assert main(['--dataset', f'folder:{data}', '--features-root', str(tmp_path / 'f'), '--expert', 'face',
                 '--weights', 'random', '--workers', '0', '--no-progress']) == 0
    rows = open_store(tmp_path / 'f' / folder_name(data) / 'face.zarr', warn_random=False).read()
    assert rows.video_ids.tolist() == ['astronaut.jpg', 'coffee.png']
    assert rows.status.tolist() == [DONE, DONE] and rows.available.tolist() == [True, False]
    assert rows.lengths[0] == 1 and not rows.timestamps[0].any() and np.abs(rows.rows(0)).sum() > 0


def test_bad_image_files_fail_with_a_reason_and_the_run_goes_on(tmp_path: Path) -> None:
    data = tmp_path / 'images'
    data.mkdir()
    _exif_rotated_jpeg(data / 'good.jpg', _photo())
    (data / 'empty.jpg').write_bytes(b'')
    whole = (data / 'good.jpg').read_bytes()
    (data / 'truncated.jpg').write_bytes(whole[: len(whole) // 2])
    (data / 'text.jpg').write_text('this is not an image\n' * 20)
    _bomb_png(data / 'bomb.png', 30000)  # 900 megapixels: over Pillow's own limit too
    side = int(MAX_IMAGE_PIXELS ** 0.5) + 100  # just over ours, under Pillow's
    _bomb_png(data / 'large.png', side)
    Image.new('RGB', (100_000, 1)).save(data / 'sliver.png')  # resized to 256 high it would be 25.6M wide
    # a video's frames have the images' limit: 2 frames of 1.2 MB as MJPEG, 300 MB each as RGB
    subprocess.run([ffmpeg_exe(), '-y', '-v', 'error', '-f', 'lavfi', '-i', f'color=c=gray:s={side}x{side}:r=2:d=1',
                    '-c:v', 'mjpeg', '-q:v', '31', str(data / 'large.avi')], check=True, capture_output=True)
    assert main(['--dataset', f'folder:{data}', '--features-root', str(tmp_path / 'f'), '--expert',
                 'object,action.r2plus1d_18', *SMALL, '--workers', '1', '--no-progress']) == 0
    for expert in ('object', 'action.r2plus1d_18'):
        rows = open_store(tmp_path / 'f' / folder_name(data) / f'{expert}.zarr', warn_random=False).read()
        why = dict(zip(rows.video_ids.tolist(), rows.errors.tolist()))
        status = dict(zip(rows.video_ids.tolist(), rows.status.tolist()))
        assert status == {'bomb.png': FAILED, 'empty.jpg': FAILED, 'good.jpg': DONE if expert == 'object'
                          else SKIPPED, 'large.avi': FAILED, 'large.png': FAILED, 'sliver.png': FAILED, 'text.jpg': FAILED,
                          'truncated.jpg': FAILED}
        assert why['empty.jpg'] == 'empty file (0 bytes)'
        assert 'truncated' in why['truncated.jpg']
        assert why['text.jpg'].startswith('not an image file')
        assert why['bomb.png'] == (f'image of 900000000 pixels is over the limit of {MAX_IMAGE_PIXELS} pixels '
                                   '(extract.images.MAX_IMAGE_PIXELS): refused as a possible decompression bomb')
        assert why['large.png'].startswith(f'image of {side}x{side} pixels is over the limit')
        assert why['large.avi'] == (f'video frames of {side}x{side} pixels are over the limit of {MAX_IMAGE_PIXELS} '
                                    'pixels (extract.images.MAX_IMAGE_PIXELS): refused before decoding')
        assert why['sliver.png'].startswith(f'image of 100000x1 pixels has one side over {MAX_IMAGE_ASPECT} times')
        assert check_store(tmp_path / 'f' / folder_name(data) / f'{expert}.zarr').exit_code == 0


def test_a_folder_of_videos_and_images_extracts_all(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / 'mixed'
    (data / 'photos').mkdir(parents=True)
    subprocess.run([ffmpeg_exe(), '-y', '-v', 'error', '-f', 'lavfi', '-i', 'testsrc2=size=64x48:rate=10:duration=2',
                    '-c:v', 'libx264', '-pix_fmt', 'yuv420p', str(data / 'clip.mp4')], check=True, capture_output=True)
    Image.fromarray(_photo()).save(data / 'photos' / 'a.JPG')  # suffixes in any case
    Image.fromarray(_photo()[::-1]).save(data / 'photos' / 'b.png')
    assert main(['--dataset', f'folder:{data}', '--features-root', str(tmp_path / 'f'), '--expert',
                 'object,action.r2plus1d_18', *SMALL, '--workers', '1']) == 0
    said = capsys.readouterr()  # the bar and the summary count files and stills, not 3 'videos'
    assert re.search(r'\d(file/s|s/file)', said.err) and 'video/s' not in said.err, said.err
    assert f'done: 1 video and 2 still images of {folder_name(data)} in ' in said.out and 'files/s' in said.out
    stores = {e: open_store(tmp_path / 'f' / folder_name(data) / f'{e}.zarr', warn_random=False).read()
              for e in ('object', 'action.r2plus1d_18')}
    obj, act = stores['object'], stores['action.r2plus1d_18']
    assert obj.video_ids.tolist() == ['clip.mp4', 'photos/a.JPG', 'photos/b.png']
    assert obj.status.tolist() == [DONE] * 3 and obj.lengths.tolist() == [2, 1, 1] and obj.available.all()
    assert act.status.tolist() == [DONE, SKIPPED, SKIPPED] and act.lengths.tolist() == [2, 0, 0]
    assert act.errors.tolist() == ['', STILL_IMAGE, STILL_IMAGE]


def test_auto_leaves_images_to_the_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr('extract.decoders.nvdec_available', lambda: '')  # as on a GPU with PyNvVideoCodec
    photo = tmp_path / 'big.png'
    Image.new('RGB', (1920, 1080)).save(photo)
    for clips in (False, True):  # NVDEC decodes video streams only: Pillow reads images in decord's processes
        assert choose_decoder('auto', 'cuda', [str(photo)] * 3, clips) == (
            'decord', 'still images (decoded by Pillow in CPU processes)')
