"""Captioning with the support-set decoder (support-set appendix 6.4) and the COCO caption metrics."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from train.caption_metrics import caption_metrics, ptb_tokenize

JAVA = pytest.mark.skipif(shutil.which('java') is None, reason='pycocoevalcap runs its tokenizer and METEOR in Java')

#: hand-made candidates and references: several references per video, punctuation, clitics, case
CANDIDATES = {'v1': 'A man is playing a guitar.', 'v2': "the dog's running on grass", 'v3': 'a woman cooks food',
              'v4': 'someone talks'}
REFERENCES = {
    'v1': ['A man plays the guitar on stage.', 'a person is playing a guitar', 'Someone strums a guitar!'],
    'v2': ['A dog runs across the grass.', "The dog's running on the grass, fast.", 'a puppy plays outside'],
    'v3': ['A woman is cooking in a kitchen.', 'a lady prepares food', "She's cooking (pasta) -- quickly..."],
    'v4': ['a man talks to the camera', 'someone is talking'],
}


def _cocoeval(candidates: dict[str, str], references: dict[str, list[str]],
              meteor: object | None = None) -> dict[str, float]:
    """The COCO caption evaluation as pycocoevalcap's own README runs it; `meteor`: a `Meteor` to
    score with (its Java program loads its paraphrase tables once, 5-20 s here), else a new one."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{'caption': c} for c in v] for k, v in references.items()})
    res = tok.tokenize({k: [{'caption': c}] for k, c in candidates.items()})
    bleu, _ = Bleu(4).compute_score(gts, res)
    out = {f'BLEU-{i + 1}': b for i, b in enumerate(bleu)}
    for name, scorer in (('METEOR', meteor or Meteor()), ('ROUGE-L', Rouge()), ('CIDEr', Cider())):
        out[name] = scorer.compute_score(gts, res)[0]
    return {k: 100.0 * float(v) for k, v in out.items()}


@JAVA
def test_the_java_tokenizer_writes_no_stray_line(capfd: pytest.CaptureFixture) -> None:
    """`make demo` printed 'PTBTokenizer tokenized 80 tokens at 1220.95 tokens per second.' on stderr."""
    from train.caption_metrics import _tokenize

    assert _tokenize({'v1': ['A man plays the guitar.']}, java=True) == {'v1': ['a man plays the guitar']}
    assert capfd.readouterr().err == ''


@pytest.mark.slow  # four Java programs: 10-60 s here
@JAVA
def test_metrics_match_pycocoevalcap_on_hand_made_captions() -> None:
    from pycocoevalcap.meteor.meteor import Meteor

    ours, unavailable = caption_metrics(CANDIDATES, REFERENCES)
    meteor = Meteor()  # one Java METEOR for both reference evaluations below (it scores each call alone)
    want = _cocoeval(CANDIDATES, REFERENCES, meteor)
    assert unavailable == {} and list(ours) == ['BLEU-1', 'BLEU-2', 'BLEU-3', 'BLEU-4', 'METEOR', 'ROUGE-L', 'CIDEr']
    for k, v in want.items():
        assert ours[k] == pytest.approx(v, abs=1e-9), k
    # every reference counts: against the first reference alone the scores differ
    first = _cocoeval(CANDIDATES, {k: v[:1] for k, v in REFERENCES.items()}, meteor)
    assert all(abs(first[k] - want[k]) > 0.5 for k in ('BLEU-1', 'BLEU-4', 'METEOR', 'CIDEr'))
    with pytest.raises(ValueError, match='no reference captions for 1 videos'):
        caption_metrics({**CANDIDATES, 'v9': 'a cat'}, REFERENCES)


