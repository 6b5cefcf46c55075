"""Convert word vectors saved in gensim's native format (`KeyedVectors.save`, a pickle) to a word2vec
binary, the format every command reads.

    python -m pipelines.import_word_vectors vectors.kv vectors.bin

A pickle can run code when it is loaded: this command is the only place that loads one, after a
warning, so import only files from a source you trust. The word2vec file it writes holds words
and numbers only, and is what `--set word_vectors=...` / `data.word_vectors` should then name.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from shared.text import BINARY_SUFFIXES, TEXT_SUFFIXES, load_word_vectors

__all__ = ['import_word_vectors', 'main']


def import_word_vectors(src: Path, out: Path, overwrite: bool = False) -> Path:
    """Load `src` with gensim's (unpickling) `KeyedVectors.load` and write it to `out` as a word2vec
    binary; `out` appears whole or not at all, and replaces a file there only with `overwrite`. Returns `out`."""
    from gensim.models import KeyedVectors

    if not out.name.lower().endswith(BINARY_SUFFIXES[0]):
        raise ValueError(f'{out}: the output is a word2vec binary; give it a name ending in .bin')
    if not src.is_file():
        raise FileNotFoundError(f'{src} not found')
    if src.name.lower().endswith(BINARY_SUFFIXES + TEXT_SUFFIXES):  # nothing to convert, nothing to unpickle
        raise ValueError(f'{src} is named as a word2vec file, which needs no import: name it in the setting directly')
    if not out.parent.is_dir():
        raise FileNotFoundError(f'{out.parent} is not a directory: create it, or write {out.name} elsewhere')
    if out.exists() and not overwrite:  # e.g. the GoogleNews .bin named as OUT by a slip: 3.6 GB gone
        raise ValueError(f'{out} exists: give another name, or pass --overwrite to replace it')
    # warned here, where the pickle is read: a wrong name or output is an error line alone
    warnings.warn(f'reading {src} with gensim KeyedVectors.load: unpickling can run code from the file; import '
                  'only files from a source you trust', stacklevel=2)
    try:
        kv = KeyedVectors.load(str(src))  # noqa: S301 - the explicit importer, after the warning above
    except Exception as err:  # noqa: BLE001 - whatever a file that is no gensim save makes the unpickler raise
        raise ValueError(f'{src}: not a gensim KeyedVectors.save file ({type(err).__name__}: {err}); give the '
                         'file KeyedVectors.save wrote, whole') from None
    if not isinstance(kv, KeyedVectors):
        raise ValueError(f'{src} holds a {type(kv).__name__}, not gensim KeyedVectors')
    tmp = out.with_name(f'.{out.name}.tmp')
    kv.save_word2vec_format(str(tmp), binary=True)
    os.replace(tmp, out)
    load_word_vectors(out)  # read back through the loader every command uses
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog='python -m pipelines.import_word_vectors', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split('\n\n')[1])
    p.add_argument('src', type=Path, help='a gensim KeyedVectors.save file (a pickle: only one you trust)')
    p.add_argument('out', type=Path, help='the word2vec binary to write (.bin)')
    p.add_argument('--overwrite', action='store_true', help='replace OUT when it exists')
    args = p.parse_args(argv)
    try:
        import_word_vectors(args.src, args.out, args.overwrite)
    except (FileNotFoundError, ValueError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    print(f'{args.src} -> {args.out} (word2vec binary)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
