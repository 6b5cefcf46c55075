"""easyocr's `Reader.readtext` over many frames at once: CRAFT on batches of same-size frames,
the recogniser on batches of word crops across frames and videos (the OCR expert's GPU path).

The steps, thresholds and helpers are easyocr's own (1.7), called with `readtext`'s defaults, so
each frame gets the words that `readtext(frame)` gives it:
- detection: the frame is padded to a multiple of 32 and normalised on the device (what
  `imgproc.resize_aspect_ratio` + `normalizeMeanVariance` do on the host, in the same float32
  operations); the score maps go to the host once per batch and easyocr's post-processing
  (`getDetBoxes`, `group_text_box`) runs per frame, as it has no batched form.
- recognition: `readtext` (batch_size 1) reads each box alone, padded to its own width
  (ceil(aspect) x 64 pixels, the last column repeated); crops are batched only with crops of
  that same width, so every crop sees exactly the input it would alone. The low-confidence
  second pass with more contrast is batched the same way.
What can still differ from per-frame `readtext` is floating point: convolution and LSTM kernels
may sum in another order for another batch size (cuDNN picks algorithms per shape), which moves
scores by rounding and can flip a threshold at its edge.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from extract.experts._batching import frame_batches

__all__ = ['readtext_batched', 'random_reader']

# Reader.readtext's defaults (easyocr 1.7.2)
_DETECT = dict(text_threshold=0.7, link_threshold=0.4, low_text=0.4)
_GROUP = dict(slope_ths=0.1, ycenter_ths=0.5, height_ths=0.5, width_ths=0.5, add_margin=0.1)
_MIN_SIZE = 20
_CANVAS, _MAG_RATIO = 2560, 1.0
_CONTRAST_THS, _ADJUST_CONTRAST = 0.1, 0.5
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def readtext_batched(reader: Any, frames: Sequence[np.ndarray], device: torch.device, detect_batch: int,
                     recognize_batch: int) -> list[list[list[tuple[str, float]]]]:
    """(text, confidence) per detected box, per frame, per video: `reader.readtext(frame)` for each.

    Args:
        reader: an ``easyocr.Reader`` (CRAFT detector) whose networks are on `device`.
        frames: each video's (L, H, W, 3) uint8 RGB frames; sizes may differ between videos.
        device: where the networks run.
        detect_batch: frames per CRAFT pass.
        recognize_batch: word crops per recogniser pass.
    """
    import cv2

    boxes: list[list[tuple[list[Any], list[Any]]]] = [[([], [])] * len(f) for f in frames]
    for batch, videos, rows in frame_batches(frames, detect_batch):
        for (v, k), found in zip(zip(videos.tolist(), rows.tolist()), _detect(reader, batch, device)):
            boxes[v][k] = found
    # every box's crop, in readtext's order within a frame: horizontal boxes, then free ones
    crops: list[tuple[int, int, Any, np.ndarray, int]] = []  # (video, row, box, crop, padded width)
    for v, video in enumerate(boxes):
        for k, (horizontal, free) in enumerate(video):
            if not horizontal and not free:
                continue
            # readtext takes an RGB frame for a BGR one when it makes the grey image: kept, to read alike
            grey = cv2.cvtColor(frames[v][k], cv2.COLOR_BGR2GRAY)
            for h_list, f_list in [([b], []) for b in horizontal] + [([], [b]) for b in free]:
                crops += [(v, k, box, crop, width) for box, crop, width in _crop(grey, h_list, f_list)]
    texts = _recognize(reader, [c[3] for c in crops], [c[4] for c in crops], device, recognize_batch)
    out: list[list[list[tuple[str, float]]]] = [[[] for _ in f] for f in frames]
    for (v, k, _, _, _), (text, conf) in zip(crops, texts):
        out[v][k].append((text, float(conf)))
    return out


def _detect(reader: Any, batch: np.ndarray, device: torch.device) -> list[tuple[list[Any], list[Any]]]:
    """CRAFT on (B, H, W, 3) same-size frames -> each frame's (horizontal, free) boxes, as
    `Reader.detect` gives them."""
    import cv2
    from easyocr.craft_utils import adjustResultCoordinates, getDetBoxes
    from easyocr.utils import diff, group_text_box

    h, w = batch.shape[1:3]
    ratio = min(_MAG_RATIO * max(h, w), _CANVAS) / max(h, w)
    if ratio != 1.0:  # only for frames over the canvas, or another mag_ratio: easyocr's resize, on the host
        size = (int(w * ratio), int(h * ratio))
        batch = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_LINEAR) for f in batch])
    x = torch.from_numpy(np.ascontiguousarray(batch)).to(device).permute(0, 3, 1, 2).float()
    x = F.pad(x, (0, -x.shape[3] % 32, 0, -x.shape[2] % 32))  # zeros, normalised below like the image
    mean = torch.tensor([m * 255.0 for m in _MEAN], dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor([s * 255.0 for s in _STD], dtype=torch.float32, device=device).view(1, 3, 1, 1)
    with torch.inference_mode():
        y, _ = reader.detector((x - mean) / std)
    maps = y.float().cpu().numpy()  # (B, H/2, W/2, 2): one copy per batch
    out = []
    for m in maps:
        found, _, _ = getDetBoxes(m[:, :, 0], m[:, :, 1], poly=False, estimate_num_chars=False, **_DETECT)
        found = adjustResultCoordinates(found, 1 / ratio, 1 / ratio)
        polys = [np.array(b).astype(np.int32).reshape(-1) for b in found]
        horizontal, free = group_text_box(polys, sort_output=True, **_GROUP)
        horizontal = [b for b in horizontal if max(b[1] - b[0], b[3] - b[2]) > _MIN_SIZE]
        free = [b for b in free if max(diff([c[0] for c in b]), diff([c[1] for c in b])) > _MIN_SIZE]
        out.append((horizontal, free))
    return out


def _crop(grey: np.ndarray, horizontal: list[Any], free: list[Any]) -> list[tuple[Any, np.ndarray, int]]:
    """One box's crop, as `Reader.recognize` makes it for that box alone, with its padded width."""
    import easyocr.easyocr
    from easyocr.utils import get_image_list

    image_list, max_width = get_image_list(horizontal, free, grey, model_height=easyocr.easyocr.imgH)
    return [(box, crop, int(max_width)) for box, crop in image_list]