@pytest.mark.slow
@JAVA
def test_without_java_meteor_is_unavailable_and_the_rest_match(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    texts = [c for refs in REFERENCES.values() for c in refs] + list(CANDIDATES.values())
    want = PTBTokenizer().tokenize({str(i): [{'caption': t}] for i, t in enumerate(texts)})
    assert [ptb_tokenize(t) for t in texts] == [want[str(i)][0] for i in range(len(texts))]
    with_java, _ = caption_metrics(CANDIDATES, REFERENCES)
    monkeypatch.setenv('PATH', str(tmp_path))  # no java here
    ours, unavailable = caption_metrics(CANDIDATES, REFERENCES)
    assert 'METEOR' not in ours and 'java' in unavailable['METEOR']
    assert ours == pytest.approx({k: v for k, v in with_java.items() if k != 'METEOR'}, abs=1e-9)

def test_ptb_tokenize_by_hand() -> None:
    """PTBTokenizer's rules as pycocoevalcap applies them (the Java tokenizer itself: the slow test above)."""
    assert ptb_tokenize("The dog's running, isn't it?") == "the dog 's running is n't it"
    assert ptb_tokenize("She's cooking (pasta) -- quickly...") == "she 's cooking -lrb- pasta -rrb- quickly"


def test_scores_without_java_by_hand(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """x 100, against every reference: 'a cat sits' has all its 1-3-grams in the second reference, and BLEU's
    brevity penalty takes the reference length closest to 3 words (4: exp(1 - 4/3))."""
    monkeypatch.setenv('PATH', str(tmp_path))  # no java: METEOR unavailable, the rest in Python
    scores, unavailable = caption_metrics({'v': 'A cat sits.'}, {'v': ['a dog runs fast', 'a cat sits on a mat']})
    assert list(unavailable) == ['METEOR'] and 'METEOR' not in scores
    for n in (1, 2, 3):
        assert scores[f'BLEU-{n}'] == pytest.approx(100 * math.exp(1 - 4 / 3), abs=1e-6), n
    first, _ = caption_metrics({'v': 'a cat sits'}, {'v': ['a dog runs fast']})
    assert first['BLEU-1'] == pytest.approx(100 * math.exp(1 - 4 / 3) / 3, abs=1e-6)  # 'a' of 3 words matches



def _bleu4(candidate: dict[str, str], references: dict[str, list[str]]) -> float:
    from pycocoevalcap.bleu.bleu import Bleu

    gts = {k: [ptb_tokenize(c) for c in v] for k, v in references.items()}
    return 100.0 * Bleu(4).compute_score(gts, {k: [ptb_tokenize(c)] for k, c in candidate.items()}, verbose=0)[0][3]


@pytest.mark.slow
def test_caption_writes_demo_captions_that_beat_the_best_constant_caption(ssb_demo_run: Path,
                                                                          demo_stores: tuple[Path, Path]) -> None:
    from train.caption import main as caption_main

    data, features = demo_stores
    run = ssb_demo_run
    meta = json.loads((data / 'demo' / 'demo.json').read_text())
    test = meta['splits']['test']
    assert caption_main(['--run', str(run), '--data-root', str(data), '--features-root', str(features),
                         '--device', 'cpu']) == 0
    record = json.loads((run / 'seed0' / 'captions' / 'demo_official_test_greedy.json').read_text())
    captions = record['captions']
    assert sorted(captions) == sorted(test) and all(captions.values())
    vocab = set(json.loads((run / 'seed0' / 'tokenizer.json').read_text())['words'])
    assert all(set(c.split()) <= vocab for c in captions.values())
    refs = {v['id']: v['captions'] for v in meta['videos'] if v['id'] in test}
    assert record['references'] == refs
    ours = _bleu4(captions, refs)
    assert record['metrics']['BLEU-4'] == pytest.approx(ours, abs=1e-6)
    # the best constant captions a captioner blind to the video could say of every test video: the
    # training caption with the best BLEU-4 on the training videos (what it could learn), and the
    # test reference with the best BLEU-4 on the test videos (chosen with hindsight of the answers)
    train = meta['splits']['train']
    train_refs = {v['id']: v['captions'] for v in meta['videos'] if v['id'] in train}
    learnable = max(sorted({c for caps in train_refs.values() for c in caps}),
                    key=lambda c: _bleu4({v: c for v in train}, train_refs))
    hindsight = max(sorted({c for caps in refs.values() for c in caps}), key=lambda c: _bleu4({v: c for v in test}, refs))
    constants = {name: (_bleu4({v: c for v in test}, refs), c)
                 for name, c in (('training', learnable), ('hindsight', hindsight))}
    margins = {name: round(ours - score, 1) for name, (score, _) in constants.items()}
    assert min(margins.values()) > 0, (f'BLEU-4 {ours:.1f}, margins over the best constant captions {margins}',
                                       constants, list(captions.values())[:5])
    assert caption_main(['--run', str(run), '--data-root', str(data), '--features-root', str(features),
                         '--device', 'cpu', '--beam', '3']) == 0
    beam = json.loads((run / 'seed0' / 'captions' / 'demo_official_test_beam3.json').read_text())
    assert sorted(beam['captions']) == sorted(test) and beam['decoding'] == 'beam3'
