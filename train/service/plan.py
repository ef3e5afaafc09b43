"""The plan: what a run will do, said once before training, each line within 100 columns."""

from __future__ import annotations

import math
import os
import textwrap

from train.engine.devices import precision_note, processes_in_words
from train.engine.rounds import batches_per_epoch

WIDTH = 100


def plan_lines(run, epochs: int, train) -> list[str]:
    o, acc = run.options, run.accelerator
    world, accumulation = acc.num_processes, acc.gradient_accumulation_steps  # a resume may have changed it
    batch = (getattr(train, "batch_size", None) or getattr(getattr(train, "base_dataloader", None), "batch_size", None)
             or getattr(getattr(train, "batch_sampler", None), "batch_size", None))  # a prepared loader's: per process
    batches = batches_per_epoch(train, o.steps_per_epoch, accumulation)  # per process; None: a stream's end
    lines = [f"plan: {run.name} on {processes_in_words(acc)}"]
    slow = precision_note(acc.mixed_precision, acc.device.type)
    if slow:
        lines.append(f"warning: {slow}")
    if o.deterministic:
        lines.append("deterministic: on: a resume is bit-identical (deterministic=false lets cuDNN autotune its "
                     "kernels: faster convolutions on a GPU, a resume then not bit for bit)")
    else:
        lines.append("deterministic: off: cuDNN autotunes its kernels; a resume continues from the saved state but "
                     "is not bit-identical on a GPU")
    if batch:
        lines.append(f"batch {batch} per process x {world} process(es) x accumulation {accumulation} = "
                     f"{batch * world * accumulation} samples per optimizer step")
    if batches is None:
        lines.append(f"an epoch ends when the stream does; {epochs} epoch(s)")
    else:
        lines.append(f"{batches} batches per epoch per process = {math.ceil(batches / accumulation)} optimizer "
                     f"steps; {epochs} epoch(s)")
    lines += [f"data: {note}" for note in [*run.plan_notes, *run.loop.data_notes]]
    if run.loop.optimizer is not None and acc.device.type == "cuda":
        lines.append(f"optimizer: {optimizer_note(run.loop.optimizer)}")
    lines += run.loop.step_notes
    if o.profile["steps"]:
        first, steps = o.profile["start_step"], o.profile["steps"]
        where = f"a trace per process in {o.output_dir}/profile/" if o.output_dir else "no trace (no output folder)"
        lines.append(f"profile: batches {first}-{first + steps - 1} of each process through torch's profiler: {where}, "
                     f"the top operations printed after them")
    lines += [f"model: {note}" for note in model_notes(acc.unwrap_model(run.loop.model, keep_torch_compile=False))]
    restart = int(os.environ.get("TRAIN_RESTART", "0"))
    if restart:
        lines.append(f"restart {restart} of {os.environ.get('TRAIN_MAX_RESTARTS', '?')} after a crash")
    if run.resumed is not None:
        pos, done = run.resumed.position, len(run.resumed.history)
        where = (f"epoch {pos['epoch']}, batch {pos['batch']}" + (f" of {batches}" if batches else "")
                 if pos["epoch"] > done
                 else f"the end of epoch {done}")
        lines.append(f"resuming from {run.resumed.path} ({where}, step {pos['step']}); training to epoch {epochs}")
        if run.resumed.rescaled is not None:
            lines.append(run.resumed.rescaled.note(batch))
    if run.checkpoint is not None:
        every = f"every {o.checkpoint_every} optimizer steps and " if o.checkpoint_every else ""
        lines.append(f"checkpoints: {every}at each epoch end to {run.checkpoint.root}/ (keep {o.keep_last} + "
                     f"best by {run.checkpoint.monitor}); SIGUSR1/SIGTERM save one and exit 75, Ctrl-C exits 130")
        if o.checkpoint_memory_every:
            memory = run.checkpoint.memory
            nodes = " on each node, each node's copy for its own processes" if run.checkpoint.across_nodes else ""
            lines.append(f"checkpoints in memory: every {o.checkpoint_memory_every} optimizer steps to {memory}/{nodes} "
                         f"(the newest only, removed when the run ends)" if memory else
                         "checkpoints in memory: off (the state is sharded across nodes: a node's memory would hold "
                         "only its own processes' shards): disk checkpoints only")
    from train.saving.export import exported_folders

    plain = acc.unwrap_model(run.loop.model, keep_torch_compile=False)
    files = ", ".join(["history.csv", "history.png", "model.safetensors", *exported_folders(plain, o.export_merged),
                       *(["config.yaml"] if run.config is not None else [])])
    lines.append(f"outputs: {o.output_dir}/ ({files})")
    lines += [f"tracking: {name} -> {where}" for name, where in run.trackers.items()]
    lines = [lines[0], *("  " + line for line in lines[1:])]
    return [part for line in lines for part in textwrap.wrap(line, WIDTH, subsequent_indent="      ",
                                                             break_long_words=False, break_on_hyphens=False)]


def model_notes(model) -> list[str]:
    """What the plan says of the model beyond its name: adapters, gradient checkpointing, the loss."""
    from train.engine.adapters import is_adapted

    notes = []
    if is_adapted(model):
        total = sum(p.numel() for p in model.parameters())
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        notes.append(f"adapters ({type(model.peft_config['default']).__name__.replace('Config', '').lower()}): "
                     f"{trained:,} of {total:,} parameters train ({100 * trained / total:.2f}%); the frozen base is "
                     f"not saved in checkpoints")
    checkpointing = getattr(type(model), "is_activation_checkpointing", None) or \
        getattr(type(model), "is_gradient_checkpointing", None)  # transformers' new name, else its old one
    if checkpointing is not None and checkpointing.fget(model):
        notes.append("gradient checkpointing: activations recomputed in the backward pass (less memory, more compute)")
    return notes


def optimizer_note(optimizer) -> str:
    """Which of torch's implementations the optimizer's step runs on a GPU."""
    inner = getattr(optimizer, "optimizer", optimizer)  # Accelerate's wrapper holds the torch one
    group = inner.param_groups[0]
    if group.get("fused"):
        how = "fused (one kernel for all parameters)"
    elif group.get("foreach") is False:
        how = "one kernel per parameter (foreach=false)"
    else:
        how = "foreach (a kernel per operation over all parameters)"
    if group.get("capturable"):
        how += ", capturable (its step count and hyperparameters on the device, for graphs)"
    return f"{type(inner).__name__}, {how}"
