"""How a run ends other than by finishing, as each process sees it: what it records for the
supervisor, the one line it says, and when it may leave.

- preempted or interrupted (`Preempted`): a checkpoint was saved; the main process names it, every
  process ends with exit 75 (130 for Ctrl-C), without a traceback;
- on purpose (`RunError`: a bad input, a NaN loss, a full disk): the last good checkpoint is named;
  in a run that owns its process (an output folder) the main process says the line here, while
  every process is still alive;
- a crash: a collective that lost another process is one line and exit 1 (the supervisor restarts
  the job); anything else is a bug and keeps its traceback.

On an end every process agreed on, none leaves before the main process has said why: a launcher
(torchrun) ends the remaining processes as soon as one exits with an error, and would cut the main
process off before its line (seen: a full disk's exit 74 without its `error:` line, 2 runs in 12)."""

from __future__ import annotations

import sys
from typing import Optional

from train.base.errors import NonFiniteLoss, Preempted, RunError, WriteError, describe, first_line, report
from train.base.text import wrapped
from train.supervision.reports import record_exit


def where(run) -> dict:
    loop = run.loop
    return {"epoch": loop.epoch, "batch": loop.batch, "step": loop.step, "output_dir": run.options.output_dir}


def where_to_resume(run, preempted: bool) -> str:
    if run.checkpoint is None:
        return "no checkpoint (checkpoints are off)"
    latest = run.checkpoint.latest()
    if latest is None:
        return "no checkpoint was saved yet"
    if preempted:
        return f"checkpoint {latest} saved; run the same command again to resume"
    return f"the last good checkpoint is {latest} (latest)"


def preempted(run, error: Preempted) -> SystemExit:
    """The process's end after a stop signal (raise what it returns)."""
    if run.is_main_process and error.label == "preempted":
        say(wrapped(f"preempted: {error}; {where_to_resume(run, preempted=True)}"))
    record_exit(error.exit_code, str(error), final=True, **where(run))
    leave_together(run)
    return SystemExit(error.exit_code)


def on_purpose(run, error: RunError) -> None:
    """A `RunError` on its way out (re-raise it after): the write in flight settled, the checkpoint
    to resume from added to a NaN's or a full disk's message, the line said where the run owns its
    process and every process agreed on it."""
    if run.checkpoint is not None:  # a write in flight: finished if it can be, before naming `latest`
        run.checkpoint.settle()
        if isinstance(error, (NonFiniteLoss, WriteError)):
            error.args = (f"{error}; {where_to_resume(run, preempted=False)}",)
    record_exit(error.exit_code, str(error), final=True, **where(run))
    if run.options.output_dir is not None and error.same_on_every_process:
        report(error)
        leave_together(run)


def crashed(run, error: BaseException) -> Optional[SystemExit]:
    """A crash on its way out: a SystemExit to raise in its place when another process was lost
    (not a bug here: one line, and the supervisor restarts the job), else None (re-raise it)."""
    if run.checkpoint is not None:
        run.checkpoint.settle(ended=False)  # its memory checkpoint kept for the restart
    contact = lost_contact(error)
    at = where(run)
    record_exit(1, contact or describe(error), kind="lost contact" if contact else "exception", **at)
    if not contact:
        return None
    say(f"[rank {run.accelerator.process_index}] error: {contact} at epoch {at['epoch']} batch {at['batch']}")
    return SystemExit(1)


def leave_together(run) -> None:
    """Every process waits for the others here (see the module's docstring)."""
    try:
        run.accelerator.wait_for_everyone()
    except Exception:  # a process already gone: nothing left to wait for
        pass


def lost_contact(error: BaseException) -> Optional[str]:
    """A collective that failed because another process died or stalled, in words (else None)."""
    from train.supervision.reports import lost_contact as is_lost

    if is_lost(error):
        detail = first_line(error).split(". ")[0]  # gloo's advice off
        return f"lost contact with another process ({detail})"
    return None


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
