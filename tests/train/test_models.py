"""Model properties that the evaluation protocol relies on (DESIGN.md, "Missing experts")."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from train.losses import hard_negative_triplet, hard_negative_triplet_sum, info_nce, max_margin_ranking
from train.models import ExpertSpec, model_cfg, count_parameters, create_model
from train.models.base import ExpertInput, TextEmbedding, TextInput, VideoEmbedding, mixture_similarity
from train.models.ce import CollaborativeGating
from train.models.layers import GEM, NetVLAD, ReduceDim
from train.models.mee import aggregate

EXPERTS = (ExpertSpec('object', 32), ExpertSpec('audio', 8, 'vlad', 4, 1, 6), ExpertSpec('face', 16, 'max'))
VARIANTS = {'mee': dict(model='mee'), 'ce': dict(model='ce', projection=True, gating='collaborative'),
            'ce-cg': dict(model='ce', projection=True), 'concat': dict(model='ce', fusion='concat'),
            'ce-mw,pcg': dict(model='ce', mixture_weights=False)}


def _videos(n: int, seed: int) -> dict[str, ExpertInput]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 7, (n,), generator=g)
    return {
        'object': ExpertInput(torch.randn(n, 32, generator=g), torch.rand(n, generator=g) > 0.2),
        'audio': ExpertInput(torch.randn(n, 6, 8, generator=g), lengths > 0, torch.arange(6)[None] < lengths[:, None]),
        'face': ExpertInput(torch.randn(n, 3, 16, generator=g), torch.rand(n, generator=g) > 0.5,
                            torch.ones(n, 3, dtype=torch.bool)),
    }


def _take(video: dict[str, ExpertInput], idx: torch.Tensor) -> dict[str, ExpertInput]:
    return {k: ExpertInput(v.x[idx], v.available[idx], None if v.mask is None else v.mask[idx]) for k, v in video.items()}


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(model_cfg(experts=EXPERTS, embed_dim=24, text_dim=12, text_clusters=3, **VARIANTS[name]))
    # a few training steps so that batch-norm statistics are not the identity
    for _ in range(3):
        model.train()
        max_margin_ranking(model.scores(_videos(8, 1), _texts(8, 1)), 0.1).backward()
    return model.eval()


def _texts(n: int, seed: int) -> TextInput:
    g = torch.Generator().manual_seed(seed + 100)
    return TextInput(torch.randn(n, 5, 12, generator=g), torch.arange(5)[None] < torch.randint(1, 6, (n, 1), generator=g))


@pytest.mark.parametrize('name', list(VARIANTS))
def test_scores_depend_only_on_their_pair(name: str) -> None:
    model = _model(name)
    videos, texts = _videos(10, 2), _texts(6, 2)
    with torch.no_grad():
        s = model.scores(videos, texts)
        perm = torch.randperm(10)
        assert torch.allclose(model.scores(_take(videos, perm), texts), s[:, perm], atol=1e-6)
        other = _videos(10, 3)  # replace every video but 0 and 4
        mixed = {k: ExpertInput(torch.cat([videos[k].x[[0]], other[k].x[1:4], videos[k].x[[4]], other[k].x[5:]]),
                                torch.cat([videos[k].available[[0]], other[k].available[1:4], videos[k].available[[4]],
                                           other[k].available[5:]]),
                                None if videos[k].mask is None else torch.cat(
                                    [videos[k].mask[[0]], other[k].mask[1:4], videos[k].mask[[4]], other[k].mask[5:]]))
                 for k in videos}
        s2 = model.scores(mixed, texts)
        assert torch.allclose(s2[:, [0, 4]], s[:, [0, 4]], atol=1e-6)
        t1 = model.encode_text(texts)
        model.scores(_videos(3, 9), texts)
        t2 = model.encode_text(texts)
        assert torch.equal(t1.emb, t2.emb) and torch.equal(t1.weights, t2.weights)  # no video enters a text
        assert torch.allclose(model.encode_text(TextInput(texts.x[:2], texts.mask[:2])).emb, t1.emb[:2], atol=1e-6)


@pytest.mark.parametrize('name', ['mee', 'ce', 'ce-cg'])
def test_a_missing_expert_changes_only_its_column(name: str) -> None:
    model = _model(name)
    videos, texts = _videos(7, 4), _texts(5, 4)
    videos['object'].available[:] = True
    with torch.no_grad():
        before = model.scores(videos, texts)
        videos['object'].available[3] = False
        after = model.scores(videos, texts)
    changed = (before - after).abs().amax(0) > 1e-7
    assert changed.tolist() == [j == 3 for j in range(7)]


def _trained_vlad(ghosts: int) -> NetVLAD:
    """NetVLAD(8, 4, ghosts) in eval mode, after one step (batch-norm statistics not the identity)."""
    torch.manual_seed(0)
    vlad = NetVLAD(8, 4, ghosts)
    vlad.train()
    vlad(torch.randn(6, 5, 8), torch.ones(6, 5, dtype=torch.bool)).sum().backward()
    return vlad.eval()


def test_netvlad_ignores_padding() -> None:
    vlad = _trained_vlad(1)
    x = torch.randn(2, 3, 8)
    padded = torch.cat([x, 100 * torch.randn(2, 4, 8)], 1)
    mask = torch.arange(7)[None].expand(2, 7) < 3
    assert torch.allclose(vlad(padded, mask), vlad(x, torch.ones(2, 3, dtype=torch.bool)), atol=1e-6)


def test_losses() -> None:
    perfect = torch.eye(4)
    assert max_margin_ranking(perfect, 0.2) == 0 and hard_negative_triplet(perfect, 0.2) == 0
    flat = torch.zeros(4, 4)
    assert max_margin_ranking(flat, 0.2) == pytest.approx(2 * 12 * 0.2 / 4)
    assert hard_negative_triplet(flat, 0.2) == pytest.approx(0.4)
    assert info_nce(10 * perfect, 1.0) < info_nce(flat, 1.0)


def test_ablations_change_the_parameter_count() -> None:
    counts = {n: count_parameters(_model(n))['total'] for n in VARIANTS}
    assert counts['ce'] > counts['ce-cg'] == counts['mee'] > counts['ce-mw,pcg']
    assert counts['concat'] < counts['mee']


@pytest.mark.parametrize('name', ['mee', 'ce', 'ce-cg'])
def test_a_pair_scores_the_same_alone_and_beside_videos_with_more_experts(name: str) -> None:
    # CE appendix A.1: renormalising the mixture weights over the experts present in *any* video of
    # the batch makes a video's score depend on its batch-mates
    model = _model(name)
    videos, texts = _videos(6, 5), _texts(4, 5)
    for k, v in videos.items():
        v.available[:] = True
        if v.mask is not None:
            v.mask[:] = True
    for k in ('object', 'face'):
        videos[k].available[0] = False  # video 0 lacks two experts that all the others have
    with torch.no_grad():
        batch = model.scores(videos, texts)[:, 0]
        alone = model.scores(_take(videos, torch.tensor([0])), texts)[:, 0]
    assert torch.allclose(alone, batch, atol=1e-6)


def test_mixture_similarity_renormalises_per_pair() -> None:
    text = TextEmbedding(F.normalize(torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0)), dim=-1),
                         torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]))
    video = VideoEmbedding(F.normalize(torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1)), dim=-1),
                           torch.tensor([[True, False, True], [True, True, True]]))
    dots = torch.einsum('tmd,vmd->tvm', text.emb, video.emb)
    expected = torch.empty(2, 2)
    for t in range(2):
        for v in range(2):
            w = [text.weights[t, m].item() if video.available[v, m] else 0.0 for m in range(3)]
            expected[t, v] = sum(w[m] * dots[t, v, m] for m in range(3)) / sum(w)
    assert torch.allclose(mixture_similarity(text, video), expected, atol=1e-6)


@pytest.mark.parametrize('name', ['mee', 'ce', 'ce-cg'])
def test_mixture_weights_of_a_caption_do_not_depend_on_its_batch(name: str) -> None:
    model = _model(name)
    texts = _texts(6, 6)
    with torch.no_grad():
        batch = model.encode_text(texts).weights
        alone = model.encode_text(TextInput(texts.x[2:3], texts.mask[2:3])).weights
    assert batch.shape == (6, 3)
    assert torch.allclose(batch.sum(1), torch.ones(6), atol=1e-6)  # a distribution over the experts
    assert torch.allclose(alone, batch[2:3], atol=1e-6)
    assert not torch.allclose(batch[0], batch[1], atol=1e-4)  # text-dependent, so the check above means something


def _netvlad_reference(vlad: NetVLAD, x: torch.Tensor) -> torch.Tensor:
    """NetVLAD with ghost clusters written out per token (eval mode, no padding)."""
    b, n, d = x.shape
    out = []
    for i in range(b):
        logits = vlad.bn(vlad.assign(x[i]))  # (n, K+G): batch-norm in eval mode acts per token
        a = torch.softmax(logits, dim=-1)  # over real *and* ghost clusters
        rows = []
        for k in range(vlad.clusters):
            rows.append(F.normalize(sum(a[j, k] * (x[i, j] - vlad.centroids[k]) for j in range(n)), dim=0))
        out.append(F.normalize(torch.cat(rows), dim=0))
    return torch.stack(out)


def test_netvlad_ghost_clusters_absorb_assignment() -> None:
    ghost = _trained_vlad(2)
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        got = ghost(x)
        assert torch.allclose(got, _netvlad_reference(ghost, x), atol=1e-5)
        # the same real clusters without the ghosts: a different output
        plain = NetVLAD(8, 4, 0).eval()
        plain.assign.weight.copy_(ghost.assign.weight[:4])
        plain.centroids.copy_(ghost.centroids)
        for name in ('weight', 'bias', 'running_mean', 'running_var'):
            getattr(plain.bn, name).copy_(getattr(ghost.bn, name)[:4])
        assert not torch.allclose(plain(x), got, atol=1e-3)


def test_losses_on_an_asymmetric_matrix() -> None:
    s = torch.tensor([[0.9, 0.8, 0.1], [0.2, 0.5, 0.0], [0.3, 0.1, 0.4]])  # rows: texts, columns: videos
    m, n = 0.2, 3
    t2v = sum(max(0.0, m + s[i, j].item() - s[i, i].item()) for i in range(n) for j in range(n) if j != i)
    v2t = sum(max(0.0, m + s[j, i].item() - s[i, i].item()) for i in range(n) for j in range(n) if j != i)
    assert t2v != pytest.approx(v2t)
    assert max_margin_ranking(s, m).item() == pytest.approx((t2v + v2t) / n)
    hard_t2v = [max(0.0, m + max(s[i, j].item() for j in range(n) if j != i) - s[i, i].item()) for i in range(n)]
    hard_v2t = [max(0.0, m + max(s[j, i].item() for j in range(n) if j != i) - s[i, i].item()) for i in range(n)]
    assert sum(hard_t2v) != pytest.approx(sum(hard_v2t))
    assert hard_negative_triplet(s, m).item() == pytest.approx((sum(hard_t2v) + sum(hard_v2t)) / n)
    # the support-set configs' reduction, Faghri et al.'s: the sum over the batch's queries
    assert hard_negative_triplet_sum(s, m).item() == pytest.approx(sum(hard_t2v) + sum(hard_v2t))
    # symmetric InfoNCE: each text against all videos, and each video against all texts
    tau = 0.1
    t2v_nce = [-math.log(math.exp(s[i, i] / tau) / sum(math.exp(s[i, j] / tau) for j in range(n))) for i in range(n)]
    v2t_nce = [-math.log(math.exp(s[i, i] / tau) / sum(math.exp(s[j, i] / tau) for j in range(n))) for i in range(n)]
    assert sum(t2v_nce) != pytest.approx(sum(v2t_nce))
    assert info_nce(s, tau).item() == pytest.approx((sum(t2v_nce) + sum(v2t_nce)) / (2 * n), rel=1e-5)


def test_collaborative_gating_ignores_a_missing_experts_features() -> None:
    torch.manual_seed(0)
    cg = CollaborativeGating(['a', 'b', 'c'], 8)
    cg.train()
    cg(torch.randn(10, 3, 8), torch.rand(10, 3) > 0.3).sum().backward()  # batch-norm statistics
    cg.eval()
    x = torch.randn(4, 3, 8)
    available = torch.tensor([[True, False, True], [True, True, True], [False, True, True], [True, True, False]])
    changed = x.clone()
    changed[0, 1] = 10 * torch.randn(8)
    changed[2, 0] = 10 * torch.randn(8)
    changed[3, 2] = 10 * torch.randn(8)
    with torch.no_grad():
        a, b = cg(x, available), cg(changed, available)
    assert torch.allclose(a[available], b[available], atol=1e-6)
    assert torch.equal(a[1], b[1])


def test_losses_are_registered_modules_and_an_unknown_one_fails_when_the_config_loads() -> None:
    from shared.config import from_dict
    from train.config import RunCfg
    from train.losses import LOSSES, build_loss

    model = _model('ce')
    out = model(_videos(8, 4), _texts(8, 4))
    sims = model.similarity(out.text, out.video)
    for name, want in (('max_margin', max_margin_ranking(sims, 0.2)), ('hard_negative', hard_negative_triplet(sims, 0.2)),
                       ('hard_negative_sum', hard_negative_triplet_sum(sims, 0.2)), ('info_nce', info_nce(sims, 0.05))):
        loss = build_loss(name, 0.2, 0.05)
        assert isinstance(loss, torch.nn.Module) and name in LOSSES
        assert torch.equal(loss(model, out), want)
    with pytest.raises(ValueError, match="unknown train.loss 'max_margn'.*max_margin"):
        from_dict(RunCfg, {'data': {}, 'model': {'model': 'mee', 'experts': [{'name': 'object', 'dim': 4}]},
                           'train': {'loss': 'max_margn'}})


def test_each_model_has_its_own_config_and_refuses_another_models_settings(tmp_path) -> None:
    from shared.config import ConfigError, from_dict
    from train.config import RunCfg, check_resumable as _check_resumable
    from train.models.config import CECfg, MMTCfg, SSBCfg

    experts = [{'name': 'object', 'dim': 4, 'aggregation': 'tokens', 'max_tokens': 2}]
    run = lambda model, **kw: {'data': {}, 'model': {'model': model, 'experts': experts, **kw}, 'train': {}}  # noqa: E731
    assert type(from_dict(RunCfg, run('ce', projection=True)).model) is CECfg
    assert type(from_dict(RunCfg, run('ssb', support_set='full')).model) is SSBCfg
    assert type(from_dict(RunCfg, run('mmt')).model) is MMTCfg
    with pytest.raises(ConfigError, match=r'support_set is not a setting of ce \(but of ssb\)'):
        from_dict(RunCfg, run('ce', support_set='cross'))
    with pytest.raises(ConfigError, match='embed_dim, projection are not settings of mmt'):
        from_dict(RunCfg, run('mmt', embed_dim=512, projection=True))
    with pytest.raises(ConfigError, match="unknown model 'cee'"):
        from_dict(RunCfg, run('cee'))
    # a run saved when one config held every model's settings (at their defaults) still resumes
    import yaml

    from train.models.config import _SHARED_BEFORE

    saved = run('mmt', **{k: v for k, v in _SHARED_BEFORE.items() if k != 'transformer'})
    (tmp_path / 'checkpoints').mkdir()
    (tmp_path / 'checkpoints' / 'last.pt').write_bytes(b'')
    (tmp_path / 'config.yaml').write_text(yaml.safe_dump({**saved, 'seed': 0}))
    from shared.config import to_dict

    now = yaml.safe_load(yaml.safe_dump({**to_dict(from_dict(RunCfg, run('mmt'))), 'seed': 0}, sort_keys=False))
    _check_resumable(tmp_path, now)  # no error: the other models' settings at their defaults are dropped
    with pytest.raises(ConfigError, match='other settings'):  # the same run with another margin is refused
        _check_resumable(tmp_path, {**now, 'train': {**now['train'], 'margin': 0.5}})
    # a CE run saved before gating_pairs was fitted with the sum: it is read so, and resumed only so
    from train.config import saved_run_cfg

    (tmp_path / 'config.yaml').write_text(yaml.safe_dump({**run('ce', projection=True, gating='collaborative'),
                                                          'seed': 0}))
    assert saved_run_cfg(tmp_path).model.gating_pairs == 'sum'
    ce = run('ce', projection=True, gating='collaborative')
    now = yaml.safe_load(yaml.safe_dump({**to_dict(from_dict(RunCfg, ce)), 'seed': 0}, sort_keys=False))
    with pytest.raises(ConfigError, match=r"model\.gating_pairs: 'sum' there, 'mean' now"):
        _check_resumable(tmp_path, now)
    _check_resumable(tmp_path, {**now, 'model': {**now['model'], 'gating_pairs': 'sum'}})


def test_netvlad_sync_batch_norm_normalises_in_float32() -> None:
    """Under DistributedDataParallel on CUDA, NetVLAD's batch norm is a SyncBatchNorm, and it is
    given float32 whatever the autocast dtype: torch's SyncBatchNorm sends an empty input's
    statistics (a rank without a token) in the input's dtype and a full input's in float32, so
    under bf16 the ranks' gathers would not match. Here one gloo process, under CPU bf16 autocast,
    with a SyncBatchNorm that records its input and normalises as BatchNorm1d does (torch's
    refuses CPU tensors)."""
    import torch.distributed as dist

    seen: list[torch.dtype] = []

    class Recording(torch.nn.SyncBatchNorm):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.dtype)
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, True, self.momentum,
                                self.eps)

    torch.manual_seed(0)
    vlad = NetVLAD(6, 2, 1).train()
    vlad.bn = Recording(3)
    x, mask = torch.randn(2, 4, 6), torch.tensor([[True, True, False, False], [True, False, False, False]])
    dist.init_process_group('gloo', store=dist.HashStore(), rank=0, world_size=1)
    try:
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = vlad(x, mask)
    finally:
        dist.destroy_process_group()
    assert seen == [torch.float32]
    assert out.shape == (2, 12) and torch.isfinite(out).all()


def test_context_gating_gem_and_reduce_dim_by_hand() -> None:
    """MEE eq. 2: Z o sigmoid(W Z + b), a gate per feature (not a softmax over the features); GEM's
    output (MEE eq. 3) and ReduceDim's (CE's projection) are L2-normalised."""
    torch.manual_seed(0)
    gem, reduce = GEM(6, 5), ReduceDim(6, 5)
    x = torch.randn(4, 6)
    with torch.no_grad():
        z = gem.fc(x)
        gated = z * torch.sigmoid(z @ gem.cg.fc.weight.T + gem.cg.fc.bias)
        torch.testing.assert_close(gem.cg(z), gated)
        torch.testing.assert_close(gem(x), gated / gated.norm(dim=-1, keepdim=True))
        r = reduce.fc(x)
        torch.testing.assert_close(reduce(x), r / r.norm(dim=-1, keepdim=True))


@pytest.mark.parametrize('name', list(VARIANTS))
def test_embeddings_are_unit_vectors_and_ignore_a_missing_experts_features(name: str) -> None:
    """Scores are cosines (CE sec. 3.2: every GEM output is L2-normalised): each expert's video and
    text embedding has norm 1. A missing expert is zero-padded (CE sec. 3.1): whatever a store holds
    for it changes no embedding (concat fusion would put it into the video's joint vector)."""
    torch.manual_seed(0)
    model = create_model(model_cfg(experts=EXPERTS, embed_dim=24, text_dim=12, text_clusters=3,
                                   **VARIANTS[name])).eval()
    videos, texts = _videos(6, 7), _texts(4, 7)
    videos['object'].available[:] = torch.tensor([False, True, True, False, True, True])
    noisy = dict(videos)
    noisy['object'] = ExpertInput(videos['object'].x + 50 * (~videos['object'].available)[:, None],
                                  videos['object'].available)
    with torch.no_grad():
        v, t = model.encode_video(videos), model.encode_text(texts)
        torch.testing.assert_close(model.encode_video(noisy).emb, v.emb)
    torch.testing.assert_close(v.emb.norm(dim=-1), torch.ones(v.emb.shape[:2]))
    torch.testing.assert_close(t.emb.norm(dim=-1), torch.ones(t.emb.shape[:2]))


@pytest.mark.parametrize('pairs', ['mean', 'sum'])
def test_collaborative_gating_by_hand(pairs: str) -> None:
    """CE eqs. 1-2 as built here: T_i from one shared g([x_i, x_j]) over the video's available experts
    j (i itself included: CE's released config, include_self 1), their mean over the pairs of two
    available experts as CE's released code takes it (or eq. 1's sum), and x_i gated per feature by
    sigmoid(BN(T_i) + BN(W_i x_i + b_i)), then L2-normalised; written out for each video and expert."""
    torch.manual_seed(0)
    keys = ['a', 'b', 'c']
    cg = CollaborativeGating(keys, 8, pairs)
    cg.train()
    cg(torch.randn(10, 3, 8), torch.rand(10, 3) > 0.3).sum().backward()  # batch-norm statistics
    cg.eval()
    x = torch.randn(3, 3, 8)
    available = torch.tensor([[True, False, True], [True, True, True], [False, True, True]])
    with torch.no_grad():
        got = cg(x, available)
        for b in range(3):
            for i, k in enumerate(keys):
                # j == i included as CE's released config does (its eq. 1 writes j != i)
                rel = [cg.g(torch.cat([x[b, i], x[b, j]])[None])[0] for j in range(3) if available[b, j]]
                if pairs == 'sum':
                    t = sum(rel)
                else:  # CE's code: sum of g * a_i a_j over sum of a_i a_j (+1e-11): zeros for a missing expert
                    t = sum(rel) / len(rel) if available[b, i] else torch.zeros(8)
                gate = torch.sigmoid(cg.bn_t[k](t[None])[0] + cg.bn_x[k](cg.fc[k](x[b, i])[None])[0])
                torch.testing.assert_close(got[b, i], F.normalize(x[b, i] * gate, dim=0), msg=f'video {b} expert {k}')


def test_temporal_aggregation_counts_valid_rows_only() -> None:
    """An expert's aggregation (MEE's h_i): the mean or the max of the video's own rows; padding rows
    (mask False) count in neither, and a video without a row gets zeros."""
    x = torch.tensor([[[1.0, -2.0], [3.0, 4.0], [90.0, 90.0]], [[5.0, 6.0], [90.0, 90.0], [90.0, 90.0]],
                      [[7.0, 8.0], [9.0, 9.0], [9.0, 9.0]]])
    mask = torch.tensor([[True, True, False], [True, False, False], [False, False, False]])
    inp = ExpertInput(x, torch.tensor([True, True, False]), mask)
    mean = aggregate(ExpertSpec('object', 2, 'mean'), inp, None)
    peak = aggregate(ExpertSpec('face', 2, 'max'), inp, None)
    assert mean.tolist() == [[2.0, 1.0], [5.0, 6.0], [0.0, 0.0]]
    assert peak.tolist() == [[3.0, 4.0], [5.0, 6.0], [0.0, 0.0]]


def test_netvlad_in_training_ignores_padding() -> None:
    """In training NetVLAD's batch norm takes its statistics from the batch's real tokens: padding
    rows (their number or their values) change no output."""
    torch.manual_seed(0)
    vlad = NetVLAD(8, 4, 1).train()
    x = torch.randn(3, 4, 8)
    mask = torch.tensor([[True] * 4, [True, True, False, False], [True, False, False, False]])
    padded = torch.cat([x.masked_fill(~mask[..., None], 30.0), 30 * torch.randn(3, 3, 8)], 1)
    with torch.no_grad():
        torch.testing.assert_close(vlad(padded, torch.cat([mask, torch.zeros(3, 3, dtype=torch.bool)], 1)),
                                   vlad(x, mask))


@pytest.mark.parametrize('name', ['mee', 'ce'])
def test_a_captions_embedding_ignores_its_padding_words(name: str) -> None:
    """The caption's NetVLAD reads its words only: the word vectors of padding positions (and how
    many there are) change neither its embeddings nor its mixture weights."""
    torch.manual_seed(0)
    model = create_model(model_cfg(experts=EXPERTS, embed_dim=24, text_dim=12, text_clusters=3,
                                   **VARIANTS[name])).eval()
    texts = _texts(5, 8)
    padded = TextInput(torch.cat([texts.x.masked_fill(~texts.mask[..., None], 40.0), torch.randn(5, 3, 12)], 1),
                       torch.cat([texts.mask, torch.zeros(5, 3, dtype=torch.bool)], 1))
    assert (~texts.mask).any()
    with torch.no_grad():
        a, b = model.encode_text(texts), model.encode_text(padded)
    torch.testing.assert_close(b.emb, a.emb)
    torch.testing.assert_close(b.weights, a.weights)


def test_concat_fusion_scores_a_video_that_lacks_some_experts() -> None:
    """concat (CE Table 6) has one joint embedding: a video with any expert is scored by the cosine of
    the two joint vectors (its missing experts zero-padded); only a video with none is left out."""
    torch.manual_seed(0)
    model = create_model(model_cfg(experts=EXPERTS, embed_dim=24, text_dim=12, text_clusters=3,
                                   **VARIANTS['concat'])).eval()
    videos, texts = _videos(4, 9), _texts(3, 9)
    for name in ('object', 'face'):
        videos[name].available[:] = True
    videos['object'].available[1] = False
    for v in videos.values():
        v.available[3] = False
    with torch.no_grad():
        t, v = model.encode_text(texts), model.encode_video(videos)
        s = model.scores(videos, texts)
    assert v.available[:, 0].tolist() == [True, True, True, False]
    torch.testing.assert_close(s[:, :3], t.emb[:, 0] @ v.emb[:3, 0].T)