def _recognize(reader: Any, crops: list[np.ndarray], widths: list[int], device: torch.device,
               batch: int) -> list[tuple[str, Any]]:
    """`get_text` for crops of many widths: batches of one width, then the second, higher-contrast
    pass for those under `_CONTRAST_THS`, keeping whichever reading is more confident."""
    first = _predict(reader, crops, widths, device, batch, 0.0)
    low = [i for i, (_, conf) in enumerate(first) if conf < _CONTRAST_THS]
    second = _predict(reader, [crops[i] for i in low], [widths[i] for i in low], device, batch, _ADJUST_CONTRAST)
    out = list(first)
    for i, again in zip(low, second):
        out[i] = first[i] if first[i][1] > again[1] else again
    if reader.model_lang == 'arabic':
        from bidi import get_display

        out = [(get_display(text), conf) for text, conf in out]
    return out


def _predict(reader: Any, crops: list[np.ndarray], widths: list[int], device: torch.device, batch: int,
             adjust_contrast: float) -> list[tuple[str, Any]]:
    """(text, confidence) per crop; the confidence is easyocr's own number, compared as it is."""
    import easyocr.easyocr
    from easyocr.recognition import AlignCollate, recognizer_predict
    from PIL import Image

    ignore = set(reader.character) - set(reader.lang_char)
    ignore_idx = [reader.character.index(c) + 1 for c in ignore]
    out: list[tuple[str, Any]] = [('', 0.0)] * len(crops)
    by_width: dict[int, list[int]] = {}
    for i, w in enumerate(widths):
        by_width.setdefault(w, []).append(i)
    for width, members in by_width.items():
        collate = AlignCollate(imgH=easyocr.easyocr.imgH, imgW=width, keep_ratio_with_pad=True,
                               adjust_contrast=adjust_contrast)
        for s in range(0, len(members), batch):
            part = members[s:s + batch]
            images = collate([Image.fromarray(crops[i], 'L') for i in part])
            # easyocr's own prediction and greedy decoding (`batch_max_length` is unused by CTC models)
            read = recognizer_predict(reader.recognizer, reader.converter, [images], int(width / 10), ignore_idx, {},
                                      'greedy', 5, device=device)
            for i, (text, conf) in zip(part, read):
                out[i] = (text, conf)
    return out


def random_reader(calibrate_on: np.ndarray) -> Any:
    """An English easyocr Reader built from its own modules with random weights: `weights: random`
    for tests and benchmarks (easyocr has no such option: it looks for its model files, and
    deletes those that fail its md5 check). CRAFT's last layer is rescaled so that its maps cross
    easyocr's thresholds on `calibrate_on` (N, H, W, 3) uint8 frames (some boxes per frame, not
    none or all, so detection and recognition both have work), and the recogniser's so that it
    gives confident letters."""
    from pathlib import Path

    import easyocr
    from easyocr.config import BASE_PATH, recognition_models
    from easyocr.craft import CRAFT
    from easyocr.detection import get_textbox
    from easyocr.model.vgg_model import Model
    from easyocr.utils import CTCLabelConverter

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        reader = easyocr.Reader.__new__(easyocr.Reader)  # no __init__: it would look for the model files
        model = recognition_models['gen2']['english_g2']
        reader.model_lang, reader.character, reader.device = 'english', model['characters'], 'cpu'
        reader.setLanguageList(['en'], model)
        reader.detect_network, reader.get_textbox = 'craft', get_textbox
        reader.detector = CRAFT().eval()
        reader.converter = CTCLabelConverter(reader.character, {}, {'en': str(Path(BASE_PATH) / 'dict' / 'en.txt')})
        reader.recognizer = Model(1, 256, 256, len(reader.converter.character)).eval()
    with torch.inference_mode():
        reader.recognizer.Prediction.weight.mul_(1000.0)
        reader.recognizer.Prediction.bias.zero_()
        x = torch.from_numpy(calibrate_on).permute(0, 3, 1, 2).float()
        mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
        std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
        y = reader.detector((x - mean) / std)[0]
        last = reader.detector.conv_cls[-1]
        for c, (lo, hi) in enumerate([(0.45, 0.8), (0.3, 0.5)]):  # text map, link map
            p90, p99 = np.percentile(y[..., c].numpy(), [90, 99.5])
            scale = (hi - lo) / (p99 - p90)
            last.weight[c] *= scale
            last.bias[c] = scale * (last.bias[c] - p90) + lo
    return reader
