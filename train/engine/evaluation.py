"""The loop's evaluation: the eval step, `evaluate` and `predict`, exact across processes, and
the check that a real batch of the training data goes through the model before anything is written.

A part of `train.engine.loop.Loop` (a mixin: the same object, the same model and accelerator), kept in
its own file. Each process adds its own real rows to the epoch's sums (the padding duplicates that
make the last batches of a map-style set even across processes left out; a stream's shadow rounds
add nothing) and the sums are added over processes once, at the end: the loss weighted by its
samples or target tokens (`train.engine.targets`), each metric function by its samples. Nothing is
gathered across processes but what needs every row: the inputs of stateful metrics, and
`predict`'s outputs, each padded to a common shape (`train.engine.devices.gather_rows`), so that outputs
of any shape (a language model's per-token logits of different lengths) go through.
"""

from __future__ import annotations

import torch


from train.data.batches import batch_rows, call_model, model_output, prediction_inputs, take_rows
from train.engine.devices import gather_rows
from train.engine.metrics import EpochSums, is_stateful, sum_dtype
from train.data.streams import is_stream
from train.engine.targets import IGNORE_INDEX


class Evaluation:
    @torch.no_grad()
    def _own_share(self, features, labels, rows: int, padded_round: bool = False):
        """This process's share of one evaluation batch: (the loss, a mean over the real rows'
        samples or targets; the predictions and labels of the real rows; their targets for a
        token-level loss, else None). `rows` of the batch are real; in a `padded_round` (the last
        batches of an uneven split, on every process) the model's own loss is computed again on
        the real rows alone, by every process (a sharded model's forward is a collective)."""
        preds, loss = self.forward(features, labels)
        if padded_round and self.model_loss:
            loss = self.forward(take_rows(features, max(rows, 1)), labels[:max(rows, 1)])[1]
        if rows < len(labels):
            preds, labels = preds[:rows], labels[:rows]
            if not self.model_loss and rows:
                loss = self.loss_func(preds, labels)
        count = self.count_targets(labels) if self.count_targets is not None else None
        return loss, preds, labels, count

    def eval_step(self, features, labels):
        """The loss of one batch over all processes, and its predictions and labels gathered from all
        of them (for a single batch: the function front's `valid_step`)."""
        acc = self.accelerator
        rows = self._real_rows(len(labels))
        loss, preds, labels, count = self._own_share(features, labels, rows, self._padded_round())
        weight = count if count is not None else torch.tensor(rows, device=loss.device)
        dtype = sum_dtype(loss.device)
        total = torch.stack([torch.where(weight > 0, loss.detach(), 0).to(dtype) * weight, weight.to(dtype)])
        if acc.num_processes > 1:
            total = acc.reduce(total, "sum")
        preds, labels = gather_rows(acc, (preds, labels), (0, IGNORE_INDEX))
        return total[0] / total[1].clamp(min=1), preds, labels

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

    def _eval_batches(self, dl, split):
        """(split batch, real rows, padded round) for every round of an evaluation pass over the
        prepared loader `dl`; a shadow round of a stream (this process's share has ended) runs its
        last batch again with no real rows."""
        if not is_stream(dl.dataset):
            for batch in dl:
                parts = split(batch)
                yield parts, self._real_rows(batch_rows(parts[0])), self._padded_round()
            return
        last = None
        for r in self.rounds(dl, map(split, dl)):
            if r.batch is not None:
                last = r.batch
            yield last, batch_rows(last[0]) if r.batch is not None else 0, False

    def evaluate(self, dl, prefix: str = "val_") -> dict:
        """Loss and metrics over the whole of `dl`, exact across processes: `{prefix+name: value}`."""
        dl = self.prepare_loader(dl)
        self._same_draws(dl)
        self.model.eval()
        sums = EpochSums(self.metrics, self.device)
        gathers = any(is_stateful(m) for m in self.metrics.values())
        for (features, labels), rows, padded in self._eval_batches(dl, self.split):
            loss, preds, labels, count = self._own_share(features, labels, rows, padded)
            if rows:
                sums.add(loss, preds, labels, count, stateful=False)
            if gathers:  # every process's rows, for metrics computed over the whole set
                sums.update_stateful(*gather_rows(self.accelerator, (preds, labels), (0, IGNORE_INDEX)))
        return {prefix + k: v for k, v in sums.result(self.accelerator).items()}

    @torch.no_grad()
    def predict(self, dl, with_targets: bool = False):
        """Model outputs for every sample of `dl`, in its order, gathered from all processes (padding
        duplicates dropped), on the CPU; with `with_targets`, (outputs, targets). One tensor when
        every batch's outputs have one shape past the batch dimension; for outputs per token with an
        attention mask (a language model's logits), a list of one tensor per sample holding its real
        positions only (left or right padding alike), and a list of per-sample tensors too where the
        batches' shapes differ."""
        dl = self.prepare_loader(dl)
        self._same_draws(dl)
        self.model.eval()
        outputs, targets, masks = [], [], []

        def inputs_and_targets(batch):
            return prediction_inputs(batch), (self.split(batch)[1] if with_targets else None)

        for (inputs, labels), rows, _ in self._eval_batches(dl, inputs_and_targets):
            preds, _ = model_output(call_model(self.model, self.layout(inputs)))
            mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
            per_token = preds.dim() > 2 and torch.is_tensor(mask) and mask.shape == preds.shape[:2]
            mask = mask if per_token else torch.zeros((len(preds), 0), dtype=torch.long, device=preds.device)
            parts = [preds[:rows], mask[:rows]] + ([labels[:rows]] if with_targets else [])
            gathered = gather_rows(self.accelerator, parts, (0, 0, IGNORE_INDEX))
            outputs.append(gathered[0].cpu())
            masks.append(gathered[1].cpu())
            if with_targets:
                targets.append(gathered[2].cpu())
        outputs_joined = _joined(outputs, masks)
        if with_targets:
            return outputs_joined, _joined(targets, masks)
        return outputs_joined

    @staticmethod
    def _same_draws(dl) -> None:
        """Every evaluation and prediction draws alike: Accelerate's loader would otherwise count its
        passes as epochs, and a resumed run (a new loader) would draw other augmentations."""
        if hasattr(dl, "set_epoch"):
            dl.set_epoch(0)
        if hasattr(getattr(dl, "dataset", None), "set_epoch"):
            dl.dataset.set_epoch(0)


def _joined(pieces: list, masks: list):
    """Batches of outputs as one tensor; outputs per token (a mask with a column per position) as a
    list of per-sample tensors of their real positions; outputs of differing shapes as a list."""
    if not pieces:
        return torch.empty(0)
    per_token = any(mask.shape[1] > 0 for mask in masks)
    if not per_token and all(p.shape[1:] == pieces[0].shape[1:] for p in pieces):
        return torch.cat(pieces)
    samples = []
    for piece, mask in zip(pieces, masks):
        for row, real in zip(piece, mask):
            samples.append(row[: len(real)][real.bool()] if per_token and real.numel() else row)
    return samples
