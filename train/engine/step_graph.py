"""The training step captured whole in one CUDA graph and replayed (`graphs: true`).

Why: a small model's step on a GPU is bound by what the host launches, not by the GPU (the tutorial
CNN at batch 128 leaves an H200 idle 70% of an eager step). Replaying the whole step (forward, loss,
backward, clipping, the optimizer, the epoch's sums) as one graph is one launch instead of ~60.
`torch.compile(mode="reduce-overhead")` graphs only the model's forward and backward, leaving the
optimizer and the glue launch-bound, so the step is captured here with `torch.cuda.graph`, as torch's
own "whole network capture" recipe does (Megatron-LM's full-iteration graphs do the same).

How, following that recipe: the first `WARMUP` steps run eagerly on a side stream (lazy state: the
optimizer's moments, cuBLAS handles, autograd's streams); then the gradients are dropped (set to None,
so that the captured backward writes fresh gradients rather than adding to old ones), the step is
captured once on static copies of a batch, and every later batch of the same shapes is copied into
those copies and the graph replayed. A replay runs the very kernels an eager step launches, on the
same tensors, so it computes what eager computes (the optimizer built `capturable`, which keeps its
step count on the device).

What a captured graph cannot see, handled here:
- the learning rate: a captured kernel reads a Python float as a constant, so while this class runs
  a step each group's `lr` is a one-element device tensor (for optimizers whose kernels read it from
  there: `capturable` or `fused` ones), and a value changed by a schedule or a callback is written
  into it before the next step. Every step of a run with graphs (warm-up, replays, eager batches of
  another shape) reads that tensor, so all of them run the same kernels and a resume, which warms
  up again at another step, stays bit-identical. Between steps the groups hold plain floats:
  schedules, the history and checkpoints see what they always did. Any other hyperparameter is a
  constant of the graph (torch's kernels read betas and momentum as numbers: a device tensor there
  is read back, which a graph cannot hold): when one changes the step is captured again, and where
  that would happen at nearly every step (OneCycleLR cycling momentum; `cycle_momentum: false`
  keeps the graph) the run goes on eagerly, with one warning.
- batches of other shapes (an epoch's last partial batch, variable-length token batches) and shadow
  rounds run eagerly on the same tensors, the gradients re-pointed between the two.
- a checkpoint loaded replaces the optimizer's state tensors: the loop drops the graph (`reset`).

Where graphs do not apply (a CPU, several processes, gradient accumulation, fp16's loss scaler,
`nonfinite: skip`, `compile`, stateful metrics) the step runs eagerly and `why_not` says why, once,
in the plan.
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch

from train.data.nested import leaves, tensors

WARMUP = 3  # eager steps before capturing: torch's recipe (a DDP model would need 11)


def why_not(accelerator, *, nonfinite: str, compiled: bool, metrics: dict) -> Optional[str]:
    """Why the training step cannot be captured in this run (a phrase for the plan), or None."""
    from train.engine.metrics import is_stateful

    if accelerator.device.type != "cuda":
        return f"CUDA graphs need an NVIDIA GPU; on {accelerator.device.type.upper()} the step runs eagerly"
    if accelerator.num_processes > 1:
        return (f"{accelerator.num_processes} processes: the gradients' all-reduce is not captured here; the step "
                f"runs eagerly")
    if accelerator.gradient_accumulation_steps > 1:
        return "gradient_accumulation_steps > 1: the step runs eagerly"
    if accelerator.scaler is not None:
        return "fp16's loss scaler reads the device every step: the step runs eagerly (bf16 needs no scaler)"
    if nonfinite == "skip":
        return "nonfinite=skip reads the loss every step: the step runs eagerly"
    if compiled:
        return "compile=true: the compiled model runs eagerly (graphs replace compile for launch-bound steps)"
    stateful = [name for name, m in metrics.items() if is_stateful(m)]
    if stateful:
        return f"stateful metric(s) {', '.join(stateful)} update on the host: the step runs eagerly"
    return None


def make_capturable(optimizer: torch.optim.Optimizer) -> None:
    """Let `optimizer` be captured: `capturable=True` where it has the flag (Adam, AdamW, RMSprop...),
    and any step counts it already holds (from a checkpoint) moved onto their parameters' device."""
    for group in optimizer.param_groups:
        if "capturable" in group and not group["capturable"]:
            group["capturable"] = True
            for p in group["params"]:
                state = optimizer.state.get(p, {})
                if torch.is_tensor(state.get("step")) and state["step"].device != p.device:
                    state["step"] = state["step"].to(device=p.device, dtype=torch.float32)


def takes_tensor_lr(group: dict) -> bool:
    """Whether a group's optimizer reads its learning rate from a device tensor without reading it
    back (`capturable` or `fused` kernels; their betas and momentum are still read as numbers, so
    those are constants of a graph)."""
    return bool(group.get("capturable") or group.get("fused"))


def signature(batch) -> tuple:
    """What must be equal for a batch to replay the graph: each leaf's place, shape, dtype and device
    (other values as they are)."""
    return tuple((path, (v.shape, v.dtype, v.device) if torch.is_tensor(v) else v) for path, v in leaves(batch))


