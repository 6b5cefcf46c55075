"""MMT and the support-set model: masking, time, support sets, parameter counts (built offline)."""
from __future__ import annotations

import dataclasses
import re

import pytest
import torch
import torch.nn.functional as F

from train.losses import ContrastiveLoss, hard_negative_triplet
from train.main import CONFIG_DIR
from train.main import main as train_main
from train.models import ExpertSpec, model_cfg, create_model
from train.models.base import ExpertInput, TextInput
from train.models.config import TextCfg, TransformerCfg
from train.models.mmt import UNKNOWN, temporal_ids
from train.models.ssb import per_second, support_weights

TINY_BERT = TextCfg(encoder='bert', weights='random', tokenizer='words', vocab_size=50, hidden=16, layers=1, heads=2,
                    ffn=32, max_positions=16, dropout=0.0)
TINY_T5 = TextCfg(encoder='t5', weights='random', tokenizer='words', vocab_size=50, hidden=16, layers=1, heads=2,
                  ffn=32, dropout=0.0)
SMALL = TransformerCfg(layers=2, heads=2, hidden=16, ffn=32, dropout=0.0, max_positions=12)
EXPERTS = (ExpertSpec('object', 12, 'tokens', max_tokens=5), ExpertSpec('audio', 6, 'tokens', max_tokens=4))


def _videos(n: int, seed: int) -> dict[str, ExpertInput]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for spec in EXPERTS:
        L = spec.max_tokens
        lengths = torch.randint(1, L + 1, (n,), generator=g)
        start = torch.arange(L, dtype=torch.float32)[None].expand(n, L) * 0.7
        times = torch.stack([start, start + 0.5], -1)
        out[spec.name] = ExpertInput(torch.randn(n, L, spec.dim, generator=g), torch.rand(n, generator=g) > 0.2,
                                     torch.arange(L)[None] < lengths[:, None], times.clone())
    return out


def _texts(n: int, seed: int) -> TextInput:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 50, (n, 7), generator=g)
    mask = torch.arange(7)[None] < torch.randint(2, 8, (n, 1), generator=g)
    return TextInput(ids.masked_fill(~mask, 0), mask)


