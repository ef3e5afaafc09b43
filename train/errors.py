"""The ways a run ends other than success, each with its exit code.

A `RunError` is reported by the script front as one line (`error: ...`) and its `exit_code`,
without a traceback unless `--debug` is given; a bug keeps its traceback. Exit codes:

  0   finished
  1   crashed (a bug: the traceback is shown), or preflight found a problem
  2   bad input: config, data, resume point, output folder (`UserError`)
  3   the loss became NaN or infinite (`NonFiniteLoss`); the last good checkpoint is kept
  75  preempted: a checkpoint was saved, run the same command again to resume (`Preempted`;
      75 is EX_TEMPFAIL in sysexits.h, "temporary failure, try again")
"""


class RunError(Exception):
    exit_code = 1
    # True when every process raises the same error at the same point (it comes from the config,
    # or the processes agreed on it through a collective): then only the main process reports it.
    same_on_every_process = False


class UserError(RunError):
    """A problem in the user's input; the message says what was wrong and how to fix it."""

    exit_code = 2


class ConfigError(UserError):
    """A bad configuration: unknown key, wrong type, invalid value, unreadable file."""

    same_on_every_process = True


class DataError(UserError):
    """Missing, corrupt or inconsistent data."""


class NonFiniteLoss(RunError):
    """The training loss became NaN or infinite (all processes agreed on it)."""

    exit_code = 3
    same_on_every_process = True


class Preempted(RunError):
    """SIGUSR1 or SIGTERM asked the run to stop; a checkpoint was saved at a step boundary."""

    exit_code = 75
    same_on_every_process = True