class DeviceLearningRates:
    """Each group's learning rate held in a device tensor while a step runs (`with self:`), the
    float put back after it; a float changed between steps (a schedule) is written into its tensor
    first, one fill."""

    def __init__(self, optimizer: torch.optim.Optimizer, device):
        self.optimizer = optimizer
        groups = optimizer.param_groups
        self.values = [g["lr"] for g in groups]
        self.tensors = [torch.tensor(float(g["lr"]), device=device) if takes_tensor_lr(g) else None for g in groups]

    def __enter__(self):
        for i, (g, held) in enumerate(zip(self.optimizer.param_groups, self.tensors)):
            if held is not None:
                if g["lr"] != self.values[i]:
                    held.fill_(float(g["lr"]))
                    self.values[i] = g["lr"]
                g["lr"] = held
        return self

    def __exit__(self, *exc):
        for g, value, held in zip(self.optimizer.param_groups, self.values, self.tensors):
            if held is not None:
                g["lr"] = value

    def constants(self) -> list:
        """Each group's other hyperparameters (and a learning rate not held here): a captured graph
        holds them as they were."""
        return [{k: v for k, v in g.items() if k != "params" and not (k == "lr" and held is not None)}
                for g, held in zip(self.optimizer.param_groups, self.tensors)]


class StepGraph:
    """Runs `body(features, labels) -> loss` (the step: forward to optimizer, and the sums), eagerly
    for the first `WARMUP` calls, then as a captured graph for every batch of the captured shapes.
    `optimizer` is the torch optimizer the body steps, `params` the parameters it trains;
    `zero_grad()` drops their gradients after an eager step."""

    def __init__(self, body: Callable, optimizer: torch.optim.Optimizer, params: list, zero_grad: Callable):
        self.body, self.optimizer, self.params, self.zero_grad = body, optimizer, params, zero_grad
        make_capturable(optimizer)
        self.hyperparameters = DeviceLearningRates(optimizer, params[0].device)
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.warmup_left = WARMUP
        self.captures = 0  # how many times the step was captured (once, unless a constant changed)
        self.gave_up: Optional[str] = None  # why the run went on eagerly
        self._replays_since_capture = 0
        self._static = None  # (features, labels) the graph reads
        self._signature = None
        self._loss = None  # the loss the graph writes
        self._constants: list = []
        self._grads: list = []  # the gradients the graph writes, to put back after an eager step
        self._grads_away = False  # an eager step ran since the last replay

    def takes(self, features, labels) -> bool:
        """Whether this batch runs here (in the graph or its warm-up): the captured shapes."""
        return self.gave_up is None and (self._signature is None or signature((features, labels)) == self._signature)

    def eager(self):
        """A context for a step this class does not run (another shape, a shadow round): the same
        device learning rates, and gradients from nothing, as eager steps expect (the graph's stay
        where it writes them)."""
        if self.graph is not None and not self._grads_away:
            for p in self.params:
                p.grad = None
            self._grads_away = True
        return self.hyperparameters

    def reset(self) -> None:
        """Forget the graph: the tensors it reads were replaced (a checkpoint loaded)."""
        self.graph, self._signature, self._static, self._loss, self._grads_away = None, None, None, None, False
        for p in self.params:
            p.grad = None  # they may be the old graph's: the next (eager) step starts from nothing
        make_capturable(self.optimizer)
        self.hyperparameters = DeviceLearningRates(self.optimizer, self.params[0].device)
        self.warmup_left = max(self.warmup_left, 1)  # the optimizer's state moved: one eager step first

    def __call__(self, features, labels) -> torch.Tensor:
        """One training step on this batch; returns its loss (for a graph: the tensor each replay
        rewrites, so read or copy it before the next step)."""
        with self.hyperparameters:
            if self.warmup_left > 0:
                return self._warmup(features, labels)
            if self.graph is not None and self._constants != self.hyperparameters.constants():
                if self._replays_since_capture < 10:
                    return self._give_up(features, labels)
                self.graph = None
            if self.graph is None:
                self._capture(features, labels)
            else:
                for static, new in zip(tensors(self._static), tensors((features, labels))):
                    static.copy_(new)
                if self._grads_away:
                    for p, g in zip(self.params, self._grads):
                        p.grad = g
                    self._grads_away = False
            self.graph.replay()
            self._replays_since_capture += 1
            return self._loss

    def _warmup(self, features, labels) -> torch.Tensor:
        self.warmup_left -= 1
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), warnings.catch_warnings():
            # torch warns once that a capturable optimizer runs uncaptured: here it is meant to
            warnings.filterwarnings("ignore", message=".*capturable=True.*")
            loss = self.body(features, labels)
            self.zero_grad()
        torch.cuda.current_stream().wait_stream(side)
        return loss

    def _give_up(self, features, labels) -> torch.Tensor:
        changed = sorted({k for now, then in zip(self.hyperparameters.constants(), self._constants)
                          for k in now if now[k] != then.get(k)})
        self.gave_up = (f"graphs: the optimizer's {', '.join(changed)} changed again {self._replays_since_capture} "
                        f"step(s) after the step was captured (a schedule cycling it?); the run goes on eagerly")
        warnings.warn(self.gave_up, stacklevel=2)
        self.graph = None
        for p in self.params:
            p.grad = None
        loss = self.body(features, labels)
        self.zero_grad()
        return loss

    def _capture(self, features, labels) -> None:
        from train.base.errors import UserError
        from train.data.nested import apply

        self._static = apply(lambda t: t.clone(), (features, labels))  # the batch is in them already
        self._signature = signature(self._static)
        for p in self.params:
            p.grad = None  # the captured backward allocates the gradients; each replay rewrites them
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: a loader's pin-memory thread may use CUDA meanwhile, which is no part of the step
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self._loss = self.body(*self._static)
        except Exception as e:
            raise UserError(f"graphs: the training step could not be captured in a CUDA graph ({e}); something in "
                            f"it reads the device (.item(), .cpu(), a metric computed on the host) or depends on "
                            f"the data; set graphs=false") from e
        self._constants = self.hyperparameters.constants()
        self._grads = [p.grad for p in self.params]
        self._grads_away = False
        self._replays_since_capture = 0
        self.graph = graph
        self.captures += 1
