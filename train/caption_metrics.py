"""Captioning metrics of the COCO caption evaluation (pycocoevalcap): BLEU-1..4, METEOR, ROUGE-L and
CIDEr, each candidate scored against every reference caption of its video (support-set appendix
6.4, Tables 7-9; the papers print them x 100, and so do we).

pycocoevalcap tokenises with Stanford's PTBTokenizer and scores METEOR with METEOR 1.5, both Java
programs shipped in its wheel. With `java` on PATH both are used, exactly as the COCO evaluation
does. Without it, captions are tokenised by `ptb_tokenize` (PTBTokenizer's rules for caption text:
lower case, punctuation split off and dropped, clitics split), BLEU, ROUGE-L and CIDEr are scored
as usual, and METEOR is reported unavailable with the reason.
"""
from __future__ import annotations

import re
import shutil
from collections.abc import Mapping, Sequence

from shared.logs import without_stderr_lines

__all__ = ['CaptionScores', 'caption_metrics', 'ptb_tokenize', 'METRICS', 'java_missing']

#: metric names, in the order tables print them
METRICS = ('BLEU-1', 'BLEU-2', 'BLEU-3', 'BLEU-4', 'METEOR', 'ROUGE-L', 'CIDEr')

#: the punctuation tokens pycocoevalcap's PTBTokenizer drops after tokenising
_PUNCTUATION = {"''", "'", '``', '`', '-LRB-', '-RRB-', '-LCB-', '-RCB-', '.', '?', '!', ',', ':', '-', '--', '...',
                ';'}
#: PTB clitics split off the word before them ("don't" -> "do n't", "cat's" -> "cat 's")
_CLITICS = re.compile(r"(?i)(\w)(n't|'s|'re|'ve|'ll|'d|'m)\b")
_TOKEN = re.compile(r"(?:[a-z]\.){2,}|\.\.\.|--|n't|'\w+|\w+(?:[-.]\w+)*|[^\w\s]")
#: brackets as PTBTokenizer writes them; lower-cased, they are not in its punctuation list and stay
_BRACKETS = {'(': '-lrb-', ')': '-rrb-', '{': '-lcb-', '}': '-rcb-', '[': '-lsb-', ']': '-rsb-'}

CaptionScores = dict[str, float]


def java_missing() -> str:
    """Why pycocoevalcap's Java programs cannot run here ('' when they can)."""
    return '' if shutil.which('java') else 'no java on PATH (install a JRE, e.g. apt-get install default-jre-headless)'


def ptb_tokenize(text: str) -> str:
    """A caption as PTBTokenizer (-lowerCase) and pycocoevalcap leave it: lower case, tokens joined
    by single spaces, punctuation tokens dropped."""
    text = _CLITICS.sub(r'\1 \2', text.lower().replace('\n', ' '))
    return ' '.join(_BRACKETS.get(t, t) for t in _TOKEN.findall(text) if t not in _PUNCTUATION)


#: the Java PTBTokenizer's line about its speed, written to stderr whatever the caller asked for
_PTB_RATE = re.compile(r'PTBTokenizer tokenized \d+ tokens at [\d.]+ tokens per second\.$')


def _tokenize(captions: Mapping[str, Sequence[str]], java: bool) -> dict[str, list[str]]:
    if not java:
        return {k: [ptb_tokenize(c) for c in caps] for k, caps in captions.items()}
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # its Java prints 'PTBTokenizer tokenized 80 tokens at 1220.95 tokens per second.' on stderr at each call
    with without_stderr_lines(_PTB_RATE.match):
        return PTBTokenizer().tokenize({k: [{'caption': c} for c in caps] for k, caps in captions.items()})


def caption_metrics(candidates: Mapping[str, str], references: Mapping[str, Sequence[str]]
                    ) -> tuple[CaptionScores, dict[str, str]]:
    """Corpus scores of one candidate caption per video against all of that video's references.

    Args:
        candidates: video id -> generated caption.
        references: video id -> its reference captions (every video of `candidates` needs one).

    Returns:
        ({metric: score x 100}, {metric: why it is unavailable}).

    Raises:
        ValueError: a candidate's video has no reference caption.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    bare = [v for v in candidates if not references.get(v)]
    if bare or not candidates:
        raise ValueError(f'no reference captions for {len(bare)} videos, e.g. {bare[:3]}' if bare
                         else 'no candidate captions to score')
    why = java_missing()
    res = _tokenize({v: [c] for v, c in candidates.items()}, not why)
    gts = _tokenize({v: list(references[v]) for v in candidates}, not why)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = {f'BLEU-{n + 1}': bleu[n] for n in range(4)}
    unavailable = {}
    if why:
        unavailable['METEOR'] = why
    else:
        from pycocoevalcap.meteor.meteor import Meteor

        scores['METEOR'], _ = Meteor().compute_score(gts, res)  # its Java process ends with the object
    scores['ROUGE-L'], _ = Rouge().compute_score(gts, res)
    scores['CIDEr'], _ = Cider().compute_score(gts, res)
    return {k: 100.0 * float(scores[k]) for k in METRICS if k in scores}, unavailable
