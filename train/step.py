"""One training step (forward, backward, clipping, optimiser update), eager or captured by torch.compile.

MMT's step is launch-bound on a GPU (issue 24: 54 ms eager on an H100, the same at batch 32 and
128): thousands of small kernels. torch.compile fuses them, and its ``reduce-overhead`` mode
replays the forward and the backward as CUDA graphs. Nothing in a step waits for the device: the
loss is returned on the device for the caller to accumulate and read now and then.
"""
from __future__ import annotations

import logging

import torch

from train.distributed import unwrap
from train.models.base import ExpertInput, RetrievalModel, TextInput

__all__ = ['TrainStep', 'compile_options']

_logger = logging.getLogger(__name__)


def compile_options(backend: str, device: torch.device) -> dict[str, bool] | None:
    """torch.compile's inductor options for a training step on `device` (None: the backend's defaults).

    On CUDA, inductor's ``reduce-overhead`` (its graphs replayed as CUDA graphs), except for graphs
    whose input shapes change from step to step: NetVLAD's training batch norm takes the real
    tokens only (``torch.nonzero``, a graph break), and the support-set heads index by a mask, so
    MEE, CE and the support-set model hand on tensors of a new length at every step. Those graphs
    run as compiled kernels without CUDA graphs: by default inductor records a new CUDA graph (its
    warm-up run, capture and memory) for every new length, each step, slower than eager and
    holding more memory the longer the run. Fixed-shape graphs (all of MMT's) still replay.
    """
    if backend != 'inductor' or device.type != 'cuda':
        return None
    return {'triton.cudagraphs': True, 'triton.cudagraph_skip_dynamic_graphs': True}


class TrainStep:
    """``step(video, text) -> loss``: one optimisation step on a batch of matching pairs.

    Args:
        model, optimizer: what is trained (the optimizer may be `optim.Lookahead`); the model may
            be wrapped in DistributedDataParallel, which the forward goes through.
        loss: a `train.losses` module: ``loss(module, model(video, text))``, with the model
            itself (unwrapped) for its `similarity` and `extra_loss`.
        grad_clip: max gradient norm (0: none).
        device: where the batches are; CUDA runs under bf16 autocast.
        compile: capture the forward and backward with torch.compile (CUDA graphs on CUDA). Shapes
            must stay fixed (`SplitData.epoch_plan` drops the short last batch), else it recompiles.
            A compile or capture failure warns once and the run continues eager.
        scheduler: stepped after every update (MMT's per-step decay), or None.
        backend: torch.compile's backend: ``inductor`` (`compile_options`: CUDA graphs on CUDA), or
            e.g. ``cudagraphs`` (graphs without fusion) or ``aot_eager`` (capture only, fast to build).
    """

    def __init__(self, model: RetrievalModel, optimizer: torch.optim.Optimizer | object,
                 loss: torch.nn.Module, grad_clip: float, device: torch.device | str,
                 compile: bool, scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                 backend: str = 'inductor') -> None:
        self.model, self.optimizer, self.loss, self.grad_clip = model, optimizer, loss, grad_clip
        self.module = unwrap(model)
        self.scheduler = scheduler
        self.lr: float | None = None  # the learning rate of the last update (a per-step schedule then steps it)
        self.device = torch.device(device)
        self.compiled = compile
        self._compiled_loss = None
        self._compiled_steps = 0  # steps the compiled path completed: after one, failures are not compile's
        if compile:
            try:  # most failures come at the first call; an unknown backend or option comes here
                self._compiled_loss = torch.compile(self._loss, backend=backend,
                                                    options=compile_options(backend, self.device))
            except Exception as err:  # noqa: BLE001
                self._fall_back(err)

    def _loss(self, video: dict[str, ExpertInput], text: TextInput) -> torch.Tensor:
        with torch.autocast('cuda', dtype=torch.bfloat16, enabled=self.device.type == 'cuda'):
            return self.loss(self.module, self.model(video, text))

    def __call__(self, video: dict[str, ExpertInput], text: TextInput) -> torch.Tensor:
        """The batch's loss (detached, on the device; NaN where its gradients were not finite) after the update."""
        if self._compiled_loss is not None:
            try:
                torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs are dead
                loss = self._compiled_loss(video, text)
                self.optimizer.zero_grad()
                loss.backward()  # the compiled backward: compiled lazily, so it can fail here too
            except Exception as err:  # noqa: BLE001
                # a compile or capture failure at the first step: the run goes on eager; any later
                # failure (out of memory, a device assert, a model bug) is the run's own, not compile's
                if self._compiled_steps or isinstance(err, torch.OutOfMemoryError):
                    raise
                self._fall_back(err)
            else:
                self._compiled_steps += 1
                return self._step(loss).clone()  # cloned: a graph's output is overwritten by its next replay
        return self._update(self._loss(video, text))

    def _update(self, loss: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad()
        loss.backward()
        return self._step(loss)

    def _step(self, loss: torch.Tensor) -> torch.Tensor:
        """Clip, update, schedule (never repeated by a fall-back: it runs after the backward succeeded).

        The loss comes back NaN where the gradients were non-finite though it was not (an inf that
        a mask hid from the loss but not from the backward, a gradient's overflow): their update
        made weights NaN, and the loop stops the run at its next read of the losses, before any
        checkpoint, as for a non-finite loss. Under DistributedDataParallel every rank has the
        reduced gradients, so all ranks flag the same step."""
        if self.grad_clip:  # no host wait: foreach, on device
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
        self.lr = self.optimizer.param_groups[0]['lr']
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return torch.where(torch.isfinite(norm), loss.detach(), torch.nan)

    def _fall_back(self, err: Exception) -> None:
        # compilation is lazy (first forward, first backward), so a failure arrives here before the
        # optimiser stepped; gradients a partial backward left are cleared by the eager step
        first = (str(err).strip().splitlines() or [''])[0][:300]
        _logger.warning('torch.compile of the training step failed (%s: %s); training continues eager',
                        type(err).__name__, first)
        self._compiled_loss, self.compiled = None, False
        torch.compiler.reset()
