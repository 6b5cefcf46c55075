"""What a careless or hostile user can do to a finished run and its collection index, as the
commands that read them see it (`train.search`, `train.evaluate`, `train.index`): one line naming
the input and what to do, exit code 1, no traceback."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.train.conftest import tiny_args
from tests.train.test_cli_errors import _one_line


@pytest.fixture(scope='module')
def run(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-epoch MEE run on the `tiny` dataset (its seed0 directory)."""
    from train.main import main as train_main

    out = tmp_path_factory.mktemp('run_inputs') / 'run'
    assert train_main(tiny_args(tiny, out)) == 0
    return out / 'seed0'


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / 'seed0'))


def _search(run: Path, tiny: Path) -> list[str]:
    return ['--run', str(run), '--query', 'a red cat', '-k', '2', '--data-root', str(tiny / 'data')]


def _target(run: Path, tiny: Path) -> list[str]:
    return ['--run', str(run), '--data-root', str(tiny / 'data'), '--features-root', str(tiny / 'features'),
            '--device', 'cpu']


@pytest.mark.parametrize('edit', ['model.embed_dim=16', 'model.experts.0.dim=4'])
def test_a_config_yaml_edited_to_another_model_is_one_line(edit: str, run: Path, tiny: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    """config.yaml edited by hand so that the checkpoint's weights no longer fit its model: torch's
    state-dict traceback before."""
    from train.evaluate import main as evaluate_main
    from train.search import main as search_main

    run = _copy(run, tmp_path)
    cfg = yaml.safe_load((run / 'config.yaml').read_text())
    key, value = edit.split('=')
    node = cfg
    *parents, last = key.split('.')
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    node[last] = int(value)
    (run / 'config.yaml').write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    for main, args in ((search_main, _search(run, tiny)), (evaluate_main, _target(run, tiny))):
        line = _one_line(main(args), capsys.readouterr().err, str(run / 'checkpoints' / 'best.pt'), 'size mismatch',
                         'config.yaml')
        assert 'train the run again' in line


def _index(run: Path, tiny: Path, out: Path, *extra: str) -> list[str]:
    return ['--run', str(run), '--dataset', 'demo', '--data-root', str(tiny / 'data'), '--features-root',
            str(tiny / 'features'), '--out', str(out), *extra]


@pytest.mark.parametrize('device', ['bogus', 'cuda:99'])
def test_an_index_on_a_device_that_is_not_there_is_one_line(device: str, run: Path, tiny: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    """Not torch's traceback (a bad name), nor the checkpoint called 'cut short or damaged' (no such CUDA device)."""
    from train.index import main as index_main

    line = _one_line(index_main(_index(run, tiny, tmp_path / 'index', '--device', device)), capsys.readouterr().err,
                     f'--device {device}')
    assert 'damaged' not in line and not (tmp_path / 'index').exists()


def test_a_bad_index_setting_is_one_line_before_any_video_is_embedded(run: Path, tiny: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """It was found only once every video was embedded (hours, at collection scale), in a line that named no setting."""
    from train.index import main as index_main

    _one_line(index_main(_index(run, tiny, tmp_path / 'index', '--approx-threshold', '0')), capsys.readouterr().err,
              'approx_threshold must be at least 1, got 0')
    assert not (tmp_path / 'index').exists()


@pytest.mark.parametrize('blocked', ['out', 'out/thumbs'])
def test_an_index_folder_that_is_a_file_is_one_line(blocked: str, run: Path, tiny: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    """--out, or the thumbnail folder inside it, a file already: FileExistsError's traceback before."""
    from train.index import main as index_main

    (tmp_path / blocked).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / blocked).write_text('not a folder')
    _one_line(index_main(_index(run, tiny, tmp_path / 'out')), capsys.readouterr().err, str(tmp_path / blocked),
              'is a file')
    assert (tmp_path / blocked).read_text() == 'not a folder'


@pytest.fixture(scope='module')
def index(run: Path, tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete collection index of the `tiny` dataset made by `run` (no video files: no thumbnails)."""
    from train.index import main as index_main

    out = tmp_path_factory.mktemp('index') / 'index'
    assert index_main(_index(run, tiny, out)) == 0
    return out


def _damage(out: Path, how: str) -> Path:
    """`out` damaged as `how` says; the file or folder the error must name."""
    import json
    import os

    if how == 'index.json garbage':
        (out / 'faiss' / 'index.json').write_text('{not json')
        return out / 'faiss'
    if how.startswith('.faiss'):
        f = next((out / 'faiss').glob('*.faiss'))
        f.write_bytes(os.urandom(300) if how == '.faiss garbage' else f.read_bytes()[:len(f.read_bytes()) // 2])
        return out / 'faiss'
    if how == 'rows.npz missing':
        (out / 'faiss' / 'rows.npz').unlink()
        return out / 'faiss'
    if how == 'rows.npz cut short':  # zipfile's BadZipFile, no ValueError
        (out / 'faiss' / 'rows.npz').write_bytes((out / 'faiss' / 'rows.npz').read_bytes()[:20])
        return out / 'faiss'
    store = out / 'embeddings.zarr'
    shutil.rmtree(out / 'faiss')  # the index is built again from the store, which is read whole
    if how == 'zarr.json garbage':
        (store / 'zarr.json').write_text('{')
    elif how == 'status array missing':
        shutil.rmtree(store / 'status')
    elif how == 'chunk_size attribute missing':
        meta = json.loads((store / 'zarr.json').read_text())
        del meta['attributes']['chunk_size']
        (store / 'zarr.json').write_text(json.dumps(meta))
    else:  # emb chunk cut short: zstd cannot decode it
        for f in (store / 'emb' / 'c').rglob('*'):
            if f.is_file():
                f.write_bytes(f.read_bytes()[:10])
    return store


DAMAGES = ['index.json garbage', '.faiss garbage', '.faiss cut short', 'rows.npz missing', 'rows.npz cut short',
           'zarr.json garbage',
           'status array missing', 'chunk_size attribute missing', 'emb chunk cut short']


@pytest.mark.parametrize('how', DAMAGES)
def test_a_damaged_index_is_one_line_naming_it(how: str, index: Path, run: Path, tiny: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    """A rerun of the index command over a damaged index (as `pipelines.serve` loads it: `build_index`):
    FAISS's RuntimeError, zarr's KeyError or zstd's error tracebacks before, or JSON's message naming no file."""
    from train.index import main as index_main

    out = Path(shutil.copytree(index, tmp_path / 'index'))
    damaged = _damage(out, how)
    capsys.readouterr()
    code, err = index_main(_index(run, tiny, out)), capsys.readouterr().err
    assert code == 1 and 'Traceback' not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith('error: ')]  # zstd's own reason says 'error' too
    assert len(lines) == 1 and str(damaged) in lines[0] and 'cut short or damaged' in lines[0], err
    assert 'Remove' in lines[0]


def test_a_gallery_of_another_model_is_one_line(run: Path, tiny: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    """gallery.pt copied in from a run of another model (2 experts of 5 dims here): einsum's traceback before."""
    import torch

    from train.search import main as search_main

    run = _copy(run, tmp_path)
    gallery = torch.load(run / 'gallery.pt', weights_only=True)
    n = len(gallery['video_ids'])
    torch.save({**gallery, 'emb': torch.randn(n, 2, 5), 'available': torch.ones(n, 2, dtype=torch.bool)},
               run / 'gallery.pt')
    capsys.readouterr()
    _one_line(search_main(_search(run, tiny)), capsys.readouterr().err, str(run / 'gallery.pt'), 'another model',
              'Rerun the training command')


def test_a_refused_read_of_an_index_keeps_its_own_error() -> None:
    """Only a file that is missing, cut short or garbage reads as a damaged index (whose advice is to
    remove it); a refused read (a read-only mount, a disk error) is no reason to remove a good one."""
    from shared.store import StoreError, unreadable

    with pytest.raises(PermissionError):
        with unreadable(Path('/idx'), 'search index', 'Remove it'):
            raise PermissionError(13, 'Permission denied', '/idx/index.json')
    with pytest.raises(StoreError, match='cut short or damaged'):
        with unreadable(Path('/idx'), 'search index', 'Remove it'):
            raise TypeError("IndexCfg() got an unexpected keyword argument 'x'")  # index.json of another shape
