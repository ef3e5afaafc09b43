"""Experiment tracking through Accelerate's trackers: Weights & Biases, TensorBoard and MLflow.

The resolved config is logged once, running metrics every `log_step_freq` batches and each epoch's
history row, all by the global main process only (Accelerate hands other processes a dummy
tracker, which this module never touches). The W&B run id is kept in `<output_dir>/wandb_run_id`
and the MLflow run id in `<output_dir>/mlflow_run_id`, so that a rerun in the same output folder
continues the same run instead of starting a new one. MLflow writes to `MLFLOW_TRACKING_URI`, or
else to a local store, `<output_dir>/mlruns/mlflow.db` (SQLite).
"""

from __future__ import annotations

from pathlib import Path

from train.base.text import flatten
from train.engine.events import Callback

RUN_ID_FILE = "wandb_run_id"
MLFLOW_RUN_ID_FILE = "mlflow_run_id"


def wandb_run_id(output_dir: Path, from_checkpoint: str | None = None) -> str:
    """The run id of this output folder: the one the resumed checkpoint names, else the one read
    back if a run was started here before, else a new one."""
    path = output_dir / RUN_ID_FILE
    if from_checkpoint:
        from train.base.files import atomic_write_text

        atomic_write_text(path, from_checkpoint + "\n")
        return from_checkpoint
    if path.is_file():
        return path.read_text().strip()
    import secrets

    from train.base.files import atomic_write_text

    run_id = secrets.token_hex(4)  # W&B ids are [a-z0-9]; wandb's own generator is not public API
    atomic_write_text(path, run_id + "\n")
    return run_id


def start_trackers(accelerator, options, output_dir: Path, run_id: str | None = None,
                   config=None) -> tuple[dict, str | None]:
    """Start the trackers `options.trackers` names (all processes call this; only the main one
    logs). `run_id` continues that W&B run (a resumed checkpoint's). Logs `config` (a
    `train.Config`) or else the options. Returns where each writes, for the plan, and the W&B
    run id (None without W&B)."""
    names = list(options.trackers)
    if not names:
        return {}, None
    init_kwargs, where = {}, {}
    run_id = run_id if "wandb" in names else None
    if "wandb" in names:
        run_id = wandb_run_id(output_dir, run_id) if accelerator.is_main_process else None
        init_kwargs["wandb"] = dict(id=run_id, resume="allow", dir=str(output_dir), entity=options.tracking_entity,
                                    name=options.tracking_run_name, tags=list(options.tracking_tags),
                                    group=options.tracking_group)
        where["wandb"] = f"{output_dir}/wandb (run id {run_id}; offline: wandb sync {output_dir}/wandb/offline-run-*)"
    if "tensorboard" in names:
        where["tensorboard"] = f"{output_dir}/tensorboard/{options.tracking_project}"
    if "mlflow" in names:
        init_kwargs["mlflow"], where["mlflow"] = _mlflow_run(accelerator, options, output_dir)
    import dataclasses

    logged = _flat(config.to_dict() if config is not None else dataclasses.asdict(options))
    accelerator.init_trackers(options.tracking_project, init_kwargs=init_kwargs)
    for tracker in accelerator.trackers:  # the config once; MLflow's parameters cannot change on a resume
        if tracker.name == "mlflow" and accelerator.is_main_process:
            _log_mlflow_params(tracker, logged, output_dir)
        else:
            tracker.store_init_configuration(logged)
    return where, run_id


def _mlflow_run(accelerator, options, output_dir: Path) -> tuple[dict, str]:
    """MLflow's tracker settings (continuing the run this folder started, if any) and the plan's words."""
    import os

    store = Path(output_dir).resolve() / "mlruns"
    # MLflow 3 keeps its file store for old data only: the local store is a SQLite file
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store / 'mlflow.db'}"
    path = Path(output_dir) / MLFLOW_RUN_ID_FILE
    run_id = path.read_text().strip() if path.is_file() else None
    if accelerator.is_main_process:
        import logging

        import mlflow

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines on creating the store's tables
        store.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(uri)
    kwargs = dict(run_id=run_id, run_name=options.tracking_run_name, logging_dir=(store / "artifacts").as_uri(),
                  tags={f"tag.{t}": "true" for t in options.tracking_tags} or None)
    return kwargs, f"{uri} (experiment {options.tracking_project}{f', run {run_id}' if run_id else ''})"


def _log_mlflow_params(tracker, logged: dict, output_dir: Path) -> None:
    """The config as the MLflow run's parameters: on a continued run, only those it does not have yet
    (MLflow refuses to change a parameter; a resume may change e.g. `epochs`). Records the run's id."""
    import mlflow

    from train.base.files import atomic_write_text

    run = tracker.tracker
    atomic_write_text(Path(output_dir) / MLFLOW_RUN_ID_FILE, run.info.run_id + "\n")
    have = mlflow.MlflowClient().get_run(run.info.run_id).data.params
    tracker.store_init_configuration({k: v for k, v in logged.items() if k not in have})


def _flat(tree: dict) -> dict:
    """The config as dotted keys of scalars and strings (all TensorBoard's hparams take)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(tree).items()}


class Tracking(Callback):
    """Sends running metrics (`train/<name>`) at log points and each epoch's row to the trackers."""

    def on_log(self, epoch, step, logs, run):
        run.accelerator.log({f"train/{k}": v for k, v in logs.items()} | {"epoch": epoch}, step=step)

    def on_epoch_end(self, row, step, run):
        run.accelerator.log(dict(row), step=step)


class TrackerRun:
    """The W&B run's id as a stateful part of the run: saved with each checkpoint and restored with
    it, so that a resumed run logs to the same W&B run."""

    state_key = "tracker"

    def __init__(self, run_id: str | None = None):
        self.run_id = run_id

    def state_dict(self) -> dict:
        return {"run_id": self.run_id}

    def load_state_dict(self, state: dict) -> None:
        self.run_id = state.get("run_id")
