"""Callbacks a user would write, named in a config by the tests (`callbacks: [...]`)."""

import json
from pathlib import Path

import train


@train.on_main_process
class Writer:
    """Writes one file per epoch into the run's folder (the main process alone), and counts the
    epochs it has seen across resumes (its state travels in checkpoints)."""

    state_key = "writer"

    def __init__(self, prefix: str = "epoch"):
        self.prefix, self.seen = prefix, 0

    def on_epoch_end(self, epoch, logs, run):
        self.seen += 1
        (run.output_dir / f"{self.prefix}{epoch}.json").write_text(json.dumps(
            {"epoch": epoch, "seen": self.seen, "val_loss": logs.get("val_loss"), "step": run.step}))

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = state["seen"]


class EveryProcess(train.Callback):
    """Runs on every process: records which process it ran on and how many batches it saw."""

    state_key = "every_process"

    def __init__(self, folder: str):
        self.folder, self.batches = Path(folder), 0

    def on_train_batch_end(self, batch, step, run):
        self.batches += 1

    def on_train_end(self, run):
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"rank{run.process_index}-of-{run.num_processes}.json").write_text(
            json.dumps({"batches": self.batches, "main": run.is_main_process}))

    def state_dict(self):
        return {"batches": self.batches}

    def load_state_dict(self, state):
        self.batches = state["batches"]


class KerasStyle:
    """Keras' signature, nothing else of the project."""

    def on_epoch_end(self, epoch, logs=None):
        train.print(f"keras-style epoch {epoch}: loss {logs['loss']:.4f}")


class Probe(train.Callback):
    """Runs on every process (a sharded model's forward is a collective): the run's model on fixed
    inputs at each epoch end; the main process saves the outputs as `probe<epoch>.pt` in the run's
    folder (tests.helpers.tiny's 32 features)."""

    def on_epoch_end(self, epoch, logs, run):
        import torch

        inputs = torch.randn(8, 32, generator=torch.Generator().manual_seed(7))  # CPU runs
        with torch.no_grad():
            outputs = run.model(inputs).cpu()
        if run.is_main_process:
            torch.save(outputs, run.output_dir / f"probe{epoch}.pt")
