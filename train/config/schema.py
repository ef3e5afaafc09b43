"""The run configuration: the schema, one key at a time, with its default and what it means.

Everything a run needs is one `Config` (dataclasses, so the keys are typed and listed in one
place, each with a line of help that `--help` prints). Reading YAML, applying `key=value`
overrides and checking values is `train.config.loading`'s job (`load_config`). This module knows
nothing of torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from train.config.monitor import MODES as MONITOR_MODES
from train.config.options import EMA_VALIDATE, NONFINITE, PRECISIONS, SCHEDULER_INTERVALS, STRATEGIES


def key(default: Any = None, help: str = "", choices: tuple = ()):
    """A config key: its default, one line of help, and its choices where they are fixed."""
    meta = {"help": help, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


IMPORT = "or an import path 'package.module:Name' (or 'path/file.py:Name')"


@dataclass
class DataConfig:
    source: str = key("mnist", "where the data comes from: mnist (IDX files in data.path), torchvision (class "
                               "data.name), hf (a datasets builder), python (your data.factory)",
                      ("mnist", "torchvision", "hf", "python"))
    factory: Optional[str] = key(None, "python: 'package.module:function' returning the training and "
                                       "validation data sets (map-style Datasets; validation optional)")
    args: dict = key({}, "python: keyword arguments of data.factory")
    path: str = key("data/mnist", "the data's folder: IDX files, torchvision's root, or hf's data_dir")
    name: Optional[str] = key(None, "torchvision class (FashionMNIST) or hf builder/hub name (parquet, imagefolder)")
    train_split: str = key("train", "torchvision/hf: the training split")
    val_split: str = key("test", "torchvision/hf: the validation split")
    image_column: str = key("image", "hf: the input column")
    label_column: str = key("label", "hf: the target column")
    download: bool = key(False, "torchvision/hf: allowed to fetch from the network")
    train_size: Optional[int] = key(None, "the first N training samples (smoke runs); null: all")
    val_size: Optional[int] = key(None, "the first N validation samples; 0: no validation; null: all")
    num_classes: Optional[int] = key(None, "classes of a classification task: built-in models size their output "
                                           "by it, and the labels and the model's output width are checked against "
                                           "it (with loss cross_entropy or nll); null: 10 for a built-in model or "
                                           "an image source, else (a data factory) the model's output width")
    num_workers: Optional[int] = key(None, "loader worker processes; null: 0 for in-memory data, else "
                                           "the CPUs per process minus one, at most 8")
    pin_memory: Optional[bool] = key(None, "null: only when batches go from host memory to a CUDA device")
    prefetch_factor: Optional[int] = key(None, "batches each worker loads ahead; null: torch's default (2)")
    in_memory_limit_mb: int = key(2048, "data sets up to this size are held in memory (the fast path); "
                                        "larger hf sets stream through workers")
    streaming: Optional[bool] = key(None, "hf: true streams (decode per sample in workers), false holds "
                                          "in memory; null: by data.in_memory_limit_mb")
    collate: Optional[str] = key(None, "how samples become a batch: null stacks them (one shape), pad pads "
                                       "variable-length tensors to the batch's longest, or an import path to "
                                       "f(samples) -> batch (a factory's 'collate' is used when this is null)")
    collate_args: dict = key({}, "keyword arguments of an imported collate (a class is built with them)")
    pad_value: float = key(0, "collate pad: what padding is filled with (labels get -100, attention masks 0)")
    group_by_length: bool = key(False, "batches of samples of similar lengths (sorted within shuffled "
                                       "mega-batches, seeded by seed and epoch): less padding")


@dataclass
class OptimizerConfig:
    name: str = key("adam", f"adam, adamw, sgd, rmsprop, {IMPORT} (a torch.optim.Optimizer class)")
    lr: float = key(0.01, "the learning rate (the one-cycle peak with scheduler.name=onecycle)")
    weight_decay: float = key(0.0, "L2 penalty / decoupled weight decay (adamw)")
    momentum: float = key(0.9, "sgd and rmsprop only")
    args: dict = key({}, "more keyword arguments of the optimizer, e.g. {betas: [0.9, 0.95]}")


@dataclass
class SchedulerConfig:
    name: str = key("none", f"none, step, cosine, onecycle, {IMPORT} (an LRScheduler class)")
    interval: str = key("epoch", "step the schedule once per epoch or once per optimizer step", SCHEDULER_INTERVALS)
    step_size: int = key(1, "step: decay every step_size intervals")
    gamma: float = key(0.1, "step: the decay factor")
    args: dict = key({}, "more keyword arguments of the schedule")


@dataclass
class BatchFindConfig:
    max: Optional[int] = key(None, "batch_size: auto: the largest micro-batch tried; null: the training set's share "
                                   "of one process")
    global_batch: Optional[int] = key(None, "batch_size: auto: keep this many samples per optimizer step (over all "
                                            "processes) through gradient accumulation; null: the accumulation given")
    steps: int = key(2, "batch_size: auto: training steps per size tried")
    memory_fraction: float = key(0.8, "batch_size: auto on a CPU: a size whose peak resident set passes this share of "
                                      "the node's available memory (per process) counts as out of memory")


@dataclass
class EmaConfig:
    decay: Optional[float] = key(None, "average the weights: after each optimizer step average = decay x average + "
                                       "(1 - decay) x weights, e.g. 0.999; null: off")
    every_n_steps: int = key(1, "update the average every N optimizer steps")
    start_step: int = key(0, "before this optimizer step the average follows the weights")
    warmup: bool = key(False, "grow the decay as timm's ModelEmaV3 does: min(decay, 1 - (1 + n)^(-2/3)) after n updates")
    validate: str = key("averaged", "averaged: validation (val_*), the best checkpoint, model.safetensors and predict "
                                    "use the averages; both: also raw_val_* columns for the trained weights",
                        EMA_VALIDATE)


@dataclass
class ProfileConfig:
    steps: int = key(0, "profile this many training batches with torch's profiler (0: off): a trace per process in "
                        "profile/rank<N>.json and the top operations printed")
    start_step: int = key(3, "the first profiled batch, counted from 1 in this run (the batch before warms up)")
    activities: list = key([], "cpu and/or cuda; empty: cpu, and cuda on a GPU")
    memory: bool = key(False, "record allocations too; on a GPU also keep the allocator's history and dump it to "
                              "profile/oom-rank<N>.pickle on an out-of-memory error")
    record_shapes: bool = key(False, "record the operators' input shapes (the table then tells calls apart by shape)")


@dataclass
class DeviceConfig:
    peak_tflops: Optional[float] = key(None, "one device's peak TFLOP/s, for the history's mfu (flops_per_s over "
                                             "the peak of every process's device); null: a table of NVIDIA GPUs "
                                             "by the run's precision, none for a CPU")


@dataclass
class TrackingConfig:
    wandb: bool = key(False, "Weights & Biases (WANDB_MODE=offline works without network)")
    tensorboard: bool = key(False, "TensorBoard event files in <output_dir>/tensorboard")
    mlflow: bool = key(False, "MLflow, through Accelerate: to MLFLOW_TRACKING_URI, else a local store, "
                              "<output_dir>/mlruns/mlflow.db; a rerun in the folder continues the same MLflow run")
    project: str = key("train", "the trackers' project name")
    entity: Optional[str] = key(None, "W&B entity (team or user)")
    run_name: Optional[str] = key(None, "the run's name in the trackers")
    tags: list = key([], "W&B tags")
    group: Optional[str] = key(None, "W&B group (a search's trials share one: the search's name)")


@dataclass
class CheckpointConfig:
    enabled: bool = key(True, "checkpoints in <output_dir>/checkpoints (needed to resume)")
    every_steps: Optional[int] = key(None, "also every N optimizer steps within an epoch; null: epoch ends only")
    keep_last: int = key(2, "how many of the newest to keep (plus the best)")
    memory_every_steps: Optional[int] = key(None, "also every N optimizer steps to this node's memory (/dev/shm; "
                                                  "the newest only, removed when the run ends): a restart "
                                                  "resumes from it when it is newer than the disk's; one node only")
    async_save: bool = key(False, "write checkpoints in the background: training waits only while the state is "
                                  "copied to memory; latest moves once the write is on disk and verified")
    monitor: Optional[str] = key(None, "the history column that picks checkpoints/best; null: val_loss, "
                                       "or loss without validation")
    mode: str = key("auto", "whether a lower (min) or higher (max) monitor is better; auto: min for a loss or "
                            "an error (by the column's name), else max", MONITOR_MODES)


@dataclass
class EarlyStoppingConfig:
    monitor: Optional[str] = key(None, "a history column to watch, e.g. val_loss; null: no early stopping")
    mode: str = key("auto", "whether a lower (min) or higher (max) value is better; auto: min for a loss or "
                            "an error (by the column's name), else max", MONITOR_MODES)
    patience: int = key(3, "epochs without an improvement of more than min_delta before stopping")
    min_delta: float = key(0.0, "the smallest change that counts as an improvement")
    restore_best: bool = key(False, "end with the weights of the best epoch instead of the last")


@dataclass
class SweepConfig:
    space: dict = key({}, "the search space: {config key: {log_uniform|uniform|int: [low, high]} or {choice: "
                          "[...]}} (or python -m train.sweep --space FILE)")
    trials: int = key(20, "how many trials the search finishes (complete or pruned)")
    monitor: Optional[str] = key(None, "the history column to optimise; null: the early-stopping monitor, else "
                                       "the checkpoint monitor, else val_loss (loss without validation)")
    mode: str = key("auto", "max or min; auto: the mode of the monitor it took (min for val_loss)",
                    MONITOR_MODES)
    sampler: str = key("tpe", "Optuna's TPE sampler, or random", ("tpe", "random"))
    seed: Optional[int] = key(None, "seeds the sampler, so the same search proposes the same trials; null: seed")
    pruner: str = key("median", "stop a trial at an epoch end whose monitor is worse than the median of the "
                                "earlier trials at that epoch; none: never", ("median", "none"))
    pruner_args: dict = key({}, "arguments of optuna's MedianPruner, e.g. {n_startup_trials: 5, n_warmup_steps: 1}")
    baseline: bool = key(True, "the first trial trains the config's own values (where the space holds them)")
    dir: Optional[str] = key(None, "the search's folder (study, trials, results); null: <output_dir>-sweep")


@dataclass
class FsdpConfig:
    wrap: list = key(["auto"], "strategy=fsdp: the modules sharded as units of their own: auto (a transformers "
                               "model's layer classes, else by size), size (modules of more than min_num_params "
                               "parameters), or class names, e.g. [GPT2Block]")
    min_num_params: int = key(100_000, "wrap by size: a module with more parameters than this is a unit")
    reshard_after_forward: bool = key(True, "free gathered parameters after the forward pass (gathered again for "
                                            "the backward): less memory, one more all-gather per unit")
    activation_checkpointing: bool = key(False, "recompute each unit's activations in the backward pass")
    cpu_offload: bool = key(False, "keep the shards and the optimizer state in CPU memory")


@dataclass
class PeftConfig:
    method: str = key("none", "adapters through peft: lora trains low-rank updates of the target modules while the "
                              "model's own weights stay frozen; none trains every weight", ("none", "lora"))
    r: int = key(8, "lora: the rank of each update")
    alpha: float = key(16.0, "lora: the updates' scale is alpha / r")
    dropout: float = key(0.0, "lora: dropout on the updates' inputs")
    target_modules: Optional[list] = key(None, "lora: the module names to adapt, e.g. [c_attn]; null: peft's "
                                               "default for the model's type")
    args: dict = key({}, "more arguments of peft's LoraConfig, e.g. {bias: lora_only}")
    merged_export: bool = key(False, "also write hf-merged/: the adapters merged into the weights, loadable by the "
                                     "base class's from_pretrained without peft")


@dataclass
class Config:
    model: str = key("tutorial_cnn", f"tutorial_cnn, fast_cnn, {IMPORT} (an nn.Module class or factory)")
    model_args: dict = key({}, "keyword arguments of the model, e.g. {hidden: 64} (of from_pretrained with "
                               "pretrained)")
    pretrained: Optional[str] = key(None, "a local folder written by save_pretrained: the model is "
                                          "model.from_pretrained(folder, **model_args), e.g. with model: "
                                          "transformers:AutoModelForCausalLM; nothing is downloaded")
    gradient_checkpointing: bool = key(False, "recompute activations in the backward pass instead of keeping "
                                              "them: less memory, about a third more compute (models with "
                                              "gradient_checkpointing_enable, as transformers models have)")
    epochs: int = key(3, "the run's total number of epochs (a resumed run trains the rest)")
    batch_size: Union[int, str] = key(128, "per process; auto: the largest that trains without running out of memory "
                                           "on every process (see batch_find)")
    steps_per_epoch: Optional[int] = key(None, "optimizer steps per epoch: needed for a stream without a length "
                                               "(else an epoch ends when the stream does); null: the whole data set")
    seed: int = key(42, "seeds the initial weights, the data order and every random op of training")
    output_dir: str = key("runs/mnist", "where config.yaml, history.csv/png, model.safetensors and "
                                        "checkpoints/ go; a rerun here resumes. A config file that does "
                                        "not set it: runs/<the file's name> (its folder's, for config.yaml)")
    loss: str = key("cross_entropy", "cross_entropy, nll, mse, l1, smooth_l1, huber, bce_with_logits, bce, "
                                     "token_cross_entropy (logits per token; loss_args {shift: true} for next-token), "
                                     f"model (the loss the model returns, as transformers models do), {IMPORT}")
    loss_args: dict = key({}, "keyword arguments of the loss, e.g. {label_smoothing: 0.1}")
    metrics: list = key(["accuracy"], f"each accuracy, mae, mse, perplexity (exp of the loss), {IMPORT} "
                                      "(f(y_pred, y_true) or an object with update/compute/reset)")
    callbacks: list = key([], "each an import path 'package.module:Class' (built without arguments) or "
                              "{name: 'package.module:Class', args: {...}}: objects with hooks (see the README)")
    mixed_precision: Optional[str] = key(None, "no, bf16, fp16, or auto (bf16 where the device computes it "
                                               "in hardware, else no); null: what `accelerate launch "
                                               "--mixed_precision` says, else no", PRECISIONS)
    gradient_accumulation_steps: int = key(1, "batches per optimizer step")
    max_grad_norm: Optional[float] = key(None, "clip gradients to this norm; null: no clipping")
    nonfinite: str = key("stop", "a NaN/inf loss: stop (exit 3, the last good checkpoint kept) or skip the "
                                 "optimizer step", NONFINITE)
    resume: Optional[str] = key("auto", "auto: the newest intact checkpoint in output_dir; none; or a "
                                        "checkpoint folder")
    collective_timeout_s: float = key(600.0, "a process waiting longer than this for the others ends the "
                                             "run (a stalled process); a supervisor then restarts it")
    log_step_freq: int = key(100, "read running metrics back from the device every N batches")
    log_every_s: float = key(30.0, "without a terminal: one progress line every N seconds")
    progress: Optional[bool] = key(None, "a progress bar; null: only when stdout is a terminal")
    preflight: bool = key(False, "a few batches, a checkpoint round trip, an estimate, then exit")
    compile: bool = key(False, "torch.compile the model (inductor): a slower start, faster steps on GPUs")
    channels_last: bool = key(False, "NHWC memory layout for conv nets (tensor cores like it)")
    tf32: Optional[bool] = key(None, "TF32 matmuls and convolutions on NVIDIA GPUs; null: torch's defaults")
    deterministic: bool = key(True, "deterministic kernels (cuDNN without autotuning): a run and its resume "
                                    "bit-identical on a GPU too; false: cuDNN's autotuned kernels, and a resume "
                                    "continues from the saved state but not bit for bit")
    graphs: bool = key(False, "capture the whole training step (forward, backward, optimizer) in one CUDA graph "
                              "and replay it: several times faster for small, launch-bound models on a GPU; one "
                              "process, batches of one shape (others run eagerly); on a CPU the step runs eagerly")
    strategy: str = key("ddp", "how the model is spread over processes: ddp (a whole copy each, gradients "
                               "averaged) or fsdp (FSDP2: parameters, gradients and optimizer state sharded; "
                               "settings under fsdp)", STRATEGIES)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    fsdp: FsdpConfig = field(default_factory=FsdpConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    batch_find: BatchFindConfig = field(default_factory=BatchFindConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
