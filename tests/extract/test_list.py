"""`python -m extract --list` (`make experts`): one aligned row per expert saying what its rows are."""
from __future__ import annotations

import pytest

from extract.run import main


def test_list_rows_are_aligned_and_say_what_each_expert_samples(capsys: pytest.CaptureFixture) -> None:
    assert main(['--list']) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines}
    assert len({line.index('D=') for line in lines}) == 1  # facenet:inception_resnet_v1 pushed its row out
    assert len({line.index('weights ') for line in lines}) == 1
    assert '16-frame clips @ 1/s' in rows['action'] and '64-frame clips' in rows['action.i3d']
    assert 'audio: 0.96-s examples' in rows['audio']  # README: VGGish's 0.96 s examples, not "1.04167/s"
    assert 'whole audio: words' in rows['speech']  # not "audio @ 1/s": its rows are the words heard
    assert 'frames @ 1/s' in rows['object']


def test_experts_all_builds_every_expert_with_its_settings(tmp_path) -> None:
    """`make extract-cluster` (EXPERT=all, the default) stopped with "unknown expert 'all'": the Dask driver
    builds the experts from the options as given, whose settings were looked up by the name 'all'."""
    from extract.experts import resolve_expert_names
    from extract.run import RunOptions, build_experts

    opts = RunOptions(dataset='folder:' + str(tmp_path), experts=['all'], features_root=tmp_path, weights='random',
                      settings={'fps': 2})
    experts = build_experts(opts)
    assert [e.name for e in experts] == resolve_expert_names('all')
    assert {e.name: e.cfg.fps for e in experts}['object'] == 2
    assert opts.experts == ['all']  # the caller's options are left as they were
