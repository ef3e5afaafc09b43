"""What the job's failures cost: the processes' beats (`reports.beat`) read by the supervisor,
turned into the time each failure lost and the job's goodput, and the phases of each restart.

A failure's loss is the time from the failed attempt's last progress until a later attempt got
back to the same optimizer step (less the steps it had gone beyond it by then, at its own pace):
the redone steps, the detection, the teardown, the new processes' start-up and the state's load.
An attempt that failed before its first step lost all of its time. Losses that overlap (a crash
while a restart starts up) count once. Goodput is the share of the job's wall time not lost.
Only the standard library: the supervisor imports this."""

from __future__ import annotations

import json
import time
from pathlib import Path

from train.base.files import atomic_write_text
from train.supervision.reports import read_beat


class Attempt:
    """One attempt's progress as the supervisor saw it: (wall time, step) of the slowest process's
    latest beat at each look, and the times of its phases."""

    def __init__(self, number: int):
        self.number, self.started = number, time.time()
        self.beats: list[tuple[float, int]] = []  # (time, step), step never decreasing
        self.last: dict[int, tuple] = {}  # rank -> its latest beat (time, step, epoch, batch)
        self.failed_at: float | None = None  # when the supervisor saw the failure
        self.gone_at: float | None = None  # when its last process was gone
        self.phases: dict[str, float] = {}
        self.warm = False  # forked by a warm standby

    def look(self, folder: Path, ranks: int) -> None:
        """Read the processes' beats; a new point once every process has beaten."""
        if self.failed_at is not None:  # what a stalled process does once continued for its stacks is lost
            return
        for path in folder.glob("rank-*.beat"):
            beat = read_beat(path)
            if beat is not None:
                self.last[int(path.stem.split("-")[1])] = beat
        if self.last and len(self.last) >= ranks:
            step, t = min((b[1], b[0]) for b in self.last.values())  # the slowest process's
            if not self.beats or step > self.beats[-1][1]:
                self.beats.append((t, step))

    def idle(self, rank: int, now: float) -> tuple[float, int, int] | None:
        """(seconds since its last beat, epoch, batch) of a rank, or None before its first."""
        beat = self.last.get(rank)
        return (now - beat[0], beat[2], beat[3]) if beat else None

    def timing(self, records: list[dict], starts: dict) -> None:
        """The phases of a (re)started attempt, from its processes' records: all processes training
        (ready to load), all loaded, all past their first beat."""
        def latest(values):
            values = [v for v in values if v]
            return max(values) - self.started if values and len(values) == len(records) else None

        for name, values in (("processes started", [r.get("training_at") for r in records]),
                             ("state loaded", [r.get("ready_at") for r in records]),
                             ("first step", [s.get("first_beat_at") for s in starts.values()])):
            if name not in self.phases and records and (value := latest(values)) is not None:
                self.phases[name] = round(value, 2)


def regained_at(step: int, later: list[Attempt]) -> float | None:
    """When a later attempt got back to `step`, less the time it spent beyond it by then."""
    for attempt in later:
        for i, (t, s) in enumerate(attempt.beats):
            if s >= step:
                if i and s > step:  # overshoot: went past `step` between two looks, at this pace
                    t0, s0 = attempt.beats[i - 1]
                    t -= (t - t0) * (s - step) / (s - s0)
                return t
    return None


def losses(attempts: list[Attempt], ended_at: float) -> tuple[float, list[float]]:
    """(the time lost, counted once where losses overlap; each failure's own loss)."""
    spans = []
    for k, attempt in enumerate(attempts[:-1]):
        if attempt.beats:
            t, step = attempt.beats[-1]
            back = regained_at(step, attempts[k + 1:])
            spans.append((t, back if back is not None else ended_at))
        else:  # failed before its first step: all of it
            spans.append((attempt.started, attempt.gone_at or attempt.failed_at or attempt.started))
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        start = max(start, reach)
        if end > start:
            total += end - start
            reach = end
    return total, [max(0.0, end - start) for start, end in spans]


def summary(attempts: list[Attempt], started: float, ended_at: float, whys: list[str], stacks: list) -> dict:
    """The figures of a job that survived failures, as written beside its history."""
    lost, each = losses(attempts, ended_at)
    wall = ended_at - started
    return {"failures": len(attempts) - 1, "wall_s": round(wall, 2), "lost_s": round(lost, 2),
            "lost_s_per_failure": round(lost / max(1, len(attempts) - 1), 2),
            "goodput": round(1 - lost / wall, 3) if wall > 0 else None,
            "restarts": [{"why": why, "lost_s": round(loss, 2), "stacks": stack, "warm": nxt.warm,
                          "detection_s": round(a.failed_at - a.beats[-1][0], 2) if a.failed_at and a.beats else None,
                          "teardown_s": round(a.gone_at - a.failed_at, 2) if a.gone_at and a.failed_at else None,
                          **{f"{name.replace(' ', '_')}_s": value for name, value in nxt.phases.items()}}
                         for why, loss, stack, a, nxt in zip(whys, each, stacks, attempts, attempts[1:])]}


def report(figures: dict, output_dirs: list[str]) -> str:
    """Write the figures beside the history (`failures.json`); returns the line that says them."""
    if output_dirs:
        try:
            atomic_write_text(Path(output_dirs[0]) / "failures.json", json.dumps(figures, indent=1) + "\n")
        except OSError:
            pass
    n = figures["failures"]
    return (f"finished after {n} failure{'s' * (n != 1)}; {figures['lost_s_per_failure']:.1f} s lost per failure; "
            f"goodput {figures['goodput']:.2f}")
