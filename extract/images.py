"""Still images as one-frame videos (MEE, Miech et al., sec. 3-4: an image is a video without motion
and sound), decoded with Pillow in the same decode worker processes as videos (`extract.pool`).

An image gives every frame expert one row, timestamps [0, 0]; clip experts (motion) and audio
experts (sound) have nothing to take from it and mark it skipped, with the reason `STILL_IMAGE`.
Decoding reads the file once in the worker, with no FFmpeg process (COCO alone is 123k images).

Every image becomes 8-bit RGB, as the experts' ImageNet/Places pipelines expect:
- EXIF orientation is applied (`PIL.ImageOps.exif_transpose`): the picture as viewers show it.
- Grayscale, palette, CMYK, YCbCr and 1-bit images are converted by Pillow; a GIF gives its first frame.
- 16-bit grayscale keeps its top 8 bits (value >> 8): scaled, not clipped to 255 (Pillow's own
  conversion clips, which turns most of a 16-bit picture white). 16-bit RGB PNGs come out of
  Pillow's decoder as 8-bit RGB already, by the same top bits.
- Alpha (RGBA, LA, a palette or colour key with transparency) is composited over white
  (`ALPHA_BACKGROUND`), the page a viewer shows such a picture on. Dropping alpha, as
  `convert('RGB')` in timm's and torchvision's loaders does, would show the experts whatever
  colours the file keeps under transparent pixels (black in most editors' output, stale pixels in
  others), which nobody sees. An opaque image is unchanged either way.
"""
from __future__ import annotations

import re
import time
import warnings
from typing import TYPE_CHECKING

import numpy as np

from extract.sampling import (WHOLE, DecodedVideo, RowPlan, Sampling, Window, decode_short_side, first_error, precheck,
                              resize_dims)

if TYPE_CHECKING:  # Pillow is imported where an image is read
    from PIL import Image

__all__ = ['MAX_IMAGE_PIXELS', 'MAX_IMAGE_ASPECT', 'STILL_IMAGE', 'IMAGE_FORMATS', 'ALPHA_BACKGROUND', 'ImageError', 'decode_image',
           'read_image', 'video_frames_too_large']

#: the most pixels (width x height, from the file's header) an image may have: a larger one is failed
#: before its pixels are decoded (a 30000x30000 PNG of a few hundred KB would take 2.7 GB as RGB).
#: 100 megapixels is a 12000x8000 photo (a 300 MB RGB frame); COCO's images are about 640x480.
#: Video frames have the same limit (`video_frames_too_large`): a 2-frame 12000x12000 MJPEG of
#: 1.7 MB took 1.1 GB to decode its first frame with decord
MAX_IMAGE_PIXELS = 100_000_000

#: the longest side an image may have per pixel of its shortest: experts resize the short side up
#: to their input size, so a 100000x1 image of a few KB would become 256x25.6M (tens of GB).
#: 50:1 keeps every panorama a camera makes
MAX_IMAGE_ASPECT = 50

#: why clip and audio experts skip an image: it has no motion and no sound
STILL_IMAGE = 'still image'

#: Pillow decoders an image file may be read with (whatever its suffix says): those of
#: `shared.media.IMAGE_EXTENSIONS`, and no other of Pillow's many parsers
IMAGE_FORMATS = ('JPEG', 'PNG', 'WEBP', 'BMP', 'GIF')

#: what transparent pixels are composited over
ALPHA_BACKGROUND = (255, 255, 255)


class ImageError(ValueError):
    """An image file that cannot be decoded, or is refused (too many pixels)."""


def decode_image(row: int, path: str, samplings: dict[str, Sampling], window: Window = WHOLE) -> DecodedVideo:
    """`extract.decode.decode_video` for a still image: one frame, one row [0, 0] per frame expert,
    and `skipped` for clip and audio experts. Errors never raise: they become `error` (and
    `audio_error`, so that every expert fails the file alike)."""
    t0 = time.perf_counter()
    out = precheck(row, path, {}, window)  # the file checks; an image has no audio to read
    if not out.error:
        try:
            frame = read_image(path, decode_short_side(s for s in samplings.values() if s.kind == 'frames'))
        except ImageError as err:
            out.error = str(err)
    if out.error:
        out.audio_error = out.error
        out.seconds = time.perf_counter() - t0
        return out
    out.frames = frame[None]
    out.plans = {name: RowPlan(np.zeros((1, 1), np.int64), np.zeros((1, 2), np.float32))
                 for name, s in samplings.items() if s.kind == 'frames'}
    out.skipped = {name: STILL_IMAGE for name, s in samplings.items() if s.kind != 'frames'}
    out.seconds = time.perf_counter() - t0
    return out


