"""CLI: describe a dataset's manifest (counts per split), to check that its files are in place.

    python -m shared.datasets msrvtt [--data-root data]
    python -m shared.datasets folder:/path/to/videos
    python -m shared.datasets howto100m --dataset-option captions=raw_caption.json
"""
from __future__ import annotations

import argparse
import sys

from shared.config import data_root_default
from shared.datasets import DatasetError, list_datasets, load_manifest, parse_dataset_options
from shared.media import is_image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m shared.datasets', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n\n')[1])
    parser.add_argument('dataset', help=f'one of: {", ".join(list_datasets())}')
    parser.add_argument('--data-root', default=None,
                        help=f'directory holding one folder per dataset (default: {data_root_default()}, '
                             'or $VIDEOEXPERTS_DATA_ROOT)')
    parser.add_argument('--dataset-option', action='append', default=[], metavar='KEY=VALUE',
                        help="an option of the dataset's adapter, e.g. captions=raw_caption.json for howto100m")
    args = parser.parse_args(argv)
    try:
        manifest = load_manifest(args.dataset, args.data_root, **parse_dataset_options(args.dataset_option))
    except DatasetError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    print(manifest.describe())
    missing = sum(not p.exists() for p in manifest.paths)
    images = sum(map(is_image, manifest.paths))
    kind = 'image' if images == len(manifest) else 'video' if not images else 'video and image'
    print(f'  {kind} files: {len(manifest) - missing} found, {missing} missing')
    return 0


if __name__ == '__main__':
    sys.exit(main())
