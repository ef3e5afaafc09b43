"""The loop's evaluation: the eval step, `evaluate` and `predict`, exact across processes, and
the check that a real batch of the training data goes through the model before anything is written.

A part of `train.loop.Loop` (a mixin: the same object, the same model and accelerator), kept in
its own file. Each process adds its own real rows to the epoch's sums (the padding duplicates that
make the last batches of a map-style set even across processes left out; a stream's shadow rounds
add nothing) and the sums are added over processes once, at the end: the loss weighted by its
samples or target tokens (`train.targets`), each metric function by its samples. Nothing is
gathered across processes but what needs every row: the inputs of stateful metrics, and
`predict`'s outputs, each padded to a common shape (`train.devices.gather_rows`), so that outputs
of any shape (a language model's per-token logits of different lengths) go through.
"""

from __future__ import annotations

import torch

import warnings

from train.data.batches import batch_rows, call_model, model_output, prediction_inputs, split_batch, take_rows
from train.engine.checks import check_classes, first_batch, shape_of
from train.engine.devices import gather_rows
from train.base.errors import UserError, describe
from train.engine.metrics import EpochSums, is_stateful, per_batch
from train.data.rng import rng_untouched
from train.data.streams import first_samples, is_stream
from train.engine.targets import IGNORE_INDEX


class Evaluation:
    @torch.no_grad()
    def eval_batch(self, features, labels, rows: int, padded_round: bool = False):
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
        loss, preds, labels, count = self.eval_batch(features, labels, len(labels))
        weight = count if count is not None else torch.tensor(len(labels), device=loss.device)
        total = torch.stack([loss.detach().double() * weight, weight.double()])
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
            loss, preds, labels, count = self.eval_batch(features, labels, rows, padded)
            if rows:
                sums.add(loss, preds, labels, count, stateful=False)
            if gathers:  # every process's rows, for metrics computed over the whole set
                sums.update_stateful(*gather_rows(self.accelerator, (preds, labels), (0, IGNORE_INDEX)))
        return {prefix + k: v for k, v in sums.result(self.accelerator).items()}

    @torch.no_grad()
    def predict(self, dl, with_targets: bool = False):
        """Model outputs for every sample of `dl`, in its order, gathered from all processes (padding
        duplicates dropped), on the CPU; with `with_targets`, (outputs, targets). One tensor when
        every batch's outputs have one shape past the batch dimension; for outputs whose length
        varies (a language model's per-token logits), a list of one tensor per sample, cut to the
        sample's length (its attention mask's, else its batch's)."""
        dl = self.prepare_loader(dl)
        self._same_draws(dl)
        self.model.eval()
        outputs, targets, lengths = [], [], []

        def inputs_and_targets(batch):
            return prediction_inputs(batch), (self.split(batch)[1] if with_targets else None)

        for (inputs, labels), rows, _ in self._eval_batches(dl, inputs_and_targets):
            preds, _ = model_output(call_model(self.model, self.layout(inputs)))
            mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
            # a sample's length, for outputs per token (batch, length, ...): its mask's, else the batch's; 0 else
            length = torch.full((len(preds),), preds.shape[1] if preds.dim() > 2 else 0, device=preds.device)
            if preds.dim() > 2 and torch.is_tensor(mask) and mask.shape == preds.shape[:2]:
                length = mask.sum(dim=1)
            parts = [preds[:rows], length[:rows]] + ([labels[:rows]] if with_targets else [])
            gathered = gather_rows(self.accelerator, parts, (0, 0, IGNORE_INDEX))
            outputs.append(gathered[0].cpu())
            lengths.append(gathered[1].cpu())
            if with_targets:
                targets.append(gathered[2].cpu())
        outputs_joined = _joined(outputs, lengths)
        if with_targets:
            return outputs_joined, _joined(targets, lengths)
        return outputs_joined

    @staticmethod
    def _same_draws(dl) -> None:
        """Every evaluation and prediction draws alike: Accelerate's loader would otherwise count its
        passes as epochs, and a resumed run (a new loader) would draw other augmentations."""
        if hasattr(dl, "set_epoch"):
            dl.set_epoch(0)
        if hasattr(getattr(dl, "dataset", None), "set_epoch"):
            dl.dataset.set_epoch(0)

    def check_data(self, train, name: str, num_classes: int | None = None) -> list[str]:
        """A real batch of the training data through the collate, the model, the loss and each metric,
        on every process, in eval mode and without drawing from any RNG: two samples of different
        shapes where the data has them (one of the first and one spread over the set), else the first
        two. Raises `UserError` naming what does not fit. Skipped for data that cannot be indexed (an
        iterable data set). `num_classes`, for a classification loss, is checked against the model's
        output width. Returns warnings (things that run, but are likely a mistake)."""
        dataset = getattr(train, "dataset", None)
        if dataset is None or not (is_stream(dataset) or hasattr(dataset, "__getitem__")):
            return []
        acc = self.accelerator
        model = acc.unwrap_model(self.model, keep_torch_compile=False)
        was_training = model.training
        with rng_untouched():
            collate = getattr(train, "collate_fn", None)
            batch = first_batch(dataset, collate) if not is_stream(dataset) else \
                _collated(first_samples(dataset), collate)
            features, labels = split_batch(batch, self.model_loss)
            features, labels = self.to_device(features, labels)
            warnings_found = padding_with_labels(features, labels)
            try:
                with torch.no_grad(), acc.autocast():
                    model.eval()
                    output = call_model(model, self.layout(features))
            except Exception as e:
                raise UserError(f"model {name} cannot take the training data: an input of shape "
                                f"{shape_of(features)} gives {describe(e)}") from None
            finally:
                model.train(was_training)
            preds, own_loss = model_output(output, f"model {name}")
            if self.model_loss:
                if own_loss is None:
                    raise UserError(f"loss: model, but model {name} returned no 'loss'; give it the labels (dict samples "
                                    f"holding 'labels') or choose a loss function")
            else:
                check_classes(self.loss_func, preds, labels, name, num_classes)
                try:
                    with warnings.catch_warnings():  # e.g. MSE of (N, 10) against (N,): torch only warns, then broadcasts
                        warnings.simplefilter("error", UserWarning)
                        self.loss_func(preds, labels)
                except Exception as e:
                    raise UserError(f"the loss cannot take model {name}'s output {shape_of(preds)} with the labels "
                                    f"{shape_of(labels)}: {describe(e)}") from None
            for metric_name, metric in self.metrics.items():
                if not is_stateful(metric) and not per_batch(metric):
                    continue  # computed from the loss
                try:
                    if is_stateful(metric):
                        metric.update(preds, labels)
                        metric.reset()
                    else:
                        metric(preds, labels)
                except Exception as e:
                    raise UserError(f"metric '{metric_name}' cannot take model {name}'s output {shape_of(preds)} with "
                                    f"the labels {shape_of(labels)}: {describe(e)}") from None
        return warnings_found


