"""Word vectors are read from word2vec files only: a pickle never runs, whichever command names it."""
from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml


class _Touch:
    """Unpickling this creates `path`: what a crafted "gensim model" could do instead."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple:
        return open, (self.path, 'w')


def _crafted(tmp_path: Path, name: str = 'vectors.kv') -> tuple[Path, Path]:
    marker = tmp_path / 'pwned'
    evil = tmp_path / name
    evil.write_bytes(pickle.dumps(_Touch(marker)))
    return evil, marker


def _one_error_line(err: str, *words: str) -> None:
    assert err.startswith('error: ') and 'Traceback' not in err and err.count('\n') == 1, err
    for w in words:
        assert w in err, (w, err)


@pytest.mark.parametrize('name', ['vectors.kv', 'vectors.model', 'vectors', 'vectors.gz', 'vectors.npy'])
def test_the_loader_never_unpickles(name: str, tmp_path: Path) -> None:
    from shared.text import WordVectorsError, load_word_vectors

    evil, marker = _crafted(tmp_path, name)
    with pytest.raises(WordVectorsError, match='pipelines.import_word_vectors'):
        load_word_vectors(evil)
    assert not marker.exists()
    disguised = evil.with_name('vectors.bin')  # a word2vec name: parsed as numbers, so it fails, but runs nothing
    evil.rename(disguised)
    with pytest.raises(Exception):  # noqa: B017 - the format error is item 10's; here: nothing ran
        load_word_vectors(disguised)
    assert not marker.exists()


def test_train_set_word_vectors(small_demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from train.main import main

    evil, marker = _crafted(tmp_path)
    code = main(['--model', 'mee', '--dataset', 'demo', '--data-root', str(small_demo.parent), '--features-root',
                 str(tmp_path / 'features'), '--run-dir', str(tmp_path / 'run'), '--device', 'cpu', '--no-progress',
                 '--set', f'data.word_vectors={evil}'])
    assert not marker.exists()
    assert code == 1
    _one_error_line(capsys.readouterr().err, str(evil), 'pipelines.import_word_vectors')


def test_search_reads_a_run_config(small_demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A run directory from elsewhere: its config.yaml names the word vectors train.search loads."""
    from shared.config import to_dict
    from train.checkpoints import save_checkpoint
    from train.config import load_run_cfg
    from train.main import config_path
    from train.models import create_model, structure_only
    from train.search import main

    evil, marker = _crafted(tmp_path)
    run = tmp_path / 'run'
    (run / 'checkpoints').mkdir(parents=True)
    cfg = load_run_cfg(config_path('mee', 'demo', None), {'data.word_vectors': str(evil)})
    (run / 'config.yaml').write_text(yaml.safe_dump({**to_dict(cfg), 'seed': 0}, sort_keys=False))
    save_checkpoint(create_model(structure_only(cfg.model)), run / 'checkpoints' / 'last.pt', epoch=0)
    m = len(cfg.model.experts)
    torch.save({'video_ids': ['v0'], 'emb': torch.zeros(1, m, cfg.model.embed_dim),
                'available': torch.ones(1, m, dtype=torch.bool), 'checkpoint': 'last.pt'}, run / 'gallery.pt')
    code = main(['--run', str(run), '--query', 'a cat', '--data-root', str(small_demo.parent)])
    assert not marker.exists()
    assert code == 1
    _one_error_line(capsys.readouterr().err, str(evil))