def _model(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    extra = dict(text=TINY_BERT) if kind == 'mmt' else dict(text=TINY_T5, max_seconds=4, kernels=(2, 3, 4, 6))
    model = create_model(model_cfg(model=kind, experts=EXPERTS, transformer=SMALL, **extra))
    model.train()
    ContrastiveLoss(lambda s: hard_negative_triplet(s, 0.2))(model, model(_videos(6, 1), _texts(6, 1))).backward()  # BN statistics
    return model.eval()


def _with(video: dict[str, ExpertInput], name: str, **changes) -> dict[str, ExpertInput]:
    out = dict(video)
    e = video[name]
    out[name] = ExpertInput(**{**dict(x=e.x, available=e.available, mask=e.mask, times=e.times), **changes})
    return out


def test_mmt_masks_a_missing_expert_and_padding() -> None:
    model = _model('mmt')
    video = _videos(5, 2)
    video = _with(video, 'audio', available=torch.tensor([False, True, True, True, True]))
    with torch.no_grad():
        a = model.encode_video(video)
        noisy = video['audio'].x.clone()
        noisy[0] = torch.randn_like(noisy[0]) * 100  # the missing expert's rows of video 0
        pad = video['object'].x.clone()
        pad[~video['object'].mask] = 1e4  # padding rows of every video
        b = model.encode_video(_with(_with(video, 'audio', x=noisy), 'object', x=pad))
    assert torch.allclose(a.emb, b.emb, atol=1e-6)  # no agg token (its own included) saw them
    assert a.available.all()  # yet its agg output enters the score (eq. 6): test_mmt_scores_mix_every_expert


def test_mmt_scores_mix_every_expert() -> None:
    """MMT eq. 6, s(v, c) = sum_{i=1..N} w_i(c) <phi^i, psi^i_agg>: a video missing an expert is
    scored with every expert's weight, not with the weights renormalised over the experts it has
    (MEE eq. 6, which MMT's sec. 4.3 gives the variants without MMT only)."""
    model = _model('mmt')
    video = _with(_videos(3, 11), 'audio', available=torch.tensor([False, True, True]))
    text = _texts(2, 11)
    with torch.no_grad():
        t, v = model.encode_text(text), model.encode_video(video)
        s = model.scores(video, text)
    per_expert = torch.einsum('tmd,vmd->tvm', t.emb, v.emb)  # <phi^i, psi^i_agg>, (texts, videos, experts)
    eq6 = (t.weights[:, None, :] * per_expert).sum(-1)
    assert torch.allclose(s, eq6, atol=1e-6)
    renormalised = per_expert[:, 0, 0]  # video 0 has only the object expert: MEE's re-weighting gives its term alone
    assert not torch.allclose(s[:, 0], renormalised, atol=1e-3)


def test_mmt_uses_time_order_but_not_order_inside_a_second() -> None:
    model = _model('mmt')
    video = _videos(3, 4)
    for v in video.values():
        v.mask[:] = True
        v.available[:] = True
    with torch.no_grad():
        base = model.encode_video(video).emb
        x = video['object'].x
        shuffled = model.encode_video(_with(video, 'object', x=x[:, [3, 0, 4, 2, 1]])).emb  # times kept in place
    assert not torch.allclose(base, shuffled, atol=1e-4)
    # rows 0-2 in the same second: reordering them (features with their times) changes nothing
    times = video['object'].times.clone()
    times[:, :3, 0] = torch.tensor([1.1, 1.5, 1.9])
    same = _with(video, 'object', times=times)
    perm = [2, 0, 1, 3, 4]
    moved = _with(video, 'object', x=x[:, perm], times=times[:, perm])
    assert torch.equal(temporal_ids(times, 12), temporal_ids(times[:, perm], 12))
    assert temporal_ids(times, 12)[0, :3].tolist() == [3, 3, 3]  # 1.x s -> T_2, id 2 + 1
    assert temporal_ids(torch.tensor([[float('nan'), 0.0]]), 12).item() == UNKNOWN
    assert temporal_ids(torch.tensor([[-1.0, -1.0]]), 12).item() == UNKNOWN  # store.UNKNOWN_TIME
    with torch.no_grad():
        assert torch.allclose(model.encode_video(same).emb, model.encode_video(moved).emb, atol=1e-5)


def test_mmt_rows_past_its_last_temporal_embedding_share_the_last_one() -> None:
    """Seconds past the last of `max_positions` temporal embeddings (a long video's rows) take the
    last one: the video is encoded, as if those rows were at that second."""
    model = _model('mmt')
    video = _videos(3, 4)
    last = SMALL.max_positions - 1  # ids 0, 1: agg and unknown; second t is t + 2
    assert temporal_ids(torch.tensor([[9.5, 10.0], [10.0, 11.0], [500.0, 501.0]]), SMALL.max_positions).tolist() \
        == [last, last, last]
    late, at_last = video['object'].times.clone(), video['object'].times.clone()
    late[:, -1] = torch.tensor([500.0, 501.0])
    at_last[:, -1] = torch.tensor([last - 2 + 0.5, last - 1.0])
    with torch.no_grad():
        torch.testing.assert_close(model.encode_video(_with(video, 'object', times=late)).emb,
                                   model.encode_video(_with(video, 'object', times=at_last)).emb)


@pytest.mark.parametrize('kind', ['mmt', 'ssb'])
def test_scores_depend_only_on_their_pair(kind: str) -> None:
    model = _model(kind)
    video, text = _videos(6, 5), _texts(4, 5)
    first = next(iter(video))
    video[first].available[0] = False  # video 0 lacks an expert that the videos put beside it below have
    perm = torch.tensor([3, 1, 5, 0, 2, 4])
    taken = {k: ExpertInput(v.x[perm], v.available[perm], v.mask[perm], v.times[perm]) for k, v in video.items()}
    with torch.no_grad():
        s = model.scores(video, text)
        assert torch.allclose(model.scores(taken, text), s[:, perm], atol=1e-5)
        t_alone = model.encode_text(TextInput(text.x[:1], text.mask[:1]))
        assert torch.allclose(model.encode_text(text).emb[:1], t_alone.emb, atol=1e-5)
        # beside other videos (other lengths, other experts available), and alone: the same scores
        other = _videos(6, 9)
        other[first].available[1:4] = True
        keep = torch.tensor([True, False, False, False, True, False])
        mixed = {k: ExpertInput(torch.where(keep[:, None, None], v.x, other[k].x),
                                torch.where(keep, v.available, other[k].available),
                                torch.where(keep[:, None], v.mask, other[k].mask),
                                torch.where(keep[:, None, None], v.times, other[k].times)) for k, v in video.items()}
        assert any(bool((mixed[k].available[1:4] & ~video[k].available[0]).any()) for k in video)
        assert torch.allclose(model.scores(mixed, text)[:, [0, 4]], s[:, [0, 4]], atol=1e-5)
        alone = {k: ExpertInput(v.x[:1], v.available[:1], v.mask[:1], v.times[:1]) for k, v in video.items()}
        assert torch.allclose(model.scores(alone, text)[:, 0], s[:, 0], atol=1e-5)



def test_mmt_mixture_weights_of_a_caption_do_not_depend_on_its_batch() -> None:
    model = _model('mmt')
    text = _texts(5, 6)
    with torch.no_grad():
        batch = model.encode_text(text).weights
        alone = model.encode_text(TextInput(text.x[3:4], text.mask[3:4])).weights
    assert batch.shape == (5, 2)
    assert not torch.allclose(batch[0], batch[1], atol=1e-4)  # the weights depend on the caption
    assert torch.allclose(alone, batch[3:4], atol=1e-5)
    assert torch.allclose(batch.sum(1), torch.ones(5), atol=1e-6)


def test_mmt_agg_token_starts_as_the_max_pool_of_valid_rows() -> None:
    model = _model('mmt')
    video = _videos(4, 7)
    video = _with(video, 'audio', available=torch.tensor([True, False, True, True]))
    for v in video.values():
        v.x[~v.mask] = 50.0  # padding: larger than any real row, so a max over it would show
    with torch.no_grad():
        feats, _, times, _, agg_pos = model.video_inputs(video)
        for m, (spec, proj) in enumerate(zip(EXPERTS, model.project.values())):
            inp = video[spec.name]
            for i in range(4):
                expected = proj(inp.x[i][inp.mask[i]].amax(0)) if inp.available[i] else torch.zeros(SMALL.hidden)
                assert torch.allclose(feats[i, agg_pos[m]], expected, atol=1e-6), (spec.name, i)
            assert (times[:, agg_pos[m]] == 0).all()  # AGG

def test_support_set_weights() -> None:
    sims = torch.randn(6, 6)
    cross = support_weights(sims, 'cross', 0.1)
    assert torch.all(cross.diagonal() == 0)
    assert torch.allclose(cross.sum(1), torch.ones(6))
    assert torch.all(cross + torch.eye(6) > 0)
    assert torch.equal(support_weights(sims, 'identity', 0.1), torch.eye(6))
    full = support_weights(sims, 'full', 0.1)
    assert torch.allclose(full, torch.softmax(sims / 0.1, 1))
    assert torch.allclose(support_weights(sims, 'hybrid', 0.1), (full + torch.eye(6)) / 2)


def test_per_second_steps_average_and_concatenate() -> None:
    x = torch.tensor([[[1.0], [3.0], [5.0]]])
    times = torch.tensor([[[0.2, 0.3], [0.7, 0.8], [2.5, 2.6]]])
    video = {'a': ExpertInput(x, torch.tensor([True]), torch.tensor([[True, True, True]]), times),
             'b': ExpertInput(torch.tensor([[[7.0]]]), torch.tensor([False]), torch.tensor([[True]]),
                              torch.tensor([[[0.0, 1.0]]]))}
    e, mask = per_second(video, ['a', 'b'], 4)
    assert e[0, :, 0].tolist() == [2.0, 0.0, 5.0, 0.0] and e[0, :, 1].tolist() == [0.0] * 4  # b is missing
    assert mask[0].tolist() == [True, True, True, False]
    e, mask = per_second(video, ['a', 'b'], 2)  # truncated to 2 s: the row at 2.5 s is dropped
    assert e[0, :, 0].tolist() == [2.0, 0.0] and mask[0].tolist() == [True, False]


def test_cross_captioning_enters_the_loss() -> None:
    model = _model('ssb')
    model.train()
    video, text = _videos(6, 7), _texts(6, 7)
    torch.manual_seed(1)
    contrastive = lambda s: hard_negative_triplet(s, 0.2)  # noqa: E731
    with torch.no_grad():
        full = ContrastiveLoss(contrastive)(model, model(video, text))
        only = contrastive(model.scores(video, text))
    assert full > only + 1.0  # lambda 10 x a captioning NLL of about log(50)
    model.zero_grad()
    ContrastiveLoss(contrastive)(model, model(video, text)).backward()
    assert model.t5.decoder.block[0].layer[0].SelfAttention.q.weight.grad.abs().sum() > 0


def test_the_decoder_reads_what_tells_videos_apart() -> None:
    """The decoder's video features are batch-normalised: a part that every video's features share
    (fixed features' large common component: the demo's random-weight object features have a mean
    pairwise cosine of 0.97) does not reach the captioning loss, what differs between videos does."""
    model = _model('ssb')
    model.cfg = dataclasses.replace(model.cfg, support_set='identity')  # the mixture weights: fixed
    full = lambda v: ExpertInput(v.x, torch.ones_like(v.available), torch.ones_like(v.mask), v.times)  # noqa: E731
    video, text = {k: full(v) for k, v in _videos(6, 3).items()}, _texts(6, 3)

    def captioning(v: dict[str, ExpertInput]) -> float:
        model.train()
        with torch.no_grad():
            out = model(v, text)
            return float(model.extra_loss(out, out, torch.zeros(6, 6)))

    g = torch.Generator().manual_seed(4)
    shared = {k: _with(video, k, x=v.x + 5 * torch.randn(v.x.shape[-1], generator=g))[k] for k, v in video.items()}
    swapped = {k: _with(video, k, x=v.x.flip(0))[k] for k, v in video.items()}
    base = captioning(video)
    assert captioning(shared) == pytest.approx(base, abs=1e-5)
    assert abs(captioning(swapped) - base) > 1e-3  # each caption from another video's features


def test_a_run_saved_before_the_decoders_batch_norm_loads_and_captions_as_it_did() -> None:
    """Its decoder read the raw features: the batch norm loads in its starting state, which passes
    them through, and every other weight loads as saved."""
    model = _model('ssb')
    old = {k: v for k, v in model.state_dict().items() if not k.startswith('caption_bn.')}
    loaded = _model('ssb')
    torch.nn.init.normal_(loaded.caption_bn.bn.weight)  # what the load must replace
    loaded.load_state_dict(old)
    bn = loaded.caption_bn.bn
    assert bn.weight.eq(1).all() and bn.bias.eq(0).all() and bn.running_mean.eq(0).all() and bn.running_var.eq(1).all()
    video = _videos(4, 5)
    e, mask = loaded.video_features(video)
    assert torch.allclose(loaded._decoder_features(e, mask), e * mask[..., None], atol=1e-4)
    with pytest.raises(RuntimeError, match='caption_in'):  # any other missing weight still fails the load
        loaded.load_state_dict({k: v for k, v in old.items() if not k.startswith('caption_in.')})


def _counts(config: str, capsys: pytest.CaptureFixture) -> dict[str, float]:
    assert train_main(['--config', str(CONFIG_DIR / config), '--count-params']) == 0
    out = capsys.readouterr().out
    counts = {'total': int(re.match(r'parameters: (\d+)', out).group(1))}
    counts.update({m.group(1).strip(): int(m.group(2)) for m in re.finditer(r'^  (.+?)\s+(\d+)  \(', out, re.M)})
    return counts


def test_mmt_parameter_counts_match_the_paper(capsys: pytest.CaptureFixture) -> None:
    """MMT appendix A.1: 133.3M = caption 112.9M + video 20.4M (projections 3.3M + MMT 17.1M) with
    7 experts, 127.3M with 2; each within 0.5%, and equal to the paper's figures rounded to 0.1M."""
    for config, paper in [('mmt_msrvtt_1k_a.yaml', {'total': 133.3, 'caption encoder': 112.9, 'video encoder': 20.4,
                                                    'video encoder: projections': 3.3,
                                                    'video encoder: transformer': 17.1}),
                          ('mmt_activitynet.yaml', {'total': 127.3, 'caption encoder': 109.6, 'video encoder': 17.7,
                                                    'video encoder: projections': 0.6,
                                                    'video encoder: transformer': 17.1})]:
        c = _counts(config, capsys)
        for key, millions in paper.items():
            assert round(c[key] / 1e6, 1) == millions, (config, key, c[key])
            if millions > 10:
                assert abs(c[key] / 1e6 - millions) / millions < 0.005, (config, key, c[key])


def test_the_captioning_loss_is_lambda_times_the_decoders_and_ignores_padding() -> None:
    """lambda L_cross-captioning (sec. 3.1.2): the weight scales the decoder's loss, whose labels are
    the caption's tokens only (padding is -100, never a target)."""
    model = _model('ssb')
    model.train()
    video, text = _videos(6, 7), _texts(6, 7)
    with torch.no_grad():
        out = model(video, text)
        losses = {}
        for weight in (1.0, 2.5):
            model.cfg = dataclasses.replace(model.cfg, caption_weight=weight)
            losses[weight] = float(model.extra_loss(out, out, torch.zeros(6, 6)))
    assert losses[2.5] == pytest.approx(2.5 * losses[1.0], rel=1e-5)
    labels = out.extra['labels']
    assert (~text.mask).any() and labels[~text.mask].eq(-100).all() and labels[text.mask].eq(text.x[text.mask]).all()


def test_the_decoders_batch_norm_counts_valid_seconds_only_and_loads_as_saved() -> None:
    """Padding seconds would skew its statistics: in training each feature is normalised by the
    mean and variance of the valid seconds alone. A run saved with the norm loads its statistics."""
    model = _model('ssb')
    video = _videos(4, 5)
    e, mask = model.video_features(video)
    assert (~mask).any()
    model.train()
    bn = torch.nn.BatchNorm1d(e.shape[-1])
    bn.load_state_dict(model.caption_bn.bn.state_dict())
    bn.train()
    got = model._decoder_features(e, mask)
    torch.testing.assert_close(got[mask], bn(e[mask]))
    assert got[~mask].eq(0).all()
    saved = model.state_dict()
    assert saved['caption_bn.bn.running_mean'].abs().sum() > 0  # trained statistics, not the starting ones
    loaded = _model('ssb')
    loaded.load_state_dict(saved)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in saved.items())