def read_image(path: str, short_side: int = 0) -> np.ndarray:
    """The image at `path` as (H, W, 3) uint8 RGB, upright, short side shrunk to `short_side` if
    larger (0: native size); the conversions are those of the module's docstring.

    Raises:
        ImageError: not an image in `IMAGE_FORMATS`, a damaged file, more than `MAX_IMAGE_PIXELS`
            pixels or a side over `MAX_IMAGE_ASPECT` times the other (checked from the header, before
            any pixel is decoded).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():  # Pillow warns from 89 megapixels; the limit here is ours
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            with Image.open(path, formats=IMAGE_FORMATS) as im:
                width, height = im.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise ImageError(_too_large(f'{width}x{height} pixels'))
                if max(width, height) > MAX_IMAGE_ASPECT * max(1, min(width, height)):
                    raise ImageError(f'image of {width}x{height} pixels has one side over {MAX_IMAGE_ASPECT} times the '
                                     'other (extract.images.MAX_IMAGE_ASPECT): its short side resized to an '
                                     "expert's input would take too much memory")
                im.seek(0)  # a GIF's (or animated WebP's) first frame
                rgb = _to_rgb(ImageOps.exif_transpose(im))
    except Image.DecompressionBombError as err:  # Pillow's own check inside `open`, from twice its 89 megapixels
        size = re.search(r'\((\d+) pixels\)', str(err))
        raise ImageError(_too_large(f'{size.group(1)} pixels' if size else 'more pixels')) from None
    except UnidentifiedImageError:
        raise ImageError(f'not an image file of a known format ({", ".join(IMAGE_FORMATS)})') from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError) as err:  # Pillow's ways of saying "damaged"
        if isinstance(err, ImageError):
            raise
        raise ImageError(f'cannot decode image: {first_error(err)}') from None
    width, height = resize_dims(rgb.height, rgb.width, short_side)
    if width > 0:
        rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
    return np.array(rgb, dtype=np.uint8)


def video_frames_too_large(width: int, height: int) -> str:
    """Why a video whose frames are `width` x `height` (from its header, before any frame is
    decoded) is refused, as a still image over `MAX_IMAGE_PIXELS` is; '' if it is not."""
    if width * height <= MAX_IMAGE_PIXELS:
        return ''
    return (f'video frames of {width}x{height} pixels are over the limit of {MAX_IMAGE_PIXELS} pixels '
            '(extract.images.MAX_IMAGE_PIXELS): refused before decoding')


def _too_large(size: str) -> str:
    return (f'image of {size} is over the limit of {MAX_IMAGE_PIXELS} pixels (extract.images.MAX_IMAGE_PIXELS): '
            'refused as a possible decompression bomb')


def _to_rgb(im: Image.Image) -> Image.Image:
    """A Pillow image of any mode as an RGB one (16-bit by its top bits, alpha over `ALPHA_BACKGROUND`)."""
    from PIL import Image

    if im.mode == 'I' or im.mode.startswith('I;16'):  # 16-bit grayscale ('I' from older Pillow's PNG reader)
        gray = (np.clip(np.asarray(im, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2))
    if im.mode in ('RGBA', 'RGBa', 'LA', 'La', 'PA') or 'transparency' in im.info:
        rgba = np.asarray(im.convert('RGBA'), dtype=np.uint32)
        alpha = rgba[:, :, 3:]
        background = np.asarray(ALPHA_BACKGROUND, np.uint32)
        rgb = (rgba[:, :, :3] * alpha + background * (255 - alpha) + 127) // 255  # rounded
        return Image.fromarray(rgb.astype(np.uint8))
    return im.convert('RGB')

