"""The demo's still images (issue 23, item 5): `python -m shared.datasets.demo --images` writes JPEG
stills of the demo photos with captions from their facts, and the `demo_images` adapter reads them."""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.datasets import load_manifest
from shared.datasets.__main__ import main as datasets_main
from shared.datasets.demo import (IMAGES_FILE, SUBJECTS, DemoCfg, DemoImagesCfg, _images_plan, _plan, generate_images,
                                  main)
from shared.datasets.manifest import AnnotationsMissing

#: the word of each photo's noun phrase that every caption names
_NOUN = {k: phrase.split()[-1] for k, (_, phrase) in SUBJECTS.items()}


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob('*')) if p.is_file()}


def test_generator_writes_stills_the_adapter_reads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(['--images', '--out', str(tmp_path / 'demo_images'), '--seed', '3']) == 0
    assert 'wrote 40 images of 10 photos' in capsys.readouterr().out
    m = load_manifest('demo_images', tmp_path)
    assert len(m) == 40 and all(p.suffix == '.jpg' and p.is_file() for p in m.paths)
    s = m.split('official')
    assert (len(s.train), len(s.val), len(s.test)) == (20, 10, 10)
    assert sorted(s.train + s.val + s.test) == sorted(m.video_ids)
    # the label says which photo each still shows: 2/1/1 stills of every photo in train/val/test
    for part, n in (('train', 2), ('val', 1), ('test', 1)):
        assert Counter(m.labels[v] for v in s.ids(part)) == {k: n for k in SUBJECTS}
    data = json.loads((tmp_path / 'demo_images' / IMAGES_FILE).read_text(encoding='utf-8'))
    worded = 0
    for im in data['images']:
        caps = m.captions[im['id']]
        assert len(caps) == 5 and len(set(caps)) == 5 and m.labels[im['id']] == im['subject']
        assert all(_NOUN[im['subject']] in c for c in caps)  # every caption names the photo
        assert any(im['word'] in c for c in caps) if im['word'] else not any('word' in c or 'text' in c for c in caps)
        assert im['face'] == (im['subject'] == 'astronaut')
        with Image.open(m.path(im['id'])) as still:
            assert still.format == 'JPEG' and still.mode == 'RGB' and still.size == (320, 240)
            pixels = np.asarray(still)
        assert pixels.std() > 3  # a picture, not a flat image (the moon is a dim one)
        worded += bool(im['word'])
        if im['word']:  # the word's white box near the bottom, as in the videos
            assert (pixels[150:230].min(axis=-1) > 235).mean() > 0.05
    assert 10 < worded < 30
    m.paths[0].unlink()  # the datasets CLI counts them as what they are
    assert datasets_main(['demo_images', '--data-root', str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert 'image files: 39 found, 1 missing' in out
    assert out.startswith('demo_images: 40 still images, 200 captions, 10 classes'), out  # was '40 videos'


def test_counts_of_files_name_stills_as_stills() -> None:
    from shared.media import count_media, media_unit

    assert [count_media(p) for p in (['a.mp4'], ['a.mp4', 'b.avi'], [])] == ['1 video', '2 videos', '0 videos']
    assert count_media(['a.JPG', 'b.png']) == '2 still images' and media_unit(['a.JPG', 'b.png']) == 'image'
    assert count_media(['a.mp4', 'b.jpg']) == '1 video and 1 still image' and media_unit(['a.mp4', 'b.jpg']) == 'file'
    assert media_unit(['a.mp4']) == media_unit([]) == 'video'


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    generate_images(tmp_path / 'a', DemoImagesCfg(seed=5))
    generate_images(tmp_path / 'b', DemoImagesCfg(seed=5))
    assert _digest(tmp_path / 'a') == _digest(tmp_path / 'b')
    generate_images(tmp_path / 'c', DemoImagesCfg(seed=6))
    assert _digest(tmp_path / 'c') != _digest(tmp_path / 'a')


def test_captions_use_only_words_of_the_demo_videos() -> None:
    """Every word of a still's captions is in the demo's word2vec, which is trained on the videos' captions."""
    videos = {w for f in _plan(DemoCfg(), can_speak=False) for c in f['captions'] for w in c.split()}
    stills = {w for f in _images_plan(DemoImagesCfg(seed=1)) for c in f['captions'] for w in c.split()}
    assert stills <= videos, stills - videos


def test_options_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generate_images(tmp_path / 'demo_images', DemoImagesCfg(per_photo=(1, 0, 1), width=224, height=224))
    m = load_manifest('demo_images', tmp_path)
    s = m.split('official')
    assert (len(s.train), len(s.val), len(s.test)) == (10, 0, 10)
    with Image.open(m.paths[0]) as still:
        assert still.size == (224, 224)
    with pytest.raises(ValueError, match='train and test at least 1'):
        DemoImagesCfg(per_photo=(2, 1, 0))
    with pytest.raises(SystemExit) as err:
        main(['--images', '--videos', '3', '--out', str(tmp_path / 'x')])
    assert err.value.code == 2 and '--videos does not apply to --images' in capsys.readouterr().err
    (tmp_path / 'empty' / 'demo_images').mkdir(parents=True)
    with pytest.raises(AnnotationsMissing, match=r'demo_images.json not found.*python -m shared.datasets.demo --images'):
        load_manifest('demo_images', tmp_path / 'empty')
