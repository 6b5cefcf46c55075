"""Shared fixtures: the repository root and a small demo dataset generated once per session."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: set in the child pytest process that runs an `own_process` test
IN_OWN_PROCESS = 'VIDEOEXPERTS_IN_OWN_PROCESS'


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C handled as Python's default, even when the suite was started with SIGINT ignored (a
    shell's background job, nohup): the interrupt tests send SIGINT to this process and to children,
    which inherit an ignored signal across exec."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run a test marked `own_process` in a fresh pytest process: the NVDEC tests must not share
    one with decord, which other tests load (`extract.decoders.refuse_ffmpeg_clash`)."""
    if pyfuncitem.get_closest_marker('own_process') is None or os.environ.get(IN_OWN_PROCESS):
        return None
    proc = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', pyfuncitem.nodeid],
                          cwd=pyfuncitem.config.rootpath, env={**os.environ, IN_OWN_PROCESS: '1'},
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(f'failed in its own process (exit {proc.returncode}):\n{proc.stdout[-6000:]}{proc.stderr[-3000:]}',
                    pytrace=False)
    return True


@pytest.fixture
def gone_and_live_pids():
    """(the PID of a process that has ended, the PID of one still running until the test ends): the two
    kinds of owner a leftover temporary file's name can give (`shared.files.remove_stale_temps`)."""
    gone = int(subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True,
                              text=True, check=True).stdout)
    live = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])
    try:
        yield gone, live.pid
    finally:
        live.kill()
        live.wait()


@pytest.fixture(scope='session')
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope='session')
def subprocess_env() -> dict[str, str]:
    """Environment for child processes that import the project from this checkout."""
    env = dict(os.environ)
    env['PYTHONPATH'] = str(ROOT) + os.pathsep + env.get('PYTHONPATH', '')
    env.setdefault('PYTHONWARNINGS', 'ignore::UserWarning')
    return env


@pytest.fixture(scope='session')
def python() -> str:
    return sys.executable


@pytest.fixture(scope='session')
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight demo videos (half without audio, most with a word), generated once.

    `$VIDEOEXPERTS_SMALL_DEMO` names such a folder generated beforehand, for machines without
    FFmpeg (the GPU host of the CUDA tests).
    """
    from shared.datasets.demo import DemoCfg, generate

    ready = os.environ.get('VIDEOEXPERTS_SMALL_DEMO')
    if ready:
        return Path(ready)
    out = tmp_path_factory.mktemp('data') / 'demo'
    generate(out, DemoCfg(videos=8, seed=7, no_audio_rate=0.5, word_rate=0.75, min_duration=2.0,
                          max_duration=3.0), progress=False)
    return out


#: the experts of `demo_stores`
DEMO_EXPERTS = ['object', 'scene', 'audio']


@pytest.fixture(scope='session')
def demo_stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """60 demo videos with object, scene and audio stores (random weights, small inputs), made once for
    training and search test module."""
    from extract.run import main as extract_main
    from shared.datasets.demo import DemoCfg, generate

    root = tmp_path_factory.mktemp('train')
    generate(root / 'data' / 'demo', DemoCfg(videos=60, seed=11, min_duration=2.0, max_duration=3.0), progress=False)
    code = extract_main(['--dataset', 'demo', '--data-root', str(root / 'data'), '--features-root',
                         str(root / 'features'), '--expert', ','.join(DEMO_EXPERTS), '--weights', 'random',
                         '--set', 'resize=[40]', '--set', 'input_size=32', '--workers', '1', '--no-progress'])
    assert code == 0
    return root / 'data', root / 'features'
