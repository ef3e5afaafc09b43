"""The loop's evaluation: the eval step, `evaluate` and `predict`, exact across processes, and
the check that a real batch of the training data goes through the model before anything is written.

A part of `train.loop.Loop` (a mixin: the same object, the same model and accelerator), kept in
its own file. Predictions and labels are gathered with `gather_for_metrics`, which drops the
padding duplicates that make the last batches even across processes; the model's own loss,
which is a mean over each process's batch, is weighted by that process's real samples.
"""

from __future__ import annotations

import torch

import warnings

from .batches import call_model, model_output, prediction_inputs, split_batch, take_rows
from .checks import check_classes, first_batch, shape_of
from .errors import UserError, describe
from .metrics import EpochSums, is_stateful
from .rng import rng_untouched


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
        self._same_draws(dl)
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
        self._same_draws(dl)
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

    @staticmethod
    def _same_draws(dl) -> None:
        """Every evaluation and prediction draws alike: Accelerate's loader would otherwise count its
        passes as epochs, and a resumed run (a new loader) would draw other augmentations."""
        if hasattr(dl, "set_epoch"):
            dl.set_epoch(0)
        if hasattr(getattr(dl, "dataset", None), "set_epoch"):
            dl.dataset.set_epoch(0)

    def check_data(self, train, name: str, num_classes: int | None = None) -> None:
        """A real batch of the training data through the collate, the model, the loss and each metric,
        on every process, in eval mode and without drawing from any RNG: two samples of different
        shapes where the data has them (one of the first and one spread over the set), else the first
        two. Raises `UserError` naming what does not fit. Skipped for data that cannot be indexed (an
        iterable data set). `num_classes`, for a classification loss, is checked against the model's
        output width."""
        dataset = getattr(train, "dataset", None)
        if dataset is None or isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__getitem__"):
            return
        acc = self.accelerator
        model = acc.unwrap_model(self.model, keep_torch_compile=False)
        was_training = model.training
        with rng_untouched():
            batch = first_batch(dataset, getattr(train, "collate_fn", None))
            features, labels = split_batch(batch, self.model_loss)
            features, labels = self.to_device(features, labels)
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
                try:
                    if is_stateful(metric):
                        metric.update(preds, labels)
                        metric.reset()
                    else:
                        metric(preds, labels)
                except Exception as e:
                    raise UserError(f"metric '{metric_name}' cannot take model {name}'s output {shape_of(preds)} with "
                                    f"the labels {shape_of(labels)}: {describe(e)}") from None
