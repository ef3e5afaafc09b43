"""The checkpoint manager: the one owner of a run's saved state. It is built with the run's
stateful parts (the loop's position, history and unfinished sums; the accelerator's model,
optimizer, grad scaler and RNG states; the schedule; every part with a `state_key` and
`state_dict()` / `load_state_dict()`: early stopping, the best score, the tracker's run id, your
callbacks) and alone finds, verifies, loads (at one moment, before training) and saves them (as a
callback: every `every_steps` optimizer steps, at each epoch end, on a stop signal). Files and
their checks are `train.saving.storage`'s.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import torch

from train.config.monitor import Monitor
from train.engine.adapters import frozen_fingerprint, is_adapted, trainable_only
from train.engine.events import Callback
from train.engine.devices import all_ok, from_main, local_processes
from train.base.errors import ConfigError, WriteError
from train.base.files import free_space
from train.base.paths import memory_checkpoints
from train.data.rng import capture_rng
from train.saving.background import (BackgroundWrite, checkpoint_size, quick_serialization, remove_stale,
                                     room_to_stage, staging_folder)
from train.saving.memory import newest, newest_on_every_node
from train.saving.elastic import Rescaled, keep_global_batch, unfinished_share
from train.distributed.strategy import is_sharded
from train.saving.reshard import load_across_layouts, needs_reshard, written_sharded
from train.saving.storage import (CALLBACKS_FILE, FORMAT, LOOP_FILE, SCHEDULER_FILE, checkpoint_exception, commit,
                                  find, fsync_own_files, latest, set_aside_newer, why_save_failed)


@dataclass
class Resumed:
    """What a loaded checkpoint was: where, and the position and history it continued."""

    path: Path
    position: dict
    history: list
    parts: dict = field(default_factory=dict)
    rescaled: Optional[Rescaled] = None  # resumed on another process count (train.saving.elastic)


def model_shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def is_compiled(accelerator, model) -> bool:
    # a compiled model's saved state has `_orig_mod.` keys: it loads only into a compiled model
    return hasattr(accelerator.unwrap_model(model), "_orig_mod")


class Checkpoint(Callback):
    """The checkpoint manager (see the module docstring). As a callback it saves a checkpoint every
    `every_steps` optimizer steps (None: never mid-epoch), at each epoch end and when the run is
    interrupted; it keeps the `keep_last` newest plus the best by `monitor`. `parts` are the run's
    other stateful objects, each with a `state_key`, `state_dict()` and `load_state_dict()`."""

    state_key = "checkpoint"

    def __init__(self, loop, root: str | Path, every_steps: Optional[int] = None, keep_last: int = 2,
                 monitor: Optional[str] = None, mode: str = "auto", parts: Iterable = (), background: bool = False,
                 timeout_s: float = 600.0, memory_every: Optional[int] = None):
        self.loop = loop  # the manager saves the loop's state: it alone reads the loop's insides
        self.background, self.timeout_s = background, timeout_s  # written in the background (train.saving.background)
        self._pending: Optional[BackgroundWrite] = None
        self._said_no_room = False  # the note that memory had no room for a staged checkpoint, said once
        self.root = Path(root)
        self.every_steps = every_steps
        # memory checkpoints: each node's holds what its processes need (`train.saving.memory`); a
        # sharded state's parts are spread over the nodes: disk only
        self.across_nodes = local_processes(loop.accelerator) < loop.accelerator.num_processes
        self.memory_every = None if self.across_nodes and is_sharded(loop.accelerator) else memory_every
        self.memory = memory_checkpoints(self.root) if self.memory_every else None
        self.keep_last = keep_last
        self.monitor = monitor
        self.rule = Monitor(monitor, mode)  # which way `monitor` is better
        stateful = [p for p in [self, *parts] if getattr(p, "state_key", None)]
        self.parts = {p.state_key: p for p in stateful}
        if len(self.parts) != len(stateful):
            from train.base.errors import UserError

            keys = [p.state_key for p in stateful]
            twice = sorted({k for k in keys if keys.count(k) > 1})
            raise UserError(f"two parts of the run save their state under the same state_key ({', '.join(twice)}); "
                            f"give each callback a state_key of its own")
        self.best: Optional[float] = None
        self.last_saved: Optional[Path] = None
        acc = loop.accelerator
        self.adapted = is_adapted(acc.unwrap_model(loop.model, keep_torch_compile=False))
        self._frozen: Optional[str] = None  # the frozen base's fingerprint (train.adapters), taken once
        if self.adapted:  # a frozen base is rebuilt on resume, not copied into every checkpoint
            acc.register_save_state_pre_hook(lambda models, weights, _: trainable_only(models, weights, acc.unwrap_model))

    def frozen(self) -> Optional[str]:
        if self.adapted and self._frozen is None:
            self._frozen = frozen_fingerprint(self.loop.accelerator.unwrap_model(self.loop.model,
                                                                                 keep_torch_compile=False))
        return self._frozen

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best")

    # finding and loading: once, before training
    def find(self, resume: str, say=print) -> Optional[Path]:
        """The checkpoint `resume` names (auto: the newest intact one in this run's folder), checked
        intact and safe by the main process; None to start afresh. A newer memory checkpoint instead
        (resume=auto; across nodes when every node holds it: `memory.newest_on_every_node`)."""
        acc = self.loop.accelerator
        if not self.across_nodes:
            return from_main(acc, lambda: newest(self.memory, find(resume, self.root.parent, say), resume, say))
        return newest_on_every_node(acc, self.memory, from_main(acc, lambda: find(resume, self.root.parent, say)),
                                    resume, say)

    def owns(self, path: Path) -> bool:  # one of this run's checkpoints, on disk or in memory
        return path.resolve().parent in {self.root.resolve(), *([self.memory.resolve()] if self.memory else [])}

    def drop_memory(self) -> None:
        """Remove this run's memory checkpoints (the run ended: its state is on disk)."""
        if self.memory is not None and self.loop.accelerator.is_local_main_process:
            shutil.rmtree(self.memory, ignore_errors=True)

    def set_aside_newer(self, path: Path, say=print) -> None:
        """After resuming from `path`: checkpoints newer than it (another continuation) moved aside
        with one line, so that rotation never deletes them unsaid (`storage.set_aside_newer`)."""
        line = from_main(self.loop.accelerator, lambda: set_aside_newer(self.root, path))
        if line and self.loop.is_main_process:
            say(line)

    def load(self, path: Path) -> Resumed:
        """Put the run back as the checkpoint at `path` saved it, on every process: weights,
        optimizer, scaler, RNG states, schedule, the loop's position, history and unfinished epoch,
        and every part. Checks first that it was saved from a model of the same shapes and compile
        setting; on another number of processes, keeps the global batch (`train.saving.elastic`)."""
        loop, acc = self.loop, self.loop.accelerator
        meta = json.loads((path / LOOP_FILE).read_text())
        saved, current = meta["model_shapes"], model_shapes(acc.unwrap_model(loop.model, keep_torch_compile=False))
        if saved != current:
            diff = next((k for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)), "?")
            was, now = (saved.get(diff, "absent"), current.get(diff, "absent"))
            raise ConfigError(f"checkpoint '{path}' is of a different model ({diff}: {was} saved, {now} now); "
                              f"use another output_dir")
        if meta.get("compiled", False) != is_compiled(acc, loop.model):
            raise ConfigError(f"checkpoint '{path}' was saved with compile={str(meta.get('compiled')).lower()}; "
                              f"resume it with the same setting")
        position, history = meta["position"], meta["history"]
        mid_epoch = position["epoch"] > len(history)
        unfinished = unfinished_share(path, position, acc) if mid_epoch else None  # refused before anything loads
        rescaled = keep_global_batch(position, acc, path, mid_epoch)  # on another process count
        across = needs_reshard(acc, path)  # written sharded and resumed whole, or the other way
        if across and self.adapted:
            raise ConfigError(f"checkpoint '{path}' of adapters was written {'sharded' if written_sharded(path) else 'whole'}"
                              f"; resume it with {position['processes']} process(es) and the same strategy")
        if across:
            load_across_layouts(acc, loop.model, loop.optimizer, path)
        elif self.adapted:  # the checkpoint holds the adapters; the frozen base is the one built now
            if meta.get("frozen") != self.frozen():
                raise ConfigError(f"checkpoint '{path}' was trained on other frozen weights than the model built now "
                                  f"(another pretrained folder or seed); resume with the same pretrained and seed, "
                                  f"or use another output_dir")
            acc.load_state(str(path), strict=False)
        else:
            acc.load_state(str(path))
        if loop.scheduler is not None and (path / SCHEDULER_FILE).is_file():
            loop.scheduler.load_state_dict(torch.load(path / SCHEDULER_FILE, weights_only=True))
        parts = torch.load(path / CALLBACKS_FILE, weights_only=True, map_location="cpu") \
            if (path / CALLBACKS_FILE).is_file() else {}
        for key, state in parts.items():
            if key in self.parts:
                self.parts[key].load_state_dict(state)
        average = self.parts.get("ema")
        if average is not None and "ema" not in parts:  # written by a run that did not average its weights
            average.follow_weights()
            if acc.is_main_process:
                print(f"note: {path} holds no averaged weights (ema was off): the averages start from its weights",
                      flush=True)
        parts.pop("ema", None)  # in the averages now: not kept a second time for the run's whole length
        # load_state just put back this rank's RNG states as they were at the save; starting the
        # epoch's data iterator draws from them, so the loop puts them back once it has started
        loop.load_state_dict({"position": position, "history": history, "unfinished": unfinished},
                             rng=capture_rng() if mid_epoch else None)
        return Resumed(path, position, history, parts, rescaled)

    def latest(self) -> Optional[Path]:
        return latest(self.root)

    # events
    def on_train_begin(self):
        if self.loop.is_main_process and self.root.is_dir():
            for stale in [*self.root.glob(".tmp-*"), *self.root.glob(".old-*")]:  # a process killed while saving
                shutil.rmtree(stale, ignore_errors=True)
        if self.loop.accelerator.is_local_main_process:
            remove_stale(self.root)  # a killed run's staged copies in this node's memory
        self.loop.accelerator.wait_for_everyone()

    def on_train_batch_end(self, batch):
        loop = self.loop
        # the last batch of an epoch is saved by on_epoch_end, after validation
        if not loop.stepped or loop.last_round or not loop.saves_mid_epoch:
            return
        if self.every_steps and loop.step % self.every_steps == 0:
            self.save()
        elif self.memory_every and loop.step % self.memory_every == 0:
            self.save(background=False, root=self.memory)

    def on_epoch_end(self, epoch, row):
        value = row.get(self.monitor) if self.monitor else None
        better = self.rule.improved(value, self.best)
        if better:
            self.best = value
        self.save(best=better)

    def on_interrupt(self, epoch, batch):
        just_saved = self.last_saved is not None and self.last_saved.name == f"step-{self.loop.step:08d}"
        if not just_saved and self.loop.saves_mid_epoch:  # else the last epoch end stays `latest`
            self.save(background=False)
        self.wait_for_write()  # the process ends next: its checkpoint complete
        self.drop_memory()  # the state is on disk

    def on_train_end(self):
        self.wait_for_write()  # a run's final files are complete when it ends
        self.drop_memory()

    # saving
    def save(self, best: bool = False, background: Optional[bool] = None, root: Optional[Path] = None) -> Path:
        """Write a checkpoint of the loop as it is now (every process calls this at the same
        batch). Returns its path. `background` (default: the manager's setting): return once the
        state is staged in memory, the write finishing in the background (`train.saving.background`).
        `root`: another checkpoints folder (the memory checkpoints': the newest kept alone, written
        the same way, so a restart verifies and loads it as a disk one)."""
        self.wait_for_write()  # at most one write in flight
        loop, acc = self.loop, self.loop.accelerator
        loop.check_status()  # a non-finite loss raises here: the last good checkpoint stays `latest`
        in_memory = root is not None
        if in_memory and not self._room_to_stage(root):
            self.memory_every = None  # said once: disk checkpoints only from here on
            return self.root
        root = root or self.root
        state = loop.state_dict()
        name = f"step-{loop.step:08d}"
        final, tmp = root / name, root / f".tmp-{name}"
        background = self.background if background is None else background
        staged = staging_folder(self.root, name) if background and self._room_to_stage() else None
        error = None
        writer = acc.is_local_main_process if in_memory else acc.is_main_process  # each node its memory's copy
        try:
            if writer:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            if staged is not None and acc.is_local_main_process:
                shutil.rmtree(staged, ignore_errors=True)
                staged.mkdir(parents=True)
        except OSError as e:
            error = e
        made = all_ok(acc, error is None)  # the folders; then every process's files
        if made:
            try:
                with quick_serialization() if staged is not None else contextlib.nullcontext():
                    self._write(staged or tmp, state, on_each_node=in_memory)
                if staged is None and not acc.is_main_process and not in_memory:  # through this node's client
                    fsync_own_files(tmp, acc.process_index)
            except (Exception, checkpoint_exception()) as e:  # torch.save, safetensors: a full disk is a RuntimeError
                error = e
        if not all_ok(acc, error is None):  # every process learns that one of them failed
            reason = why_save_failed(error, staged or tmp)
            for folder in (tmp if writer else None, staged):
                if folder is not None:
                    shutil.rmtree(folder, ignore_errors=True)
            if staged is not None and made:  # the staging in memory failed, not the checkpoints folder
                raise WriteError(f"could not stage checkpoint {name} in memory ({staged}: {reason}); "
                                 f"{free_space(staged.parent)} there; give it more room, or checkpoint.async_save=false")
            raise self._failed("save", name, reason)
        if staged is not None:
            self._pending = BackgroundWrite(staged, tmp, acc.process_index, acc.num_processes, acc.is_main_process,
                                            lambda checked: commit(self.root, tmp, final, best, self.keep_last, checked),
                                            self.timeout_s)
            self._pending.name = name
            self.last_saved = final
            return final
        try:
            if writer:
                commit(root, tmp, final, best and not in_memory, 1 if in_memory else self.keep_last)
        except OSError as e:
            error = e
            shutil.rmtree(tmp, ignore_errors=True)
        if not all_ok(acc, error is None):  # nobody reads or moves on before the checkpoint is complete
            raise self._failed("complete", name, why_save_failed(error, tmp))
        if not in_memory:
            self.last_saved = final
        return final

    def settle(self, timeout_s: float = 30.0, ended: bool = True) -> None:
        """On an error's way out: a write in flight gets a bounded time to finish (no collective: the
        other processes may be gone), and this node's staged copy is removed from memory; so are the
        memory checkpoints when the run `ended` on purpose (a crash leaves them to its restart)."""
        if ended:
            self.drop_memory()
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.thread.join(timeout_s)
            if self.loop.accelerator.is_local_main_process:
                shutil.rmtree(pending.staged, ignore_errors=True)

    def wait_for_write(self) -> None:
        """Until the checkpoint being written in the background is on disk and `latest` (every
        process calls it at the same batch); a failed write ends the run as a failed save does."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        acc = self.loop.accelerator
        error = pending.wait()
        ok = all_ok(acc, error is None)  # every process's copy has finished
        if acc.is_local_main_process:
            shutil.rmtree(pending.staged, ignore_errors=True)
        if not ok:
            if acc.is_main_process:
                shutil.rmtree(pending.tmp, ignore_errors=True)
            raise self._failed("save", pending.name, error or "another process could not write its part")

    def _failed(self, what: str, name: str, reason: str) -> WriteError:
        return WriteError(f"could not {what} checkpoint {name} {'to' if what == 'save' else 'in'} {self.root}/ "
                          f"({reason}); {free_space(self.root)}; make room and run the same command again to resume")

    def _room_to_stage(self, memory: Optional[Path] = None) -> bool:
        """`background.room_to_stage` for this run's next checkpoint; the note that there was none, once."""
        size = checkpoint_size(self.last_saved, self.loop.model)
        room = room_to_stage(self.loop.accelerator, size, memory, said=self._said_no_room)
        self._said_no_room = self._said_no_room or (not room and memory is None)
        return room

    def _write(self, tmp: Path, state: dict, on_each_node: bool = False) -> None:
        """Every process writes its files into `tmp`; `on_each_node`: the shared ones by each node's
        first process (a memory checkpoint: `tmp` is in each node's own memory), else by process 0."""
        loop, acc = self.loop, self.loop.accelerator
        config = acc.project_configuration
        config.save_on_each_node, before = on_each_node, config.save_on_each_node
        try:
            acc.save_state(str(tmp))  # every rank: its RNG file, and its shards when the state is sharded
        finally:
            config.save_on_each_node = before
        if state["unfinished"] is not None:  # this rank's share of the unfinished epoch
            torch.save(state["unfinished"], tmp / f"rank-{acc.process_index}.pt")
        if acc.is_local_main_process if on_each_node else acc.is_main_process:
            model = acc.unwrap_model(loop.model, keep_torch_compile=False)
            meta = {"format": FORMAT, "position": state["position"], "history": state["history"],
                    "model_shapes": model_shapes(model), "compiled": is_compiled(acc, loop.model),
                    **({"frozen": self.frozen()} if self.adapted else {})}
            (tmp / LOOP_FILE).write_text(json.dumps(meta, indent=1))
            if loop.scheduler is not None:
                torch.save(loop.scheduler.state_dict(), tmp / SCHEDULER_FILE)
            torch.save({key: part.state_dict() for key, part in self.parts.items()}, tmp / CALLBACKS_FILE)
