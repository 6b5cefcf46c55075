"""The training step at GPU speed (issue 24, item 5) and the retrieval bench (item 6), on the CPU:
the compiled step against the eager one, the device-side loss sum against per-step reads, batches
gathered on the device against the host's, and `python -m train.bench --quick`."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from train.bench import main as bench_main
from train.bench import synthetic_split
from train.data import SplitData, TrainFeed
from train.loop import train_epoch
from train.losses import ContrastiveLoss, max_margin_ranking
from train.models import create_model
from train.models.base import TextInput
from train.models.config import ExpertSpec, ModelCfg, TextCfg, TransformerCfg, model_cfg
from train.step import TrainStep, compile_options

TINY_TEXT = {'weights': 'random', 'tokenizer': 'words', 'vocab_size': 60, 'hidden': 16, 'layers': 1, 'heads': 2,
             'ffn': 32, 'max_positions': 16, 'dropout': 0.0}


def _mmt_cfg() -> ModelCfg:
    """A tiny MMT without dropout (the compiled step draws other dropout masks than eager)."""
    experts = (ExpertSpec('object', 12, 'tokens', max_tokens=5), ExpertSpec('audio', 6, 'tokens', max_tokens=4))
    return model_cfg('mmt', experts, text=TextCfg(encoder='bert', **TINY_TEXT),
                    transformer=TransformerCfg(layers=1, heads=2, hidden=16, ffn=32, dropout=0.0, max_positions=8))


def _mee_cfg() -> ModelCfg:
    experts = (ExpertSpec('object', 12), ExpertSpec('audio', 6, 'vlad', clusters=2, max_tokens=4))
    return model_cfg('mee', experts, embed_dim=8, text_dim=10, text_clusters=2)


_contrastive = ContrastiveLoss(lambda sims: max_margin_ranking(sims.float(), 0.1))


def _train(cfg: ModelCfg, data: SplitData, compile: bool, backend: str = 'aot_eager', steps: int = 3
           ) -> tuple[list[float], dict[str, torch.Tensor], TrainStep]:
    """`steps` SGD steps of a fresh model (SGD: Adam's normalised update turns float noise in a
    near-zero gradient into a whole step)."""
    torch.manual_seed(0)
    model = create_model(cfg).train()
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.5), _contrastive, 1.0, 'cpu', compile,
                     backend=backend)
    batches = TrainFeed(data, torch.device('cpu'), 0).epoch(4, np.random.default_rng(0))
    losses = [step(v, t).item() for _, (v, t) in zip(range(steps), batches)]
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}, step


def _assert_same_training(a: tuple, b: tuple, tol: float) -> None:
    np.testing.assert_allclose(a[0], b[0], rtol=tol, atol=tol)
    for k in a[1]:
        torch.testing.assert_close(a[1][k], b[1][k], rtol=tol, atol=tol, msg=k)


def test_compiled_step_gives_the_eager_losses_and_weights() -> None:
    """torch.compile's capture (aot_eager: the graphs inductor would compile, without the minutes
    of C++ compiling on this CPU) trains as eager does."""
    data = synthetic_split(_mmt_cfg(), 16, 7)
    eager = _train(_mmt_cfg(), data, compile=False)
    compiled = _train(_mmt_cfg(), data, compile=True)
    assert compiled[2].compiled, 'fell back to eager'
    assert eager[0][0] != eager[0][-1]  # it trains
    _assert_same_training(eager, compiled, 1e-5)


@pytest.fixture
def fresh_inductor() -> Iterator[None]:
    """Inductor with empty caches (it compiles, whatever ran before) and scalar C++ kernels in one
    process (half the compile time of vectorised ones on this CPU: ~35 s instead of ~100 s)."""
    import torch._inductor.config as inductor
    from torch._inductor.utils import fresh_cache

    torch.compiler.reset()  # dynamo would reuse the graphs an earlier test compiled for `TrainStep._loss`
    with inductor.patch({'compile_threads': 1, 'cpp.vec_isa_ok': False}), fresh_cache():
        yield
    torch.compiler.reset()


def _one_expert_mee() -> ModelCfg:
    return model_cfg('mee', (ExpertSpec('object', 12),), embed_dim=8, text_dim=10, text_clusters=2)


@pytest.mark.slow
def test_inductor_compiled_step_gives_the_eager_losses_and_weights(fresh_inductor: None) -> None:
    """The default backend, inductor (C++ kernels on the CPU; on CUDA Triton kernels and CUDA graphs)."""
    cfg = _one_expert_mee()
    data = synthetic_split(cfg, 16, 7)
    eager = _train(cfg, data, compile=False)
    compiled = _train(cfg, data, compile=True, backend='inductor')
    assert compiled[2].compiled, 'fell back to eager'
    _assert_same_training(eager, compiled, 1e-5)


def test_cuda_compile_options_skip_cuda_graphs_for_changing_shapes() -> None:
    """On CUDA, inductor replays the step's fixed-shape graphs as CUDA graphs but not those whose
    shapes change every step (NetVLAD's real tokens, found by torch.nonzero in training): with
    ``reduce-overhead`` alone it would record a new CUDA graph at each step. The options are
    inductor's own: torch.compile refuses an unknown one as the step is built."""
    options = compile_options('inductor', torch.device('cuda'))
    assert options == {'triton.cudagraphs': True, 'triton.cudagraph_skip_dynamic_graphs': True}
    assert compile_options('inductor', torch.device('cpu')) is None
    assert compile_options('aot_eager', torch.device('cuda')) is None
    torch.compile(lambda x: x + 1, backend='inductor', options=options)  # built, not run: no GPU needed
    asked = []
    real = torch.compile
    with pytest.MonkeyPatch.context() as patch:  # and a step on CUDA asks for them (built only: nothing runs)
        patch.setattr(torch, 'compile', lambda fn, **kw: asked.append(kw) or real(fn, **kw))
        TrainStep(torch.nn.Linear(2, 2), object(), torch.nn.Identity(), 0.0, 'cuda', compile=True)
    assert asked == [{'backend': 'inductor', 'options': options}]


def test_a_compile_failure_warns_once_and_trains_eager(caplog: pytest.LogCaptureFixture) -> None:
    data = synthetic_split(_mmt_cfg(), 16, 7)
    eager = _train(_mmt_cfg(), data, compile=False)
    with caplog.at_level(logging.WARNING, logger='train.step'):
        fallen = _train(_mmt_cfg(), data, compile=True, backend='no_such_backend')
    assert not fallen[2].compiled
    assert len(caplog.records) == 1 and caplog.records[0].getMessage().endswith('; training continues eager')
    _assert_same_training(eager, fallen, 0.0)


@pytest.mark.slow
def test_a_failure_at_the_first_compiled_call_warns_once_and_trains_eager(
        fresh_inductor: None, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compiling is lazy: here inductor finds no C++ compiler when the first step runs."""
    import torch._inductor.config as inductor

    monkeypatch.setattr(inductor.cpp, 'cxx', ('/nonexistent/c++',))  # as on a host without a compiler
    cfg = _one_expert_mee()
    data = synthetic_split(cfg, 16, 7)
    eager = _train(cfg, data, compile=False)
    with caplog.at_level(logging.WARNING, logger='train.step'):
        fallen = _train(cfg, data, compile=True, backend='inductor')
    assert not fallen[2].compiled
    assert len(caplog.records) == 1 and 'training continues eager' in caplog.records[0].getMessage()
    _assert_same_training(eager, fallen, 0.0)


def test_epoch_loss_is_summed_on_the_device_and_logs_the_per_step_numbers() -> None:
    """`train_epoch` reports what the loop reported when it read every step's loss with float():
    the same running means at the logged steps and the same epoch mean, to the bit."""
    cfg = _mmt_cfg()
    data = synthetic_split(cfg, 28, 7, captions=2)
    torch.manual_seed(0)
    model = create_model(cfg).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    # the loop as it was: a host read of every step's loss
    total, running = 0.0, []
    for step, (video, text) in enumerate(data.train_batches(4, np.random.default_rng([0, 0])), 1):
        loss = _contrastive(model, model(video, text))
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += float(loss.detach())
        running.append(total / step)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    model = create_model(cfg).train()
    step = TrainStep(model, torch.optim.Adam(model.parameters(), lr=1e-2), _contrastive, 0.0, 'cpu', False)
    logged: list[tuple[int, float]] = []
    mean, _ = train_epoch(step, TrainFeed(data, torch.device('cpu'), 0).epoch(4, np.random.default_rng([0, 0])), 3,
                       lambda n, loss: logged.append((n, loss)))
    assert len(running) == 7
    assert logged == [(3, running[2]), (6, running[5])]
    assert mean == running[-1] == total / 7
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize('make_cfg', [_mmt_cfg, _mee_cfg])
def test_batches_gathered_on_the_device_are_the_host_batches(make_cfg) -> None:
    """`TrainFeed` with the split in device memory (here the CPU's) gives the host path's batches,
    token ids (MMT's BERT) and word vectors (MEE) alike."""
    data = synthetic_split(make_cfg(), 13, 6, captions=3)
    host, device = TrainFeed(data, torch.device('cpu'), 0), TrainFeed(data, torch.device('cpu'), 1 << 40)
    assert not host.on_device and device.on_device
    assert not TrainFeed(data, torch.device('cpu'), data.train_nbytes() - 1).on_device
    pairs = list(zip(host.epoch(4, np.random.default_rng(3)), device.epoch(4, np.random.default_rng(3))))
    assert len(pairs) == 3  # 13 // 4: the short batch is dropped
    for (hv, ht), (dv, dt) in pairs:
        assert torch.equal(ht.x, dt.x) and torch.equal(ht.mask, dt.mask)
        for name in hv:
            for f in dataclasses.fields(hv[name]):
                a, b = getattr(hv[name], f.name), getattr(dv[name], f.name)
                assert (a is None and b is None) or (a.dtype == b.dtype and torch.equal(a, b)), (name, f.name)


def test_max_margin_without_a_boolean_selection_is_the_selected_sum() -> None:
    sims = torch.randn(9, 9, dtype=torch.float64)
    off = ~torch.eye(9, dtype=torch.bool)
    pos = sims.diagonal()
    selected = (F.relu(0.2 + sims - pos[:, None])[off].sum() + F.relu(0.2 + sims - pos[None, :])[off].sum()) / 9
    torch.testing.assert_close(max_margin_ranking(sims, 0.2), selected)


def test_mmt_text_mask_built_for_sdpa_gives_the_two_d_mask_result() -> None:
    torch.manual_seed(0)
    model = create_model(_mmt_cfg()).eval()
    assert model.text_model.config._attn_implementation == 'sdpa'  # else both sides take one path
    ids = torch.randint(5, 60, (3, 6))
    for mask in (torch.ones(3, 6, dtype=torch.bool), torch.arange(6)[None, :] < torch.tensor([[6], [2], [4]])):
        with torch.no_grad():
            two_d = model.text_model(input_ids=ids, attention_mask=mask.long()).last_hidden_state[:, 0]
            assert torch.equal(model.encode_text(TextInput(ids, mask)).emb,
                               torch.stack([g(two_d) for g in model.text_gem.values()], 1))


def test_bench_quick_prints_every_row(capsys: pytest.CaptureFixture) -> None:
    assert bench_main(['--quick', '--device', 'cpu', '--compile-backend', 'aot_eager', '--models', 'mmt,mee',
                       '--steps', '2', '--stream-models', '']) == 0  # the streaming rows: tests/train/test_stream.py
    out = capsys.readouterr().out
    table = out[out.rindex('machine: '):].splitlines()
    assert table[0].startswith('machine: CPU') and f'torch {torch.__version__}' in table[0]
    rows = {line.split('|')[1].strip(): line.split('|')[2].strip() for line in table[3:]}
    assert list(rows) == ['MMT train step, eager', 'MMT train step, compiled (aot_eager)', 'MMT retrieval 32 x 32',
                          'MEE retrieval 32 x 32']
    assert rows['MMT train step, eager'].endswith('ms)') and rows['MMT retrieval 32 x 32'].endswith(' s')


def test_bench_streaming_rows_come_after_retrieval(capsys: pytest.CaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The streaming rows (stores written, whole epochs: the longest) are measured last, so a time
    limit on a GPU run stops them and not the issue-24 rows (their own run: tests/train/test_stream.py)."""
    import train.bench

    monkeypatch.setattr(train.bench, '_stream_rows', lambda rows, name, *a: rows.append((f'{name} streamed', '1', '')))
    assert bench_main(['--quick', '--device', 'cpu', '--no-train', '--models', 'mee', '--stream-models', 'mee']) == 0
    out = capsys.readouterr().out
    table = out[out.rindex('machine: '):].splitlines()
    assert [line.split('|')[1].strip() for line in table[3:]] == ['MEE retrieval 32 x 32', 'MEE streamed']


def test_bench_a_failing_row_prints_its_error_and_the_others_run(capsys: pytest.CaptureFixture) -> None:
    assert bench_main(['--quick', '--device', 'cpu', '--compile-backend', 'no_such_backend', '--models', 'mee',
                       '--steps', '1', '--stream-models', '']) == 1
    out = capsys.readouterr().out
    table = out[out.rindex('machine: '):]
    assert '| MMT train step, compiled (no_such_backend) | error | RuntimeError: torch.compile failed' in table
    assert '| MMT train step, eager ' in table and '| MEE retrieval 32 x 32 ' in table
    assert bench_main(['--models', 'xyz']) == 1
    assert '--models: unknown xyz' in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('on_device, compile', [(True, False), (False, False), (True, True)],
                         ids=['device-feed', 'pinned-host-feed', 'compiled'])
def test_cuda_steps_never_make_the_host_wait(on_device: bool, compile: bool) -> None:
    """CUDA's sync debug mode raises on any host wait (an .item(), a pageable copy, a boolean
    selection) in the steps after the first (which initialises cuBLAS and, compiled, captures)."""
    from train.config import TrainCfg
    from train.optim import build_optimizer

    cfg = dataclasses.replace(_mmt_cfg(), text=TextCfg(encoder='bert', **{**TINY_TEXT, 'dropout': 0.1}))
    data = synthetic_split(cfg, 40, 7)
    dev = torch.device('cuda')
    model = create_model(cfg).to(dev).train()
    opt, _ = build_optimizer(TrainCfg(optimizer='adam', lr=1e-3), model)
    step = TrainStep(model, opt, _contrastive, 1.0, dev, compile)
    batches = TrainFeed(data, dev, 1 << 40 if on_device else 0).epoch(4, np.random.default_rng(0))
    for _ in range(4 if compile else 1):  # compiled: the graphs are recorded on the first calls
        total = step(*next(batches)).double()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        for video, text in batches:
            total += step(video, text)
    finally:
        torch.cuda.set_sync_debug_mode('default')
    assert step.compiled == compile and torch.isfinite(total)


def test_a_step_clips_the_gradient_updates_and_then_steps_the_schedule() -> None:
    """SGD at lr 1: the first update is the gradient clipped to train.grad_clip; a per-step schedule
    that sets the lr to 0 after one step takes effect from the second update, not the first."""
    data = synthetic_split(_mee_cfg(), 16, 7)
    torch.manual_seed(0)
    model = create_model(_mee_cfg()).train()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    step = TrainStep(model, opt, _contrastive, 1e-3, 'cpu', False, torch.optim.lr_scheduler.StepLR(opt, 1, 0.0))
    video, text = next(TrainFeed(data, torch.device('cpu'), 0).epoch(4, np.random.default_rng(0)))
    weights = lambda: [p.detach().clone() for p in model.parameters()]  # noqa: E731
    before = weights()
    step(video, text)
    after = weights()
    moved = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(after, before)))
    assert 0 < moved <= 1e-3
    step(video, text)
    assert all(torch.equal(a, b) for a, b in zip(weights(), after))
