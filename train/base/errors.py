"""The ways a run ends other than success, each with its exit code and what the code means: one
declaration, which the supervisor's lines and the README's table (checked by a test) follow.

A `RunError` is reported as one line (`error: ...`) and its `exit_code`, without a traceback
unless `--debug` is given; a bug keeps its traceback (exit 1). 74 is EX_IOERR and 75 EX_TEMPFAIL
("temporary failure, try again") in sysexits.h; 130 is 128 + SIGINT, what shells report for a
program ended by Ctrl-C."""

class RunError(Exception):
    exit_code = 1
    meaning = "crashed (a bug: the traceback is shown)"
    # True when every process raises the same error at the same point (it comes from the config,
    # or the processes agreed on it through a collective): then only the main process reports it.
    same_on_every_process = False
    label = "error"  # the word before the message
    said = False  # `report` has said its line (it says it once)


class UserError(RunError):
    """A problem in the user's input; the message says what was wrong and how to fix it."""

    exit_code = 2
    meaning = "bad input"


class ConfigError(UserError):
    """A bad configuration: unknown key, wrong type, invalid value, unreadable file."""

    same_on_every_process = True


class DataError(UserError):
    """Missing, corrupt or inconsistent data."""


class NonFiniteLoss(RunError):
    """The training loss became NaN or infinite (all processes agreed on it)."""

    exit_code = 3
    meaning = "the loss became NaN or infinite"
    same_on_every_process = True


class WriteError(RunError):
    """A checkpoint or output file could not be written (all processes agreed on it)."""

    exit_code = 74
    meaning = "an output could not be written"
    same_on_every_process = True


class Preempted(RunError):
    """SIGUSR1 or SIGTERM asked the run to stop; all processes stopped at the same batch."""

    exit_code = 75
    meaning = "preempted; a checkpoint was saved"
    same_on_every_process = True
    label = "preempted"

    def __init__(self, signal: str, epoch: int, batch: int):
        super().__init__(f"stopped by {signal} at epoch {epoch} batch {batch}")
        self.signal, self.epoch, self.batch = signal, epoch, batch


class Interrupted(Preempted):
    """Ctrl-C (SIGINT) asked the run to stop."""

    exit_code = 130
    meaning = "interrupted; a checkpoint was saved"
    label = "interrupted"


class PreflightError(UserError):
    """Preflight found a problem (its stage and the reason in one line)."""

    exit_code = 1
    meaning = "preflight found a problem"


# What each exit code means, from the classes above (0 is success): the supervisor says it
EXIT_MEANINGS = {0: "finished", **{cls.exit_code: cls.meaning for cls in (
    RunError, UserError, NonFiniteLoss, WriteError, Preempted, Interrupted)}}
DELIBERATE_MEANINGS = {**{code: m for code, m in EXIT_MEANINGS.items() if code not in (0, 1)},
                       PreflightError.exit_code: PreflightError.meaning}  # a deliberate end's words, by code


def report(error: RunError) -> None:
    """The error's one line on stderr (`error: ...`), from the main process (or from each process,
    for an error only some processes met); once: a second call says nothing."""
    import os
    import sys

    if error.said:
        return
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0 or not error.same_on_every_process:
        who = f"[rank {rank}] " if rank else ""
        print(f"{who}{error.label}: {error}", file=sys.stderr, flush=True)
    error.said = True


def first_line(error: BaseException) -> str:
    """The first line of an exception's message ("" when it has none), without the `[file.cc:12]`
    source location that torch's and gloo's C++ errors start with. For an error a loader worker
    re-raised (`Caught X in DataLoader worker process 0. Original Traceback ...`), the original's
    last line."""
    import re

    text = str(error).strip()
    if text.startswith("Caught ") and "Original Traceback" in text:
        return text.splitlines()[-1].split(": ", 1)[-1]
    return re.sub(r"^\[[^\]]*\]\s*[.:]?\s*", "", text.splitlines()[0]) if text else ""


def describe(error: BaseException) -> str:
    """`Type: first line of the message` (the type alone when the message is empty)."""
    text = first_line(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def check_choice(name: str, value, choices) -> None:
    """A one-line `UserError` unless `value` is one of `choices`."""
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