def test_mmt_input_sums_features_expert_and_temporal_embeddings() -> None:
    """MMT eq. 1, Omega(v) = F(v) + E(v) + T(v): each row of the sequence is its projected feature
    (L2-normalised), plus its expert's embedding, plus the embedding of its second (T_agg for the agg
    tokens), before the layer norm."""
    model = _model('mmt')
    video = _videos(3, 12)
    seen: list[torch.Tensor] = []
    hook = model.embed_norm.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    try:
        with torch.no_grad():
            model.encode_video(video)
            feats, experts, times, _, agg_pos = model.video_inputs(video)
    finally:
        hook.remove()
    torch.testing.assert_close(seen[0], feats + model.expert_embed.matrix()[experts] + model.temporal_embed.weight[times])
    for m, (spec, proj) in enumerate(zip(EXPERTS, model.project.values())):
        rows = slice(agg_pos[m] + 1, agg_pos[m] + 1 + spec.max_tokens)
        with torch.no_grad():
            torch.testing.assert_close(feats[:, rows], F.normalize(proj.fc(video[spec.name].x), dim=-1))
        assert (experts[:, agg_pos[m]:rows.stop] == m).all()
        assert torch.equal(times[:, rows], temporal_ids(video[spec.name].times, SMALL.max_positions))