def test_extract_set_word_vectors(small_demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from extract.run import main

    evil, marker = _crafted(tmp_path)
    features = tmp_path / 'features'
    code = main(['--dataset', 'demo', '--data-root', str(small_demo.parent), '--features-root', str(features),
                 '--expert', 'ocr.rapidocr', '--set', f'word_vectors={evil}', '--workers', '1', '--no-progress'])
    assert not marker.exists()
    assert code == 1
    _one_error_line(capsys.readouterr().err, str(evil))
    assert not features.exists() or not any(features.rglob('zarr.json'))  # no store made with that setting


def test_gensim_native_files_go_through_the_importer(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from gensim.models import KeyedVectors

    from pipelines.import_word_vectors import main
    from shared.text import load_word_vectors

    kv = KeyedVectors(vector_size=4)
    kv.add_vectors(['cat', 'dog'], np.arange(8, dtype=np.float32).reshape(2, 4))
    kv.save(str(tmp_path / 'native.kv'))
    with pytest.warns(UserWarning, match='unpickling can run code'):
        assert main([str(tmp_path / 'native.kv'), str(tmp_path / 'converted.bin')]) == 0
    wv = load_word_vectors(tmp_path / 'converted.bin')
    np.testing.assert_array_equal(wv.lookup('dog'), [4, 5, 6, 7])
    capsys.readouterr()
    # what fails before the pickle is read is its error line alone, with no warning about reading it
    for bad, named in (([tmp_path / 'native.kv', tmp_path / 'converted.kv'], '.bin'),
                       ([tmp_path / 'missing.kv', tmp_path / 'out.bin'], 'missing.kv')):
        with warnings.catch_warnings():
            warnings.simplefilter('error')
            assert main([str(x) for x in bad]) == 1
        _one_error_line(capsys.readouterr().err, named)


def _word2vec_binary(vectors: np.ndarray) -> bytes:
    words = [f'w{i}' for i in range(len(vectors))]
    return f'{len(words)} {vectors.shape[1]}\n'.encode() + b''.join(
        w.encode() + b' ' + np.asarray(v, np.float32).tobytes() for w, v in zip(words, vectors))


BAD_FILES = {  # probe 7: the first two loaded, and made caption embeddings NaN; the third was a BadGzipFile traceback
    'a NaN vector': ('v.bin', _word2vec_binary(np.array([[1, 2], [np.nan, 0]])), "the vector of 'w1' holds NaN or inf"),
    'an inf in text': ('v.txt', b'2 2\ncat 1 2\ndog inf 0\n', "the vector of 'dog' holds NaN or inf"),
    'a .gz that is not': ('v.bin.gz', _word2vec_binary(np.ones((2, 2))), 'cannot read it (Not a gzipped file'),
    # a 22-byte header of 2 * 10**9 numbers a word: gensim took 8 GB and 31 s to refuse it (a few more words: all memory)
    'a header declaring far more than the file': ('v.txt', b'2 2000000000\nhello 0.5\n',
                                                  'its header declares 2 words of 2000000000 numbers'),
    'a binary header the same': ('v.bin', b'3 1000000000\n' + _word2vec_binary(np.ones((3, 2))).split(b'\n', 1)[1],
                                 'its header declares 3 words of 1000000000 numbers'),
}


@pytest.mark.parametrize('case', list(BAD_FILES))
def test_a_malformed_word2vec_file_is_refused(case: str, tmp_path: Path) -> None:
    from shared.text import WordVectorsError, load_word_vectors

    name, data, said = BAD_FILES[case]
    (tmp_path / name).write_bytes(data)
    with pytest.raises(WordVectorsError) as err:
        load_word_vectors(tmp_path / name)
    assert said in str(err.value) and str(tmp_path / name) in str(err.value)


def test_the_importer_refuses_what_is_no_gensim_save_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Probe 7: a truncated or foreign pickle was an UnpicklingError/AttributeError traceback, and a
    word2vec-named file was unpickled too (it needs no import)."""
    from pipelines.import_word_vectors import main

    evil, marker = _crafted(tmp_path, 'vectors.bin')
    with warnings.catch_warnings():  # refused before it is read: no warning about reading it
        warnings.simplefilter('error')
        assert main([str(evil), str(tmp_path / 'out.bin')]) == 1
    _one_error_line(capsys.readouterr().err, 'named as a word2vec file, which needs no import')
    assert not marker.exists()
    for name, data in (('cut.kv', pickle.dumps({'a': np.ones(40)})[:30]), ('dict.kv', pickle.dumps({'a': 1}))):
        (tmp_path / name).write_bytes(data)
        with pytest.warns(UserWarning):
            assert main([str(tmp_path / name), str(tmp_path / 'out.bin')]) == 1
        _one_error_line(capsys.readouterr().err, f'{tmp_path / name}: not a gensim KeyedVectors.save file')
    assert not (tmp_path / 'out.bin').exists()


def test_words_are_normalised_and_stop_words_removed_by_hand() -> None:
    from shared.text import normalise, remove_stop_words, split_words

    assert [normalise(w) for w in ('Hello,', "don't", '"(U.S.)"', '--')] == ['hello', "don't", 'u.s', '']
    assert split_words('A cat -- "sits" ON it.') == ['a', 'cat', 'sits', 'on', 'it']
    assert remove_stop_words('The cat, sits ON the mat.') == 'cat, sits mat.'  # compared normalised, kept as written


def test_embedded_words_keep_their_own_positions_and_cased_vectors() -> None:
    """`keep` indexes the given words: OCR and speech take each kept word's times by it."""
    from gensim.models import KeyedVectors

    from shared.text import WordVectors, WordVectorsError, _refuse_non_finite

    kv = KeyedVectors(vector_size=2)
    kv.add_vectors(['cat', 'Dog', 'USA'], np.arange(6, dtype=np.float32).reshape(3, 2))
    vecs, keep = WordVectors(kv, Path('unused.bin')).embed(['zzz', 'Cat,', 'qq', 'dog', 'usa'])
    assert keep.tolist() == [1, 3, 4]
    np.testing.assert_array_equal(vecs, [[0, 1], [2, 3], [4, 5]])
    bad = np.zeros((5, 2), np.float32)
    bad[3, 1] = np.nan
    with pytest.raises(WordVectorsError, match="the vector of 'w3'"):  # in the second block of two
        _refuse_non_finite(bad, [f'w{i}' for i in range(5)], Path('v.bin'), block=2)


@pytest.mark.parametrize('header, record', [(b'0 300\n', b''), (b'1 0\n', b'cat ')])
def test_a_word2vec_file_of_no_words_or_no_numbers_is_refused(header: bytes, record: bytes, tmp_path: Path) -> None:
    """Probe 12: a header of 0 words (a file cut after its first line) or of 0 numbers per word loaded, and
    then every caption, query and OCR word embedded to nothing ('no word of this query has a word vector')."""
    from shared.text import WordVectorsError, load_word_vectors

    path = tmp_path / 'empty.bin'
    path.write_bytes(header + record)
    with pytest.raises(WordVectorsError, match=r'empty\.bin: [01] words of [0-9]+ numbers; give a word2vec file'):
        load_word_vectors(path)


def test_the_importer_replaces_an_existing_output_only_when_asked(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Probe 12: `import_word_vectors new.kv GoogleNews-vectors-negative300.bin` (the arguments' order slipped)
    replaced the existing word2vec file without a word."""
    from gensim.models import KeyedVectors

    from pipelines.import_word_vectors import main

    kv = KeyedVectors(vector_size=2)
    kv.add_vectors(['cat'], np.ones((1, 2), np.float32))
    kv.save(str(tmp_path / 'native.kv'))
    out = tmp_path / 'existing.bin'
    out.write_bytes(b'1 2\nold ' + np.zeros(2, np.float32).tobytes())
    kept = out.read_bytes()
    with warnings.catch_warnings():  # refused before the pickle is read: no warning about reading it
        warnings.simplefilter('error')
        assert main([str(tmp_path / 'native.kv'), str(out)]) == 1
    _one_error_line(capsys.readouterr().err, f'{out} exists', '--overwrite')
    assert out.read_bytes() == kept
    with pytest.warns(UserWarning, match='unpickling can run code'):
        assert main([str(tmp_path / 'native.kv'), str(out), '--overwrite']) == 0
    assert out.read_bytes() != kept


def test_a_word_takes_its_own_lower_case_vector_before_a_cased_one() -> None:
    """GoogleNews holds 'apple' and 'Apple' (the company) as different words: a normalised word takes
    its own vector when there is one, and only then its capitalised, then upper-case form."""
    from gensim.models import KeyedVectors

    from shared.text import WordVectors

    kv = KeyedVectors(vector_size=2)
    kv.add_vectors(['Apple', 'apple', 'US', 'Us', 'NASA'], np.arange(10, dtype=np.float32).reshape(5, 2))
    wv = WordVectors(kv, Path('unused.bin'))
    assert wv.lookup('apple').tolist() == [2, 3]
    assert wv.lookup('us').tolist() == [6, 7] and wv.lookup('nasa').tolist() == [8, 9]
    assert wv.lookup('pear') is None
