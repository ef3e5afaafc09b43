"""The one training step: forward, loss, backward, clipping, the optimizer's step and the schedule,
run eagerly or, with `graphs`, replayed from one CUDA graph (`train.engine.step_graph`). A part of
`train.engine.loop.Loop` (a mixin: the same object), kept in its own file; the epoch loop calls it."""

from __future__ import annotations

import contextlib
from typing import Optional

import torch

from train.base.errors import UserError
from train.data.batches import call_model, model_output
from train.engine.step_calls import backward
from train.engine.step_graph import WARMUP, StepGraph, why_not


class Step:
    def forward(self, features, labels):
        """The model on a batch: (predictions, loss), the loss the model's own or the loss function's."""
        preds, own = model_output(call_model(self.model, self.layout(features)))
        if self.model_loss:
            if own is None:
                raise UserError("loss: model, but the model returned no 'loss'; pass the labels to it (dict samples "
                                "holding 'labels') or choose a loss function")
            return preds, own
        return preds, self.loss_func(preds, labels)

    # --------------------------------------------------------------------- the steps
    def _make_graph(self) -> Optional[StepGraph]:
        from accelerate.utils import DynamoBackend

        compiled = self.accelerator.state.dynamo_plugin.backend != DynamoBackend.NO
        reason = why_not(self.accelerator, nonfinite=self.nonfinite, compiled=compiled, metrics=self.metrics)
        if reason:
            self.step_notes.append(f"graphs: {reason}")
            return None
        self.step_notes.append(
            f"graphs: on: after {WARMUP} eager steps the whole step (forward, backward, optimizer, sums) is "
            f"captured in one CUDA graph and replayed; batches of another shape (an epoch's last partial batch) "
            f"run eagerly")
        inner = getattr(self.optimizer, "optimizer", self.optimizer)  # Accelerate's wrapper holds the torch one
        params = [p for g in inner.param_groups for p in g["params"]]
        return StepGraph(self._graphed_body, inner, params, self._zero_grad)

    # --------------------------------------------------------------------- the steps
    def train_step(self, features, labels, sync: Optional[bool] = None, scale: Optional[torch.Tensor] = None):
        """The one train step: forward, loss, backward, and at the end of an optimizer step clip,
        step, schedule. `sync` says whether this batch ends an optimizer step (the epoch loop knows;
        None: every `gradient_accumulation_steps` batches, as Accelerate counts them). `scale`
        multiplies the batch's loss before the backward pass: a token-level loss's targets over
        the global batch's (`train.engine.targets`), 0 for a shadow round. Returns the detached loss and
        predictions; reads nothing back from the device (except with nonfinite=skip)."""
        model, acc = self.model, self.accelerator
        self.stepped = False
        if sync is None:
            context = acc.accumulate(model)
        else:  # what accumulate() does, with the loop saying where an optimizer step ends
            acc.sync_gradients = sync
            context = contextlib.nullcontext() if sync else acc.no_sync(model)
        # with graphs, an eager step reads the same device hyperparameters as the graph
        with (self._graph.eager() if self._graph is not None else contextlib.nullcontext()), context:
            loss, preds, dropped = self._update(features, labels, scale)
            if acc.sync_gradients:
                self._zero_grad()
            self.stepped = acc.sync_gradients
        self._stepped(dropped)
        return loss.detach(), preds.detach()

    def _update(self, features, labels, scale: Optional[torch.Tensor]):
        """Forward, loss, backward, and where an optimizer step ends: clipping and the optimizer's
        step. Returns (loss, predictions, whether a non-finite step was dropped). Without `scale` and
        with nonfinite=stop it changes nothing on the host, so a CUDA graph can hold it."""
        acc = self.accelerator
        preds, loss = self.forward(features, labels)
        # a batch without targets (or a shadow round) adds nothing, not its mean's 0 / 0
        backward(acc, loss if scale is None else torch.where(scale > 0, loss * scale, loss.new_zeros(())))
        skip_check = self.nonfinite == "skip" and acc.scaler is None  # fp16's scaler skips by itself
        norm = None
        if acc.sync_gradients and (self.max_grad_norm is not None or skip_check):
            norm = acc.clip_grad_norm_(self.model.parameters(), self.max_grad_norm or float("inf"))
        dropped = skip_check and norm is not None and not torch.isfinite(norm)
        if dropped:
            # the gradients are already summed over processes, so every process drops this step
            self.skipped_steps += 1
        else:
            self.optimizer.step()  # the prepared optimizer skips the step while accumulating
            if acc.sync_gradients and self.nonfinite == "skip" and self.optimizer.step_was_skipped:
                self.skipped_steps += 1
        return loss, preds, dropped

    def _stepped(self, dropped: bool = False) -> None:
        """After a batch: where it ended an optimizer step, the step counted and a per-step schedule stepped."""
        if self.stepped:
            self.step += 1
            if self.scheduler is not None and self.scheduler_interval == "step" and not dropped:
                self.scheduler.step()
            if self.average is not None and not dropped and not getattr(self.optimizer, "step_was_skipped", False):
                self.average.after_step(self.step)  # fp16's scaler skips a step with inf gradients: nothing moved

    def _graphed_body(self, features, labels) -> torch.Tensor:
        """What `StepGraph` runs and captures: a whole optimizer step and the epoch's sums (the
        host's counts are the loop's, outside it)."""
        loss, preds, _ = self._update(features, labels, None)
        loss, preds = loss.detach(), preds.detach()
        self._sums.accumulate(loss, preds, labels)
        return loss

    def _graphed_step(self, features, labels) -> None:
        """A batch trained through the graph: the step, and what the loop counts on the host."""
        self.accelerator.sync_gradients = True
        loss = self._graph(features, labels)
        self.stepped = True
        self._sums.count_rows(len(labels))
        if self.status.watch_losses:  # the graph rewrites its loss at every replay: the check keeps a copy
            self.status.add_loss(self.epoch, self.batch, loss.clone())
        self._stepped()