def test_mmt_embeddings_are_the_normalised_agg_outputs_and_cls_state() -> None:
    """MMT eq. 5: psi_agg^i is the encoder's output at expert i's agg token, L2-normalised (scores are
    cosines); the caption's embeddings are the gated embedding modules of BERT's [CLS] state."""
    model = _model('mmt')
    video, text = _videos(3, 13), _texts(4, 13)
    outs: list[torch.Tensor] = []
    hook = model.encoder.register_forward_hook(lambda mod, inp, out: outs.append(out))
    try:
        with torch.no_grad():
            v, t = model.encode_video(video), model.encode_text(text)
            agg_pos = model.video_inputs(video)[-1]
            cls = model.text_model(input_ids=text.x, attention_mask=text.mask.long()).last_hidden_state[:, 0]
            gems = torch.stack([gem(cls) for gem in model.text_gem.values()], 1)
    finally:
        hook.remove()
    torch.testing.assert_close(v.emb, F.normalize(outs[0][:, agg_pos], dim=-1))
    torch.testing.assert_close(v.emb.norm(dim=-1), torch.ones(3, len(EXPERTS)))
    torch.testing.assert_close(t.emb, gems)


@pytest.mark.parametrize('kind', ['mmt', 'ssb'])
def test_a_captions_embedding_ignores_padding_after_it(kind: str) -> None:
    """A caption's embedding is read from its own tokens (BERT's [CLS] state; the support-set text
    head over its valid positions): more padding after it changes nothing."""
    model = _model(kind)
    text = _texts(4, 14)
    longer = TextInput(torch.cat([text.x, torch.zeros(4, 3, dtype=text.x.dtype)], 1),
                       torch.cat([text.mask, torch.zeros(4, 3, dtype=torch.bool)], 1))
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(longer).emb, model.encode_text(text).emb, atol=1e-5, rtol=1e-5)


