"""The narrated demo set (issue 22, item 7): written in HowTo100M's own files, read by the real
howto100m adapter with one timed caption per scene, in both caption files of the release."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.datasets import load_manifest
from shared.datasets.demo import NARRATED_FILE, DemoCfg, NarratedCfg, generate_narrated
from shared.media import probe
from shared.text import remove_stop_words


@pytest.fixture(scope='module')
def narrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two narrated videos of 6-9 s, each two or more scenes of 2-3 s."""
    root = tmp_path_factory.mktemp('data')
    cfg = NarratedCfg(videos=2, seed=3, min_duration=6.0, max_duration=9.0,
                      scene=DemoCfg(min_duration=2.0, max_duration=3.0))
    generate_narrated(root / 'howto100m', cfg, progress=False)
    return root


def test_the_howto100m_adapter_reads_the_narrated_set_with_its_timed_captions(narrated: Path) -> None:
    import decord

    facts = json.loads((narrated / 'howto100m' / NARRATED_FILE).read_text())['videos']
    raw = load_manifest('howto100m', narrated, captions='raw_caption.json')
    assert raw.split('pretrain').train == tuple(v['id'] for v in facts) == raw.video_ids
    for v, path in zip(facts, raw.paths):
        scenes = v['scenes']
        assert len(scenes) >= 2 and 6.0 <= v['duration'] <= 9.0
        info = probe(path)
        assert info.has_audio and abs(info.duration - v['duration']) < 0.1
        frames = len(decord.VideoReader(str(path)))  # every scene's frames, one after another
        assert frames == sum(round(s['duration'] * info.fps) for s in scenes)
        assert list(raw.captions[v['id']]) == [s['narration'] for s in scenes]
        times = [tuple(t) for t in raw.caption_times[v['id']]]
        # one segment per scene, back to back from 0 to the video's end
        assert times == [(pytest.approx(s['start']), pytest.approx(s['start'] + s['duration'])) for s in scenes]
        assert times[0][0] == 0.0 and times[-1][1] == pytest.approx(v['duration'])
        for s, text in zip(scenes, raw.captions[v['id']]):
            assert sum(c in text for c in s['captions']) >= 2  # what is shown and heard, said as the demo says it
    stripped = load_manifest('howto100m', narrated)  # caption.json: the release's default, stop words removed
    for v in facts:
        assert list(stripped.captions[v['id']]) == [remove_stop_words(s['narration']) for s in v['scenes']]
        assert list(stripped.caption_times[v['id']]) == list(raw.caption_times[v['id']])