def _collated(samples, collate):
    from torch.utils.data import default_collate

    try:
        return (collate or default_collate)(samples)
    except Exception as e:
        raise UserError(f"the collate function cannot batch the stream's first samples: {describe(e)}; set "
                        f"data.collate: pad for samples of different lengths, or give a collate function") from None


def _joined(pieces: list, lengths: list):
    """Batches of outputs as one tensor, or a list of per-sample tensors cut to their lengths for
    outputs per token (a length for each sample: its attention mask's) or of varying shapes."""
    if not pieces:
        return torch.empty(0)
    per_token = any(int(length.max()) > 0 for length in lengths if length.numel())
    if not per_token and all(p.shape[1:] == pieces[0].shape[1:] for p in pieces):
        return torch.cat(pieces)
    samples = []
    for piece, length in zip(pieces, lengths):
        for row, n in zip(piece, length.tolist()):
            samples.append(row[:n] if n else row)
    return samples


def padding_with_labels(features, labels) -> list[str]:
    """A warning when labels at padding positions (attention mask 0) are real ids: the loss would
    train on padding (labels padded by hand with the pad token instead of -100)."""
    mask = features.get("attention_mask") if isinstance(features, dict) else None
    if not (torch.is_tensor(mask) and torch.is_tensor(labels) and mask.shape == labels.shape):
        return []
    bad = int(((mask == 0) & (labels != IGNORE_INDEX)).sum())
    if not bad:
        return []
    return [f"{bad} label(s) of the first batch sit at padding positions (attention_mask 0) with real ids, so the "
            f"loss trains on padding; give them -100 there (data.collate: pad does)"]
