"""What a new user meets first (issue 18, item 11): the help of the commands names every dataset and
explains every option, and `make check` on a dataset with no stores is one clear line."""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from shared.store import main as store_main


def test_datasets_help_lists_every_registered_dataset(python: str, repo_root: Path, subprocess_env: dict) -> None:
    out = subprocess.run([python, '-m', 'shared.datasets', '--help'], cwd=repo_root, env=subprocess_env,
                         capture_output=True, text=True, timeout=120).stdout
    listed = ' '.join(out.split())  # argparse wraps the line
    for name in ('msrvtt', 'msvd', 'lsmdc', 'didemo', 'activitynet', 'vatex', 'demo', 'folder:PATH'):
        assert name in listed, out


def _options_without_help(build: object, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The options of the parser that `build(['--help'])` makes that have no help text."""
    seen: list[argparse.ArgumentParser] = []
    parse = argparse.ArgumentParser.parse_args

    def record(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> object:
        seen.append(self)
        return parse(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, 'parse_args', record)
    with pytest.raises(SystemExit):
        build(['--help'])
    return [a.option_strings[0] for a in seen[0]._actions if a.option_strings and not a.help]


@pytest.mark.parametrize('module', ['pipelines.extract_cluster', 'pipelines.reproduce', 'pipelines.serve', 'train.index',
                                    'train.bench_search', 'pipelines.demo_pretrain', 'pipelines.demo', 'train.main',
                                    'train.evaluate', 'train.search', 'train.caption', 'train.probe', 'train.bench',
                                    'extract.run', 'extract.bench', 'extract.reembed', 'pipelines.import_features',
                                    'pipelines.compare_features', 'pipelines.import_word_vectors', 'pipelines.bench_kit',
                                    'shared.datasets.__main__', 'shared.datasets.demo'])
def test_every_option_has_help(module: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import importlib

    assert _options_without_help(importlib.import_module(module).main, monkeypatch) == []
    # the description is the module's first paragraph: no tracker numbers a user cannot look up ('issue 25 item 4')
    assert not re.search(r'\bissue\s+\d', capsys.readouterr().out)


#: every command a user runs, as `python -m MODULE` (train.launch: torchrun's options, tested below)
COMMANDS = ['extract.run', 'train.main', 'pipelines.bench_kit', 'pipelines.compare_features', 'pipelines.demo',
            'pipelines.demo_pretrain', 'pipelines.extract_cluster', 'pipelines.import_features',
            'pipelines.import_word_vectors', 'pipelines.reproduce', 'pipelines.serve', 'train.bench', 'train.bench_search',
            'train.caption', 'train.evaluate', 'train.index', 'train.probe', 'train.search', 'extract.bench',
            'extract.reembed', 'shared.store', 'shared.datasets.__main__', 'shared.datasets.demo']


def _help(module: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
          argv: tuple[str, ...] = ()) -> tuple[str, argparse.ArgumentParser]:
    """The --help text of `module`'s command (`argv` before it: a subcommand) and the parser that printed it."""
    import importlib

    seen: list[argparse.ArgumentParser] = []
    printed = argparse.ArgumentParser.print_help

    def record(self: argparse.ArgumentParser, *args: object) -> None:
        seen.append(self)
        printed(self, *args)

    monkeypatch.setattr(argparse.ArgumentParser, 'print_help', record)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        importlib.import_module(module).main([*argv, '--help'])
    return capsys.readouterr().out, seen[0]


@pytest.mark.parametrize('module', COMMANDS)
def test_every_help_gives_an_example_and_the_defaults(module: str, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    """A new user's --help: an example command line to start from, and each option's default. Half
    the commands showed only their first line, with the examples of their docstring left out."""
    argv = ('check',) if module == 'shared.store' else ()
    out, parser = _help(module, monkeypatch, capsys, argv)
    prog = parser.prog.removesuffix(' check')
    # a command line of its own, as in the epilogs (an option's wrapped help is indented further)
    assert re.search(rf'^ {{0,8}}({re.escape(prog)}|make [a-z][\w-]*)(\s|$)', out, re.M), out
    silent = [a.option_strings[0] for a in parser._actions
              if a.option_strings and not a.required and a.default not in (None, False, [], argparse.SUPPRESS)
              and 'default' not in (a.help or '')]
    assert silent == [], out


def test_check_of_a_dataset_without_stores_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert store_main(['check', '--dataset', 'msrvtt', '--features-root', str(tmp_path)]) == 2  # README: incomplete
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'usage' not in err and 'no stores of msrvtt' in err, err
    assert str(tmp_path / 'msrvtt') in err and 'make extract DATASET=msrvtt' in err


def test_check_of_a_mistyped_dataset_says_so_not_to_extract_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`make check DATASET=msrvt` said to extract msrvt first; a dataset no command can read is a typo."""
    from shared.datasets.__main__ import main as datasets_main

    assert store_main(['check', '--dataset', 'msrvt', '--features-root', str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and "unknown dataset 'msrvt'" in err and 'make extract' not in err, err
    # 'did you mean msrvtt, msvd?; or folder:PATH': the folder is a sentence of its own
    assert 'did you mean msrvtt, msvd? Or folder:PATH for a directory of videos' in err, err
    assert datasets_main(['xyzzy']) == 1  # no close name: the folder as before
    assert capsys.readouterr().err.endswith('vatex); or folder:PATH for a directory of videos\n')


def test_check_of_a_folder_dataset_reads_the_stores_extract_filed_it_under(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    """`make check DATASET=folder:PATH` as `make extract DATASET=folder:PATH` names it: the stores are
    under folder-NAME-HASH, and the folder: name was once refused as not a plain name."""
    from shared.datasets.folder import folder_name
    from tests._store_writer import main as write_store

    videos, features = tmp_path / 'vids', tmp_path / 'features'
    assert store_main(['check', '--dataset', f'folder:{videos}', '--features-root', str(features)]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and str(features / folder_name(videos)) in err, err
    assert f'make extract DATASET=folder:{videos}' in err
    store = features / folder_name(videos) / 'scene.zarr'
    assert write_store([str(store), '--videos', '8', '--chunk', '4']) == 0
    capsys.readouterr()
    assert store_main(['check', '--dataset', f'folder:{videos}', '--features-root', str(features)]) == 0
    assert str(store) in capsys.readouterr().out


def _make(args: list[str], tmp_path: Path, python: str, repo_root: Path, env: dict) -> subprocess.CompletedProcess:
    """A Makefile target itself, run with this interpreter (a stamp newer than pyproject.toml
    stands for the installed .venv, so make installs nothing)."""
    stamp = tmp_path / 'installed'
    stamp.touch()
    later = time.time() + 60
    os.utime(stamp, (later, later))
    return subprocess.run(['make', '--no-print-directory', *args, f'PY={python}', f'STAMP={stamp}'], cwd=repo_root,
                          env=env, capture_output=True, text=True, timeout=120)


def test_make_check_without_stores(tmp_path: Path, python: str, repo_root: Path, subprocess_env: dict) -> None:
    proc = _make(['check', 'DATASET=msrvtt', f'FEATURES_ROOT={tmp_path}'], tmp_path, python, repo_root, subprocess_env)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith('error: ')]
    assert proc.returncode != 0 and 'usage:' not in proc.stderr and len(errors) == 1, proc.stderr
    assert 'no stores of msrvtt' in errors[0]


def test_make_takes_the_roots_from_the_environment_as_the_commands_do(tmp_path: Path, python: str, repo_root: Path,
                                                                       subprocess_env: dict) -> None:
    """README: the data root is data/ by default, --data-root or $VIDEOEXPERTS_DATA_ROOT (features likewise);
    the Makefile passed data and features whatever the environment said."""
    env = {**subprocess_env, 'VIDEOEXPERTS_DATA_ROOT': str(tmp_path / 'mydata'),
           'VIDEOEXPERTS_FEATURES_ROOT': str(tmp_path / 'myfeatures')}
    for name in ('DATA_ROOT', 'FEATURES_ROOT'):  # make's own variables, which would win
        env.pop(name, None)
    check = _make(['check', 'DATASET=msrvtt'], tmp_path, python, repo_root, env)
    assert str(tmp_path / 'myfeatures' / 'msrvtt') in check.stderr, check.stderr
    datasets = _make(['datasets', 'DATASET=msrvtt'], tmp_path, python, repo_root, env)
    assert str(tmp_path / 'mydata' / 'msrvtt') in datasets.stderr, datasets.stderr


def test_make_index_and_serve_use_train_index_default_folder(tmp_path: Path, python: str, repo_root: Path,
                                                             subprocess_env: dict) -> None:
    """`make index DATASET=folder:PATH` wrote an index folder that make computed, which `python -m
    train.index` without --out (RUN/index/folder-NAME-HASH) did not: make leaves the folder to python
    now, and make serve names the dataset, or INDEX for both."""
    for target, flag in (('index', '--dataset'), ('serve', '--dataset')):
        proc = _make(['-n', target, 'RUN=runs/r/seed0', 'DATASET=folder:/data/my(videos)'], tmp_path, python, repo_root,
                     subprocess_env)
        words = _words(proc.stdout)
        assert words[words.index(flag) + 1] == 'folder:/data/my(videos)', proc
        assert '--out' not in words and '--index' not in words, proc
        proc = _make(['-n', target, 'RUN=runs/r/seed0', 'INDEX=/my index'], tmp_path, python, repo_root, subprocess_env)
        words = _words(proc.stdout)
        assert words[words.index('--out' if target == 'index' else '--index') + 1] == '/my index', proc


def test_make_import_without_release_is_one_line(tmp_path: Path, python: str, repo_root: Path,
                                                 subprocess_env: dict) -> None:
    """Without RELEASE the importer got `--root --dataset ...`: argparse's usage block."""
    proc = _make(['import', 'PAPER=ce', 'DATASET=msrvtt', f'FEATURES_ROOT={tmp_path}'], tmp_path, python, repo_root,
                 subprocess_env)
    assert proc.returncode != 0 and 'usage:' not in proc.stderr, proc.stderr
    # make's warning on the stamp's future mtime: 'make:' or, under make test as in CI, 'make[1]:'
    said = [ln for ln in proc.stderr.splitlines() if not re.match(r'make(\[\d+\])?: Warning', ln)]
    assert len(said) == 1 and 'RELEASE=PATH' in said[0], proc.stderr


def _words(commands: str) -> list[str]:
    """`make -n`'s commands as the shell splits them (a recipe's continued lines joined)."""
    return shlex.split(commands.replace('\\\n', ' '))


def test_make_passes_paths_with_spaces_and_quotes_as_one_argument(tmp_path: Path, python: str, repo_root: Path,
                                                                 subprocess_env: dict) -> None:
    """`make extract DATASET="folder:/a b"` gave python `--dataset folder:/a b`: two arguments
    (argparse: "unrecognized arguments: b"). Every path a target passes is one word now."""
    videos = tmp_path / "it's my videos"
    videos.mkdir()
    (videos / 'a clip.mp4').write_bytes(b'not decoded here')
    proc = _make(['datasets', f'DATASET=folder:{videos}'], tmp_path, python, repo_root, subprocess_env)
    assert proc.returncode == 0 and '1 found' in proc.stdout, proc.stderr
    paths = {'DATASET': f'folder:{videos}', 'DATA_ROOT': str(tmp_path / 'my data'),
             'FEATURES_ROOT': str(tmp_path / 'my features'), 'RUN': 'runs/my run', 'RELEASE': "/the authors' release",
             'PRETRAINED': 'runs/my pretrain'}
    flags = {'--dataset': paths['DATASET'], '--data-root': paths['DATA_ROOT'], '--features-root': paths['FEATURES_ROOT'],
             '--run': paths['RUN'], '--root': paths['RELEASE'], '--release': paths['RELEASE'],
             '--pretrained': paths['PRETRAINED']}
    for target in ('extract', 'extract-cluster', 'import', 'reproduce', 'train', 'pretrain', 'index', 'serve', 'caption',
                   'probe', 'datasets', 'check', 'demo', 'demo-pretrain'):
        proc = _make(['-n', target, *(f'{k}={v}' for k, v in paths.items())], tmp_path, python, repo_root,
                     subprocess_env)
        words = _words(proc.stdout)
        want = {**flags, '--dataset': 'howto100m'} if target == 'pretrain' else flags  # its one dataset
        passed = {flag: words[words.index(flag) + 1] for flag in flags if flag in words}
        assert passed and passed == {flag: want[flag] for flag in passed}, (target, proc.stdout)
    # a leading ~/ is the home folder, as the shell read it unquoted (zsh leaves RELEASE=~/x to make)
    proc = _make(['-n', 'import', 'RELEASE=~/ce/my release', 'DATASET=msrvtt'], tmp_path, python, repo_root,
                 subprocess_env)
    words = _words(proc.stdout)
    assert words[words.index('--root') + 1] == str(Path.home() / 'ce' / 'my release'), proc.stdout


def test_make_demo_files_under_roots_with_spaces(tmp_path: Path, python: str, repo_root: Path,
                                                 subprocess_env: dict) -> None:
    """The demo's generated files are make targets: under DATA_ROOT="/x/my data" make took '/x/my' and
    'data/demo/demo.json' for two targets, generated the stills it did not need, extracted twice and
    touched a file '/x/my'. Now each is one target, and one that is up to date is not made again."""
    data, features = tmp_path / 'my data', tmp_path / 'my features'
    roots = [f'DATA_ROOT={data}', f'FEATURES_ROOT={features}']
    proc = _make(['-n', 'train', *roots], tmp_path, python, repo_root, subprocess_env)
    assert proc.returncode == 0 and 'recipe' not in proc.stderr, proc.stderr
    commands = [_words(line) for line in proc.stdout.replace('\\\n', ' ').splitlines()]
    modules = [words[words.index('-m') + 1] for words in commands if '-m' in words]
    assert modules == ['shared.datasets.demo', 'extract', 'train'], proc.stdout
    assert ['touch', str(features / 'demo' / '.extracted')] in commands, proc.stdout
    assert not (tmp_path / 'my').exists()
    (data / 'demo').mkdir(parents=True)
    (data / 'demo' / 'demo.json').write_text('{}')
    (features / 'demo').mkdir(parents=True)
    (features / 'demo' / '.extracted').touch()
    proc = _make(['-n', 'train', *roots], tmp_path, python, repo_root, subprocess_env)
    modules = [w[w.index('-m') + 1] for w in map(_words, proc.stdout.replace('\\\n', ' ').splitlines()) if '-m' in w]
    assert modules == ['train'], proc.stdout


def test_launch_help_is_this_projects_command_with_examples(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    """`python -m train.launch --help` was torchrun's bare help ('usage: launch.py', 'Torch Distributed
    Elastic Training Launcher'): no word of how to run this project's training under it."""
    out, parser = _help('train.launch', monkeypatch, capsys)
    assert out.startswith('usage: python -m train.launch ') and 'launch.py' not in out, out[:200]
    assert re.search(r'^  python -m train\.launch --standalone --nproc-per-node \d+ -m train --model ', out, re.M), out
    assert 'make train MODEL=' in out and '--nnodes' in out  # torchrun's own options are all still there


@pytest.mark.parametrize('package, module', [('train', 'train.main'), ('extract', 'extract.run')])
def test_ctrl_c_while_the_command_loads_is_one_line(package: str, module: str, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    """Ctrl-C in the seconds `import torch` takes (more on a busy node) was a KeyboardInterrupt traceback
    and exit -2: `python -m train` / `python -m extract` as run, their import interrupted."""
    import runpy
    import sys
    import types

    class Interrupted(types.ModuleType):
        def __getattr__(self, name: str) -> object:
            if name in ('main', 'exit_cli'):  # what __main__ imports; not what tracebacks look up (__file__)
                raise KeyboardInterrupt
            raise AttributeError(name)

    monkeypatch.setitem(sys.modules, module, Interrupted(module))
    with pytest.raises(SystemExit) as stop:
        try:
            runpy.run_module(package, run_name='__main__')
        except KeyboardInterrupt:  # (failing this test, not ending pytest's session)
            pytest.fail('the KeyboardInterrupt came out of the command')
    assert stop.value.code == 130 and capsys.readouterr().err == '\ninterrupted while starting: nothing was done\n'