def test_support_set_pooling_head_by_hand() -> None:
    """Eq. 4 with both residuals, psi(e) = BN(FFN(e_attn) + e_attn), e_attn = BN(MHA(f(e)) + f(e)),
    layer after layer; the embedding is the first output token, L2-normalised."""
    model = _model('ssb')
    head = model.video_head
    e, mask = model.video_features(_videos(3, 15))
    with torch.no_grad():
        x = e
        for layer in head.layers:
            f = layer.pre(x, mask)
            a = layer.attn(f, f, f, key_padding_mask=~mask, need_weights=False)[0]
            e_attn = layer.bn1(a + f, mask)
            x = layer.bn2(layer.ffn(e_attn) + e_attn, mask)
        torch.testing.assert_close(head(e, mask), F.normalize(x[:, 0], dim=-1))


def test_cross_captioning_decodes_each_caption_from_its_own_row_of_support_weights() -> None:
    """Eq. 3: caption i is decoded from sum_j softmax_j(<c_t^i, c_v^j> / T) e_v^j, its own row of
    attention: scores that put all of caption i's attention on video i + 1 give the loss of decoding
    each caption from the next video's features (the column, video i - 1's, gives another)."""
    from train.models.base import Embeddings

    model = _model('ssb')
    video, text = _videos(6, 16), _texts(6, 16)
    nxt, prev = torch.roll(torch.arange(6), -1), torch.roll(torch.arange(6), 1)
    sims = torch.zeros(6, 6)
    sims[torch.arange(6), nxt] = 1000.0  # a one-hot softmax at any temperature

    def loss(out: Embeddings, support: str) -> float:
        model.cfg = dataclasses.replace(model.cfg, support_set=support)
        return float(model.extra_loss(out, out, sims))

    def moved(out: Embeddings, order: torch.Tensor) -> Embeddings:
        return Embeddings(out.text, out.video, {**out.extra, 'features': out.extra['features'][order],
                                                'mask': out.extra['mask'][order]})

    with torch.no_grad():
        out = model(video, text)
        attended = loss(out, 'full')
        assert attended == pytest.approx(loss(moved(out, nxt), 'identity'), rel=1e-5)
        assert attended != pytest.approx(loss(moved(out, prev), 'identity'), rel=1e-3)
