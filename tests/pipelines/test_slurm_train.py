"""`pipelines/slurm/train.sbatch` and `make train GPUS=N` (issue 21): the torchrun command they
give, run with stand-ins for srun, scontrol and nvidia-smi."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest


def _fake(bin_dir: Path, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text('#!/bin/bash\n' + script)
    path.chmod(0o755)


def test_train_sbatch_runs_one_torchrun_per_node_with_the_first_node_as_rendezvous(tmp_path: Path,
                                                                                     repo_root: Path) -> None:
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    _fake(bin_dir, 'srun', f'printf "%s\\n" "$@" > {tmp_path}/srun-args\n')
    _fake(bin_dir, 'scontrol', 'printf "gpu-a17\\ngpu-a18\\n"\n')
    _fake(bin_dir, 'nvidia-smi', 'printf "GPU 0\\nGPU 1\\nGPU 2\\nGPU 3\\n"\n')
    env = {**os.environ, 'PATH': f'{bin_dir}:{os.environ["PATH"]}', 'SLURM_JOB_NODELIST': 'gpu-a[17-18]',
           'SLURM_JOB_NUM_NODES': '2', 'SLURM_JOB_ID': '4242', 'SLURM_SUBMIT_DIR': str(tmp_path)}
    out = subprocess.run(['bash', str(repo_root / 'pipelines/slurm/train.sbatch'), 'mmt', 'msrvtt', '1k-A',
                          '--seeds', '0,1'], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    args = (tmp_path / 'srun-args').read_text().splitlines()
    assert args == ['--kill-on-bad-exit=1', '.venv/bin/python', '-m', 'train.launch', '--nnodes', '2',
                    '--nproc-per-node', '4', '--rdzv-backend', 'c10d', '--rdzv-endpoint', 'gpu-a17:29500',
                    '--rdzv-id', '4242', '-m', 'train', '--model', 'mmt', '--dataset', 'msrvtt', '--split', '1k-A',
                    '--no-progress', '--seeds', '0,1']
    env.pop('SLURM_JOB_NODELIST')
    out = subprocess.run(['bash', str(repo_root / 'pipelines/slurm/train.sbatch'), 'mmt', 'msrvtt', '1k-A'], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and 'sbatch' in out.stderr


def test_make_train_with_gpus_wraps_torchrun(repo_root: Path) -> None:
    def command(*extra: str) -> str:
        out = subprocess.run(['make', '--no-print-directory', '-n', 'train', 'MODEL=mmt', 'DATASET=msrvtt', *extra],
                             cwd=repo_root, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return next(line for line in out.stdout.splitlines() if '-m train' in line)

    assert '-m train.launch --standalone --nproc-per-node 4 -m train --model mmt' in command('GPUS=4')
    assert 'train.launch' not in command()


def test_a_torchrun_whose_processes_fail_ends_in_one_line(tmp_path: Path, repo_root: Path, python: str,
                                                          subprocess_env: dict) -> None:
    """Each process says what is wrong; torchrun's ChildFailedError traceback and failure table
    (some 30 lines of exit codes and pids) followed them."""
    out = subprocess.run([python, '-m', 'train.launch', '--standalone', '--nproc-per-node', '2', '-m', 'train',
                          '--model', 'mmt', '--dataset', 'msrvtt', '--split', '1k-A', '--data-root', str(tmp_path)],
                         cwd=repo_root, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and 'Traceback' not in out.stderr and 'ChildFailedError' not in out.stderr, out.stderr
    assert f'dataset directory {tmp_path / "msrvtt"} not found' in out.stderr  # the processes' own lines
    assert out.stderr.splitlines()[-1].startswith('error: 2 training process(es) stopped'), out.stderr


def test_a_torchrun_whose_processes_are_killed_says_so(tmp_path: Path, repo_root: Path, python: str,
                                                       subprocess_env: dict) -> None:
    """A process killed by a signal (the out-of-memory killer's SIGKILL) writes no error line of its
    own: the last line names the signal, not error lines that are not there."""
    script = tmp_path / 'killed.py'
    script.write_text('import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n')
    out = subprocess.run([python, '-m', 'train.launch', '--standalone', '--nproc-per-node', '2', str(script)],
                         cwd=repo_root, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and 'Traceback' not in out.stderr, out.stderr
    assert out.stderr.splitlines()[-1] == ('error: 2 training process(es) stopped (exit code -9): killed by SIGKILL '
                                           '(most often the out-of-memory killer: see dmesg)'), out.stderr


def test_a_process_that_fails_while_another_runs_is_not_reported_as_killed(tmp_path: Path, repo_root: Path,
                                                                           python: str, subprocess_env: dict) -> None:
    """One process ends with its error line while the other still works: torchrun stops that one with
    SIGTERM, and the last line pointed at the SIGTERM ('killed by SIGTERM'), away from the error line."""
    script = tmp_path / 'one_fails.py'
    script.write_text("import os, sys, time\nif os.environ['LOCAL_RANK'] == '0':\n"
                      "    sys.exit('error: the input is bad')\ntime.sleep(120)\n")
    out = subprocess.run([python, '-m', 'train.launch', '--standalone', '--nproc-per-node', '2', str(script)],
                         cwd=repo_root, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and 'error: the input is bad' in out.stderr, out.stderr
    assert out.stderr.splitlines()[-1] == ('error: 2 training process(es) stopped (exit code -15, 1): their error '
                                           'lines above say why'), out.stderr


def test_a_process_killed_while_another_fails_is_still_named(tmp_path: Path, repo_root: Path, python: str,
                                                            subprocess_env: dict) -> None:
    """The out-of-memory killer's SIGKILL on one rank, whose partner's collective then fails with an
    error line of its own: the last line kept pointing at that line alone, not at the SIGKILL."""
    script = tmp_path / 'oom.py'
    script.write_text("import os, signal, sys, time\nif os.environ['LOCAL_RANK'] == '1':\n"
                      "    os.kill(os.getpid(), signal.SIGKILL)\ntime.sleep(0.02)\nsys.exit('error: peer closed')\n")
    out = subprocess.run([python, '-m', 'train.launch', '--standalone', '--nproc-per-node', '2', str(script)],
                         cwd=repo_root, env=subprocess_env, capture_output=True, text=True, timeout=300)
    last = out.stderr.splitlines()[-1]
    assert out.returncode == 1 and 'killed by SIGKILL' in last and 'out-of-memory killer' in last, out.stderr



def test_a_process_killed_while_another_runs_is_named_alone(tmp_path: Path, repo_root: Path, python: str,
                                                            subprocess_env: dict) -> None:
    """The out-of-memory killer's SIGKILL on one rank while the other still works: torchrun stops that
    one with SIGTERM, which the last line named beside the SIGKILL as if it were a second cause."""
    script = tmp_path / 'oom.py'
    script.write_text("import os, signal, time\nif os.environ['LOCAL_RANK'] == '1':\n"
                      "    os.kill(os.getpid(), signal.SIGKILL)\ntime.sleep(120)\n")
    out = subprocess.run([python, '-m', 'train.launch', '--standalone', '--nproc-per-node', '2', str(script)],
                         cwd=repo_root, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and out.stderr.splitlines()[-1] == (
        'error: 2 training process(es) stopped (exit code -15, -9): killed by SIGKILL (most often the out-of-memory '
        'killer: see dmesg)'), out.stderr

@pytest.mark.parametrize('n', ['0', '-1', '+-1'])
def test_no_processes_per_node_is_one_line(n: str, repo_root: Path, python: str, subprocess_env: dict) -> None:
    """torchrun asserted it with a bare AssertionError traceback."""
    out = subprocess.run([python, '-m', 'train.launch', '--standalone', '--nproc-per-node', n, '-m', 'train'],
                         cwd=repo_root, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and out.stderr.splitlines()[-1] == (
        f'error: --nproc-per-node {n}: give 1 or more processes (or auto, gpu, cpu)'), out.stderr
