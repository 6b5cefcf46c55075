"""The evaluation protocol against an independent implementation written here from its definition."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from train.config import TrainCfg, load_run_cfg
from train.metrics import format_results, geometric_mean, mean_std, ranks_to_metrics, retrieval_metrics

CONFIGS = Path(__file__).resolve().parents[2] / 'pipelines' / 'configs' / 'train'


def _reference(sims: np.ndarray, query_video: np.ndarray) -> dict[str, dict[str, float]]:
    """Written from the protocol as the CE code states it: sort the distances, find every position
    equal to the ground truth's, average those positions; v2t keeps a video's best caption."""
    dists = -sims
    t2v = []
    for q in range(sims.shape[0]):
        row = np.sort(dists[q])
        t2v.append(np.where(row == dists[q, query_video[q]])[0].mean())
    v2t = []
    for v in range(sims.shape[1]):
        caps = np.where(query_video == v)[0]
        if len(caps) == 0:
            continue
        column = np.sort(dists[:, v])
        v2t.append(min(np.where(column == dists[c, v])[0].mean() for c in caps))

    def metrics(r: list[float]) -> dict[str, float]:
        r = np.asarray(r)
        return {'R1': 100 * np.mean(r == 0), 'R5': 100 * np.mean(r < 5), 'R10': 100 * np.mean(r < 10),
                'R50': 100 * np.mean(r < 50), 'MdR': np.median(r) + 1, 'MnR': np.mean(r) + 1}
    return {'t2v': metrics(t2v), 'v2t': metrics(v2t)}


@pytest.mark.parametrize('seed', range(6))
def test_equals_the_reference_with_ties_and_masked_captions(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_videos = int(rng.integers(5, 60))
    per_video = rng.integers(0, 6, n_videos)  # 0 to 5 valid captions: some videos have none
    query_video = np.repeat(np.arange(n_videos), per_video)
    levels = int(rng.integers(2, 6))  # few distinct values: ties everywhere
    sims = rng.integers(0, levels, (len(query_video), n_videos)).astype(np.float64)
    if seed == 0:
        sims[:] = 1.0  # all tied: the worst case for optimistic tie-breaking
    ours = retrieval_metrics(sims, query_video, chunk_size=7)
    ref = _reference(sims, query_video)
    for d in ('t2v', 'v2t'):
        for k, v in ref[d].items():
            assert ours[d][k] == pytest.approx(v, abs=1e-9), (d, k)


def test_chunking_and_torch_input_do_not_change_anything() -> None:
    rng = np.random.default_rng(7)
    qv = rng.integers(0, 40, 150)
    sims = rng.standard_normal((150, 40)).round(1)
    a = retrieval_metrics(sims, qv, chunk_size=1000)
    b = retrieval_metrics(torch.from_numpy(sims).float().double(), qv, chunk_size=3)
    assert a == b


def test_tie_at_the_top_is_not_r1() -> None:
    sims = np.array([[1.0, 1.0], [0.0, 1.0]])
    m = retrieval_metrics(sims, [0, 1])
    assert m['t2v']['R1'] == 50.0 and m['t2v']['R5'] == 100.0 and m['t2v']['MnR'] == pytest.approx(1.25)
    assert ranks_to_metrics(np.array([0.5]))['R1'] == 0.0


def test_float64_scores_closer_than_float32_tells_apart_are_not_ties() -> None:
    """Scores are compared as given (in float64): a ground truth 1e-12 below another video is ranked
    second, not tied with it (float32 would round both to 0.3 and give 0.5), in both directions."""
    sims = np.array([[0.3, 0.3 + 1e-12], [0.0, 1.0]])
    assert np.float32(sims[0, 0]) == np.float32(sims[0, 1])
    m = retrieval_metrics(sims, [0, 1])
    assert m['t2v']['MnR'] == pytest.approx(1.5) and m['t2v']['R1'] == 50.0
    assert retrieval_metrics(sims.T.copy(), [0, 1])['v2t']['MnR'] == pytest.approx(1.5)


def test_a_nan_or_infinite_ground_truth_score_is_an_error_not_a_rank() -> None:
    """A NaN score compares false with everything, itself included: its caption's rank would come out
    -0.5, a hit of R@5 and R@10; scores with one are refused."""
    sims = np.array([[np.nan, 0.2], [0.1, 0.9]])
    with pytest.raises(ValueError, match='NaN or inf in the ground-truth scores'):
        retrieval_metrics(sims, [0, 1])
    # +inf: nothing scores higher, so its caption would be a hit at R@1 whatever the model learnt
    with pytest.raises(ValueError, match='NaN or inf in the ground-truth scores'):
        retrieval_metrics(np.array([[np.inf, 0.2], [0.1, 0.9]]), [0, 1])


@pytest.mark.parametrize('video', [-1, 3])
def test_a_caption_of_a_video_outside_the_scores_is_an_error(video: int) -> None:
    """A caption's video index must name a column: -1 (a caption whose video was dropped, say) is
    refused as clearly as 3, not left to the gather (a device-side assert on CUDA)."""
    with pytest.raises(ValueError, match=r'outside \[0, videos\)'):
        retrieval_metrics(np.eye(3), [0, 1, video])


def test_geometric_mean_of_r1_r5_r10_by_hand() -> None:
    """CE selects its checkpoint by the geometric mean of R1, R5 and R10 (its arithmetic mean picks others)."""
    ranks = np.array([0, 1, 2, 3, 5, 6, 7, 8, 9, 20])  # R1 10 %, R5 40 %, R10 90 %
    m = ranks_to_metrics(ranks)
    assert (m['R1'], m['R5'], m['R10']) == (10.0, 40.0, 90.0)
    assert m['geometric_mean_R1-R5-R10'] == pytest.approx((10 * 40 * 90) ** (1 / 3))
    assert geometric_mean([1.0, 4.0, 16.0]) == pytest.approx(4.0) and geometric_mean([0.0, 5.0, 9.0]) == 0.0


def test_results_table() -> None:
    run = {'t2v': {'R1': 10.0, 'R5': 30.0, 'R10': 40.0, 'MdR': 16.0, 'MnR': 80.0},
           'v2t': {'R1': 12.0, 'R5': 31.0, 'R10': 45.0, 'MdR': 12.0, 'MnR': 60.0}}
    run2 = {d: {k: v + 1 for k, v in m.items()} for d, m in run.items()}
    table = format_results({'CE': [run, run2]})
    assert '| CE | 10.5 ± 0.5 |' in table and table.count('\n') == 2


def _runs(values: list[float]) -> list[dict[str, dict[str, float]]]:
    return [{'t2v': {'MdR': v}, 'v2t': {'MdR': v}} for v in values]


def test_seed_std_sample_is_ces_and_population_is_mmts() -> None:
    # CE Table 1, 1k-B v2t MdR "6.5 ± 0.5": medians 6, 6.5, 7 give it only as a sample std (ddof 1);
    # MMT Table 7, 1k-A pretrained v2t MdR "3.7 ± 0.5": medians 3, 4, 4 give it as a population std
    assert format_results({'CE': _runs([6.0, 6.5, 7.0])}, keys=('MdR',), std='sample').endswith(
        '| CE | 6.5 ± 0.5 | 6.5 ± 0.5 |')
    assert format_results({'MMT': _runs([3.0, 4.0, 4.0])}, keys=('MdR',), std='population').endswith(
        '| MMT | 3.7 ± 0.5 | 3.7 ± 0.5 |')
    assert mean_std(_runs([6.0, 6.5, 7.0]), 'population')['t2v']['MdR'][1] == pytest.approx(np.std([6, 6.5, 7]))
    assert mean_std(_runs([5.0]), 'sample')['t2v']['MdR'] == (5.0, 0.0)  # one seed: no spread, not NaN


@pytest.mark.parametrize('name', sorted(p.name for p in CONFIGS.glob('*.yaml')))
def test_paper_recipes_print_their_papers_std(name: str) -> None:
    cfg = load_run_cfg(CONFIGS / name, {})
    paper_ce = cfg.model.model == 'ce' and name != 'ce_demo.yaml'
    assert cfg.train.seed_std == ('sample' if paper_ce else 'population')


def test_seed_std_is_checked() -> None:
    with pytest.raises(ValueError, match='seed_std'):
        TrainCfg(seed_std='ddof1')


def test_training_and_evaluate_print_the_configured_std(tiny: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    """train.seed_std reaches the results.md that training writes and the table train.evaluate prints."""
    from tests.train.conftest import tiny_args
    from train.evaluate import main as evaluate_main
    from train.main import main as train_main

    run = tmp_path / 'run'
    # a run trained before the setting (or with the other one) is the same run: it resumes, and prints as asked
    assert train_main(tiny_args(tiny, run, '--seeds', '0,1')) == 0
    assert train_main(tiny_args(tiny, run, '--seeds', '0,1', '--set', 'train.seed_std=sample')) == 0
    capsys.readouterr()
    seeds = [['--run', str(run / f'seed{s}'), '--data-root', str(tiny / 'data'), '--features-root',
              str(tiny / 'features'), '--device', 'cpu'] for s in (0, 1)]
    per_seed = []
    for args in seeds:  # each seed's own numbers, as evaluate writes them
        assert evaluate_main(args) == 0
        per_seed.append(json.loads(next((Path(args[1]) / 'eval').glob('*.json')).read_text()))
    sample = format_results({'mee': per_seed}, std='sample')
    assert sample != format_results({'mee': per_seed}, std='population')  # the seeds differ: the two stds do
    assert sample in (run / 'results.md').read_text()
    assert evaluate_main(['--run', str(run), *seeds[0][2:]]) == 0
    assert sample in capsys.readouterr().out

