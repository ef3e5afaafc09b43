"""The loop's evaluation: the eval step, `evaluate` and `predict`, exact across processes.

A part of `train.loop.Loop` (a mixin: the same object, the same model and accelerator), kept in
its own file. Predictions and labels are gathered with `gather_for_metrics`, which drops the
padding duplicates that make the last batches even across processes; the model's own loss,
which is a mean over each process's batch, is weighted by that process's real samples.
"""

from __future__ import annotations

import torch

from .batches import call_model, model_output, prediction_inputs, take_rows
from .metrics import EpochSums


class Evaluation:
    @torch.no_grad()
    def eval_step(self, features, labels):
        """The one eval step: forward, then predictions and labels gathered from all processes
        (padding duplicates of the last batch dropped), then the loss over the gathered batch. The
        model's own loss (a mean over this process's batch) is weighted by the batch's real samples
        instead; a batch holding padding duplicates is run again on its real samples alone."""
        acc = self.accelerator
        preds, own = self.forward(features, labels)
        if self.model_loss:
            real = self._real_rows(len(labels))
            if self._padded_round():  # every process runs it (a sharded model's forward is a collective)
                rerun = self.forward(take_rows(features, max(real, 1)), labels[:max(real, 1)])[1]
                own = rerun if real else own.new_zeros(())
            total = acc.gather(torch.stack([own.detach().double() * real, own.new_tensor(real, dtype=torch.double)])
                               .reshape(1, 2)).sum(dim=0)
        preds, labels = acc.gather_for_metrics((preds, labels))
        if self.model_loss:
            return total[0] / total[1].clamp(min=1), preds, labels
        return self.loss_func(preds, labels), preds, labels

    def _padded_round(self) -> bool:
        """Whether the current evaluation batch is the last, holding padding duplicates somewhere
        (the same answer on every process)."""
        state = self.accelerator.gradient_state
        return self.accelerator.num_processes > 1 and state.end_of_dataloader and state.remainder > 0

    def _real_rows(self, rows: int) -> int:
        """How many of this process's `rows` in the current evaluation batch are real samples, not the
        padding duplicates that make the last batches even across processes. Accelerate pads each
        process's last batch at its end and drops `remainder`'s complement from the end of the
        gathered (process-major) batch; so the real rows of process p are those before
        `remainder - p * rows`."""
        if not self._padded_round():
            return rows
        remainder = self.accelerator.gradient_state.remainder
        return max(0, min(rows, remainder - self.accelerator.process_index * rows))

    def evaluate(self, dl, prefix: str = "val_") -> dict:
        """Loss and metrics over the whole of `dl`, exact across processes: `{prefix+name: value}`."""
        dl = self.prepare_loader(dl)
        if hasattr(dl, "set_epoch"):
            # every evaluation draws alike: Accelerate's loader would otherwise count its passes as
            # epochs, and a resumed run (a new loader) would draw other augmentations (train.draws)
            dl.set_epoch(0)
        self.model.eval()
        sums = EpochSums(self.metrics, self.device)
        for batch in dl:
            sums.add(*self.eval_step(*self.split(batch)))
        return {prefix + k: v for k, v in sums.result().items()}

    @torch.no_grad()
    def predict(self, dl, with_targets: bool = False):
        """Model outputs for every sample of `dl`, in its order, gathered from all processes (padding
        duplicates dropped); with `with_targets`, (outputs, targets)."""
        dl = self.prepare_loader(dl)
        self.model.eval()
        outputs, targets = [], []
        for batch in dl:
            preds, _ = model_output(call_model(self.model, self.layout(prediction_inputs(batch))))
            if with_targets:
                preds, labels = self.accelerator.gather_for_metrics((preds, self.split(batch)[1]))
                targets.append(labels.cpu())
            else:
                preds = self.accelerator.gather_for_metrics(preds)
            outputs.append(preds.cpu())
        return (torch.cat(outputs), torch.cat(targets)) if with_targets else torch.cat(outputs)
