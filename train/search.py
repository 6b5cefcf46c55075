"""Text-to-video search over a trained run's gallery (its test videos, embedded once at the end
of training and saved as gallery.pt).

    python -m train.search --run runs/ce-demo-official --query "a cat while the camera zooms in" -k 5
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from shared.config import DATA_ROOT_HELP, ConfigError, data_root_default
from shared.files import sha256_file
from train.captions import CaptionEncoder, build_caption_encoder
from train.checkpoints import GALLERY, CheckpointError
from train.config import RunCfg
from train.index import STALE_MMT, stale_mmt_masks
from train.models.base import RetrievalModel, TextEmbedding, VideoEmbedding
from train.runs import load_run, run_seeds

__all__ = ['Searcher', 'encode_query', 'main']


@torch.no_grad()
def encode_query(model: RetrievalModel, captions: CaptionEncoder, query: str) -> TextEmbedding:
    """The model's embedding of free text (ValueError: a query the text encoder sees nothing of,
    whose ranking would be the same for any such query)."""
    if not query.strip():
        raise ValueError('the query is empty')
    caption = captions.encode([query])
    if not caption.mask[0].any():  # word vectors only: subword tokenizers always give some tokens
        raise ValueError('no word of this query has a word vector')
    if not captions.knows(query):
        raise ValueError("no word of this query is in the run's vocabulary")
    return model.encode_text(caption.batch(np.arange(1)))


class Searcher:
    """A run's model and gallery, loaded once; `search` ranks the gallery for free text."""

    def __init__(self, run: Path, data_root: Path) -> None:
        self.note = ''
        seeds = run_seeds(run)
        run = seeds[0]
        if len(seeds) > 1:
            self.note = (f'{len(seeds)} seeds in this run; searching {run.name} '
                         f'(--run {run.parent}/{seeds[-1].name} for another)')
        self.run = run
        loaded = load_run(run, gallery=True)
        self.cfg: RunCfg = loaded.cfg
        self.model = loaded.model
        gallery = loaded.gallery
        made_from = gallery.get('checkpoint_sha256')  # absent from galleries written before it was recorded
        if made_from is not None and made_from != sha256_file(loaded.checkpoint):
            raise CheckpointError(f'{run / GALLERY} was made from another state of {loaded.checkpoint} (training '
                                  'resumed since and stopped before its end?): its embeddings do not match these '
                                  f'weights. Rerun the training command of this run: it writes {GALLERY} again')
        self.video_ids: list[str] = list(gallery['video_ids'])
        available = gallery['available']
        if stale_mmt_masks(self.cfg.model.model, available):  # the embeddings hold: every expert enters (eq. 6)
            available = torch.ones_like(available, dtype=torch.bool)
            self.note = '; '.join(filter(None, [self.note, f'{GALLERY} holds {STALE_MMT}: scored with every expert']))
        self.gallery = VideoEmbedding(gallery['emb'], available)
        self.captions = build_caption_encoder(self.cfg.model.text, self.cfg.data, data_root, run, None)

    @torch.no_grad()
    def search(self, query: str, k: int = 10) -> list[tuple[str, float]]:
        """The `k` best gallery videos for `query` with their scores (ValueError: a query the text
        encoder sees nothing of, whose ranking would be the same for any such query)."""
        text = encode_query(self.model, self.captions, query)
        if text.emb.shape[1:] != self.gallery.emb.shape[1:]:  # a gallery.pt copied from another run
            raise CheckpointError(f'{self.run / GALLERY} holds embeddings of another model (experts x dims '
                                  f'{tuple(self.gallery.emb.shape[1:])}, this run\'s model makes '
                                  f'{tuple(text.emb.shape[1:])}). Rerun the training command of this run: it writes '
                                  f'{GALLERY} again from its checkpoint')
        scores = self.model.similarity(text, self.gallery)[0]
        top = torch.topk(scores, min(k, len(self.video_ids)))
        return [(self.video_ids[i], float(s)) for s, i in zip(top.values, top.indices)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog='python -m train.search', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split('\n\n')[1])
    p.add_argument('--run', type=Path, required=True, help='a run directory (runs/MODEL-DATASET-SPLIT[/seedN])')
    p.add_argument('--query', action='append', required=True, help='free text; repeat for several queries')
    p.add_argument('-k', type=int, default=10, help='results per query (default: 10)')
    p.add_argument('--data-root', type=Path, default=data_root_default(),
                   help='dataset folders, for the video files and word vectors '
                        f'(default: {DATA_ROOT_HELP})')
    args = p.parse_args(argv)
    if args.k < 1:  # before the model loads
        p.error('-k must be at least 1')
    try:
        searcher = Searcher(args.run, args.data_root)
    except (ConfigError, FileNotFoundError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C while the model and word vectors load (GoogleNews': a minute)
        print('\ninterrupted while loading the run: no query answered', file=sys.stderr)
        return 130
    if searcher.note:
        print(searcher.note, file=sys.stderr)
    code = 0
    for q in args.query:
        print(f'query: {q}')
        try:
            hits = searcher.search(q, args.k)
        except ValueError as err:
            print(f'error: {err}', file=sys.stderr)
            code = 1
            continue
        for rank, (vid, score) in enumerate(hits, start=1):
            print(f'  {rank:>3}. {vid}  {score:.4f}')
    return code


if __name__ == '__main__':
    sys.exit(main())
