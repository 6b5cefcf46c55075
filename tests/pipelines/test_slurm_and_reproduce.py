"""The SLURM array script and the reproduction recipe, run with stand-ins for `make` and `sacct`."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pipelines.reproduce import main as reproduce_main


def _fake(bin_dir: Path, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text('#!/bin/bash\n' + script)
    path.chmod(0o755)


def test_sbatch_runs_make_extract_for_its_array_task(tmp_path: Path, repo_root: Path) -> None:
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    _fake(bin_dir, 'make', f'printf "%s\\n" "$@" > {tmp_path}/make-args\n')
    env = {**os.environ, 'PATH': f'{bin_dir}:{os.environ["PATH"]}', 'SLURM_ARRAY_TASK_ID': '3',
           'SLURM_SUBMIT_DIR': str(tmp_path)}
    out = subprocess.run(['bash', str(repo_root / 'pipelines/slurm/extract.sbatch'), 'msrvtt', 'object,scene', '16',
                          '--weights', 'random'], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    args = (tmp_path / 'make-args').read_text().splitlines()
    assert args == ['extract', 'DATASET=msrvtt', 'EXPERT=object,scene', 'SHARD=3', 'NUM_SHARDS=16',
                    'EXTRACT_ARGS=--no-progress --weights random']
    env.pop('SLURM_ARRAY_TASK_ID')
    out = subprocess.run(['bash', str(repo_root / 'pipelines/slurm/extract.sbatch'), 'msrvtt', 'all', '4'], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and 'array job' in out.stderr


def test_failed_indices_lists_what_did_not_complete(tmp_path: Path, repo_root: Path) -> None:
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    _fake(bin_dir, 'sacct', 'printf "77_0|COMPLETED\\n77_1|FAILED\\n77_2|COMPLETED\\n77_3|TIMEOUT\\n77_4|PREEMPTED\\n"\n')
    env = {**os.environ, 'PATH': f'{bin_dir}:{os.environ["PATH"]}'}
    out = subprocess.run(['bash', str(repo_root / 'pipelines/slurm/failed_indices.sh'), '77'], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == '1,3,4'


def test_reproduce_says_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = reproduce_main(['--paper', 'mmt', '--dataset', 'msrvtt', '--split', '1k-A', '--features-root',
                           str(tmp_path), '--data-root', str(tmp_path)])
    assert code == 1
    err = capsys.readouterr().err
    assert 'stores missing for object, action' in err and '--release' in err
    assert reproduce_main(['--paper', 'ssb', '--dataset', 'lsmdc']) == 1
    assert 'no config for model ssb on lsmdc' in capsys.readouterr().err
