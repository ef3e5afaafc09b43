"""How an attempt of a supervised job ended, in words: which process failed how and where, and
whether an exception is the same as the previous attempt's (a bug, not a fault). Only the
standard library: the supervisor imports this."""

from __future__ import annotations

import signal
from pathlib import Path

from train.base.files import pointer_target
from train.base.paths import CHECKPOINTS, LATEST, memory_checkpoints
from train.supervision.reports import is_lost_contact


class Ending:
    """How an attempt ended: `code` to exit with (None: a crash worth a restart), `why` in words,
    and for a crash `failure`, the exceptions raised by the training code (`failures`), compared
    with the previous attempt's to tell a bug from a fault."""

    def __init__(self, code, why: str, records: list[dict]):
        self.code, self.why, self.records = code, why, records
        self.failure = None
        self.stacks = None  # a stalled job's stacks, kept in this file


def failures(records: list[dict], exit_codes: dict, returncode):
    """{signature: words} of every exception the training code raised, one per process that
    raised (where, what), or None for a fault (a signal, a lost or stalled peer). A process
    that failed before it could record anything and was not killed by a signal counts too: a script
    that fails at start-up fails every time. Two attempts that share a signature failed alike on
    some process: a bug, even where the other processes' words differ (one raised, the other lost
    contact; which process is first to raise may change)."""
    raised = [r for r in records if r.get("kind") == "exception" and r.get("code") and not r.get("final")
              and not is_lost_contact(str(r.get("reason", "")))]
    if raised:
        failures = {}
        for r in raised:
            reason = r.get("reason", "")
            where = f"at epoch {r['epoch']} batch {r['batch']}" if r.get("epoch") else "while starting up"
            failures.setdefault((r.get("epoch"), r.get("batch"), reason), f"rank {r['rank']} failed twice {where} "
                                                                          f"with {reason}")
        return failures
    signalled = any(code < 0 for code in exit_codes.values() if code is not None)
    if not records and not signalled:
        return {("start-up", returncode): f"the script failed twice before training started (exit {returncode})"}
    return None


def repeated(failure, previous) -> str | None:
    """The words for a failure of this attempt that the previous attempt had too, else None."""
    if not failure or not previous:
        return None
    return next((words for signature, words in failure.items() if signature in previous), None)


def what_happened(records: list[dict], exit_codes: dict[int, int], stalled: list[int], returncode=None,
                  stall_words: dict | None = None, first=(), beats: dict | None = None) -> str:
    """One phrase: which process failed how, and where the job was. `stall_words`: for a stalled
    rank, what the supervisor saw of it (`pid 1234 made no progress for 12 s at epoch 2 batch 31`);
    `first`: the pids that died first (the supervisor ended the others); `beats`: rank -> its last
    beat (time, step, epoch, batch), where the job was when no process said it."""
    if not records:  # it died before it could say anything
        killed = next((code for code in exit_codes.values() if code is not None and code < 0), None)
        if killed is not None:
            return f"a process exited ({signal.Signals(-killed).name}) while starting up"
        return f"a process failed while starting up (the launcher exited {returncode})"
    failures = [r for r in records if r.get("code") not in (None, 0)]
    # the cause before its echoes: a process that lost contact only heard of another's failure
    failed = next((r for r in failures if r.get("kind") != "lost contact"
                   and not str(r.get("reason", "")).startswith("lost contact")), failures[0] if failures else None)
    if failed is None and not any(r.get("code") is None for r in records):  # all finished, the launcher did not
        return "a process failed after training finished (the launcher exited non-zero)"
    killed = next((r for r in records if exit_codes.get(r["pid"], 0) < 0 and (not first or r["pid"] in first)), None)
    silent = next((r for r in records if r.get("code") is None and not r.get("ended")
                   and (not first or r["pid"] in first)), None)
    if stalled:
        words = (stall_words or {}).get(stalled[0])
        culprit = f"rank {stalled[0]} stalled" + (f": {words}" if words else "") + (
            f" (rank {failed['rank']}: {failed['reason']})" if failed else "")
        if words and "at epoch" in words:
            return culprit
    elif killed:
        who = killed.get("name", f"rank {killed['rank']}")
        culprit = f"{who} exited ({signal.Signals(-exit_codes[killed['pid']]).name})"
    elif silent:  # ended without a word: a signal it could not handle (SIGKILL, the OOM killer)
        culprit = f"rank {silent['rank']} died without a word (killed by a signal?)"
    else:
        culprit = f"rank {failed['rank']} failed ({failed.get('reason', 'unknown')})"
    where = next((r for r in records if r.get("epoch")), None)
    if where is None and beats:
        _, _, epoch, batch = min(beats.values(), key=lambda b: b[1])
        where = {"epoch": epoch, "batch": batch}
    return culprit + (f" at epoch {where['epoch']} batch {where['batch']}" if where else " while starting up")


def resumes_from(output_dirs: list[str], across_nodes: bool = False) -> str:
    """` from step-00000035` (or `... in memory`: a memory checkpoint newer than the disk's; across
    nodes, if every node's memory holds it): the checkpoint a restart of the job resumes from, or ""."""
    for folder in output_dirs:
        disk = pointer_target(Path(folder) / CHECKPOINTS / LATEST)
        memory = pointer_target(memory_checkpoints(Path(folder) / CHECKPOINTS) / LATEST)
        if memory is not None and (disk is None or memory.name > disk.name):
            if across_nodes:
                return f" from {memory.name} in memory if every node holds it, else {disk.name if disk else 'the start'}"
            return f" from {memory.name} in memory"
        if disk is not None:
            return f" from {disk.name}"
    return ""
