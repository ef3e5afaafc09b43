"""Where the loop is, saved and put back: the loop's part of a checkpoint (its position, history
and this process's sums of an unfinished epoch) and how an interrupted epoch continues at its next
batch with the draws it would have made. A part of `train.engine.loop.Loop` (a mixin: the same
object), kept in its own file; the checkpoint manager is the only caller of `state_dict` and
`load_state_dict`."""

from __future__ import annotations

from typing import Optional

from train.base.errors import DataError
from train.data.rng import restore_rng
from train.data.streams import stream_name
from train.engine.devices import all_ok
from train.engine.history import History
from train.engine.rounds import batch_fingerprint, set_epoch, skip_stream


class Position:
    def _continue_unfinished(self, dl):
        """For an epoch a checkpoint interrupted: the loader without its done batches, the sums so
        far, and a function that puts back the RNG states once the loader's iterator has started
        (starting it may draw from the global RNG; the uninterrupted run drew that at the epoch's
        start, so that dropout masks continue as they would have)."""
        unfinished, self._unfinished = self._unfinished, None
        if unfinished is None or unfinished["epoch"] != self.epoch:
            return dl, None
        self.batch = unfinished["batch"]
        if self.stream_epoch:  # read again and dropped: a stream has no index to skip to
            stream = unfinished.get("stream") or {}
            self._consumed = stream.get("consumed", self.batch)
            resumed, self._last_batch, problem = skip_stream(dl, self._consumed, stream.get("fingerprint"), self.split)
            if not all_ok(self.accelerator, problem is None):  # every process stops, with the same line
                problem = problem or "gave other samples when read again on another process: it cannot resume exactly"
                raise DataError(f"stream {stream_name(dl.dataset)} {problem}")
        else:
            resumed = self.accelerator.skip_first_batches(dl, self.batch)
            set_epoch(resumed, self.epoch - 1)
        self._sums.load_state(unfinished["sums"])
        self.skipped_steps, self._epoch_lr = unfinished["skipped_steps"], unfinished["lr"]
        rng = unfinished.get("rng")
        return resumed, (lambda: restore_rng(rng)) if rng is not None else None


    def state_dict(self) -> dict:
        """Where the loop is. `position` and `history` are the same on every process; `unfinished`
        (this process's share of an epoch not yet in the history: its sums so far) is not."""
        state = {"position": {"epoch": self.epoch, "batch": self.batch, "step": self.step,
                              "samples_seen": self.samples_seen, "processes": self.accelerator.num_processes,
                              # with `processes` and the batch size, the global batch a resume keeps
                              "accumulation": self.accelerator.gradient_accumulation_steps},
                 "history": [dict(r) for r in self.history.rows], "unfinished": None}
        if self.epoch > len(self.history) and self._sums is not None:
            state["unfinished"] = {"sums": self._sums.state(), "skipped_steps": self.skipped_steps,
                                   "lr": self._epoch_lr}
            if getattr(self, "stream_epoch", False):  # where to read the stream again from
                last = batch_fingerprint(self._last_batch) if self._last_batch is not None else None
                state["unfinished"]["stream"] = {"consumed": self._consumed, "fingerprint": last}
        return state

    def load_state_dict(self, state: dict, rng: Optional[dict] = None) -> None:
        """Continue from `state_dict()`'s output. For an unfinished epoch, the next `fit` continues
        it at its next batch, putting back the RNG states `rng` once that epoch's data starts."""
        position = state["position"]
        self.history = History(state["history"])
        self.step, self.samples_seen = position["step"], position["samples_seen"]
        self.epoch, self.batch = position["epoch"], position["batch"]
        self._unfinished = None
        if state.get("unfinished") is not None and self.epoch > len(self.history):
            self._unfinished = {**state["unfinished"], "epoch": self.epoch, "batch": self.batch, "rng": rng}

