"""A callback for the weight-averaging tests: the trained weights at the start and after every
optimizer step, saved by the main process to <output_dir>/raw_steps.pt (or kept in `.steps`)."""

from pathlib import Path

import torch

import train


class RecordSteps(train.Callback):
    main_process_only = True

    def __init__(self):
        self.steps = []

    def _keep(self, run):
        self.steps.append({k: v.detach().to("cpu", copy=True) for k, v in run.model.named_parameters()})

    def on_train_begin(self, run):
        self._keep(run)

    def on_train_batch_end(self, run):
        if run.stepped:
            self._keep(run)

    def on_train_end(self, run):
        if run.output_dir is not None:
            torch.save(self.steps, Path(run.output_dir) / "raw_steps.pt")


def averaged_by_hand(steps: list, decay: float) -> dict:
    """The exponential moving average of the recorded weights, in float64: a = d a + (1 - d) w after
    each step, starting from the weights the run started with."""
    average = {k: v.double() for k, v in steps[0].items()}
    for weights in steps[1:]:
        average = {k: decay * average[k] + (1 - decay) * weights[k].double() for k in average}
    return average
