"""Warm restarts: each restart's training processes forked from a template that has imported
torch, accelerate and the project once for the whole job, so that a restart pays the state's load
and a step, not an interpreter and `import torch` (about 6 s a process, measured: torch,
torch._dynamo, accelerate, the process group).

How it goes (one node; a job across nodes restarts with its launcher, as before):
1. Once every training process of an attempt has made its first step, each has written what
   started it (`rank-N.start`: executable, arguments, working folder, environment, loaded modules).
2. The first time, the supervisor starts the job's template (`train.supervision.template`) with
   the processes' common environment: it imports the libraries they had loaded (not the user's
   own modules) and waits. Its imports cost a few seconds of CPU once per job, not per process and
   restart: on a machine whose cores all train, CPU taken from the training.
3. For each restart to come the supervisor starts a standby launcher (`python -m
   train.supervision.standby`, standard library only) holding the next attempt's processes: each
   one's environment as it was, with the next attempt's supervisor folder and restart number and a
   fresh port for its rendezvous (a new store: re-initialising gloo on an old one hangs, pytorch
   55967).
4. On a restart the supervisor says "go": the launcher hands the processes and its own output
   streams to the template, which forks them. The launcher is now the attempt's launcher: it
   passes stop signals on, writes the exit codes the template reports (`exits.json`) for the
   supervisor, and exits 0 when all finished, else 1. The supervisor then readies the next standby.

A standby whose template is not ready, or none at all (a first attempt that failed before its
first step, several nodes, processes started differently or whose environments differ beyond
their ranks), leaves the restart to the launcher command.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from train.supervision.reports import DIR_ENV, MAX_ENV, RESTART_ENV, alive, die_with_parent

# what the template imports of the modules the training processes had loaded: libraries whose
# import runs no user code (the project included); `torch._dynamo` is pulled in by the first
# optimizer step, 1.6-1.9 s of a cold start
PRELOAD = ("torch", "accelerate", "numpy", "safetensors", "yaml", "train", "transformers", "peft",
           "torchvision", "pandas", "tqdm", "PIL")
EXTRA = ("torch._dynamo", "train.fronts.script", "train.service.run",
         # for rank 0's drawing helper, which a fork of the template forks rather than starting a
         # fresh interpreter that imports them (train.callbacks.plots.DRAWING_MODULES)
         "matplotlib.figure", "matplotlib.backends.backend_agg")
# torchrun's own: its agent's store (gone with it: TORCHELASTIC_USE_AGENT_STORE would have the
# processes wait for it), its error file, its run id
DROP_ENV = "TORCHELASTIC_"
# what may differ between the processes' environments: who each one is
RANK_KEYS = ("RANK", "LOCAL_RANK", "GROUP_RANK", "ROLE_RANK")
TEMPLATE = Path(__file__).with_name("template.py")
FORKED = "forked.json"  # in a standby's folder: the pids of the processes forked for it
NOT_FORKED = "not-forked"  # in a standby's folder: why the template did not fork its processes
HANDOFF_TIMEOUT_S = 10.0  # the template's answer, or the attempt starts cold
UNSAFE_TO_FORK = 3  # the template's exit code when its imports left it unsafe to fork (it says why)


def read_starts(folder: Path, records: list[dict], known: dict) -> dict:
    """{rank: what started it} for this attempt's processes once all have written it; else `known`."""
    if known and len(known) == len(records) and all(known.get(r["rank"], {}).get("pid") == r["pid"] for r in records):
        return known
    found = {}
    for r in records:
        try:
            found[r["rank"]] = {**json.loads((folder / f"rank-{r['rank']}.start").read_text()), "pid": r["pid"]}
        except (OSError, ValueError):
            return known
    return found or known


def usable(starts: dict) -> str:
    """Why a warm restart cannot start these processes ("" when it can)."""
    if not starts:
        return "no process made its first step"
    envs = [s["env"] for s in starts.values()]
    if spans_nodes(starts):
        return "the job spans nodes"
    if len({(s["executable"], tuple(s["argv"]), s["cwd"]) for s in starts.values()}) > 1:
        return "the processes were started with different commands"
    if any(common(envs) | {k for k in e if per_process(k)} != set(e) for e in envs):
        return "the processes' environments differ beyond their ranks"
    if not all(os.access(s["executable"], os.X_OK) for s in starts.values()):
        return "the processes' executable is gone"
    return ""


def spans_nodes(starts: dict) -> bool:
    """Whether the processes that wrote these start records are part of a job across nodes."""
    return any(s["env"].get("WORLD_SIZE", "1") != s["env"].get("LOCAL_WORLD_SIZE", s["env"].get("WORLD_SIZE", "1"))
               for s in starts.values())


def per_process(key: str) -> bool:
    """Whether an environment variable names its process (its rank, torchrun's per-worker ones)."""
    return key in RANK_KEYS or key.startswith(DROP_ENV)


def common(envs: list[dict]) -> set:
    """The variables every environment holds with the same value."""
    return {k for k, v in envs[0].items() if all(e.get(k) == v for e in envs[1:])}


class Template:
    """The supervisor's handle on the job's template process (`train.supervision.template`):
    started once, with the processes' common environment, less what names a rank, torchrun's
    variables and the supervisor's (its imports must not record it as a training process)."""

    def __init__(self, starts: dict):
        start = starts[min(starts)]
        envs = [s["env"] for s in starts.values()]
        env = {k: envs[0][k] for k in common(envs) if not per_process(k) and k not in (DIR_ENV, RESTART_ENV, MAX_ENV)}
        modules = sorted({m for s in starts.values() for m in s["modules"] if m.split(".")[0] in PRELOAD} | set(EXTRA))
        self.folder = Path(tempfile.mkdtemp(prefix="train-template-"))
        self.socket = self.folder / "socket"
        self.proc = subprocess.Popen([start["executable"], "-u", str(TEMPLATE), *start["argv"]], env=env,
                                     cwd=start["cwd"], stdin=subprocess.PIPE, text=True, start_new_session=True,
                                     preexec_fn=as_template)
        self.proc.stdin.write(json.dumps({"modules": modules, "socket": str(self.socket)}) + "\n")
        self.proc.stdin.close()

    def ready(self) -> bool:
        return (self.folder / "ready").exists() and self.proc.poll() is None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        """End it (at the job's end, or when it could not fork: a process it forked that still runs
        gets SIGTERM, its parent-death signal) and remove its folder."""
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


class Standby:
    """The supervisor's handle on the next attempt: its launcher, started in advance, holding the
    processes the template forks on "go"."""

    def __init__(self, starts: dict, restart: int, max_restarts: int, pipes: dict, template: Template):
        self.template = template
        self.folder = Path(tempfile.mkdtemp(prefix="train-supervisor-"))  # the next attempt's
        port = str(free_port())
        ranks = []
        for rank, start in sorted(starts.items()):
            env = {k: v for k, v in start["env"].items() if not k.startswith(DROP_ENV)}
            env.update({DIR_ENV: str(self.folder), RESTART_ENV: str(restart), MAX_ENV: str(max_restarts)})
            if "MASTER_PORT" in env:
                env["MASTER_PORT"] = port
            ranks.append({"rank": rank, "local_rank": int(env.get("LOCAL_RANK", rank)), "env": env,
                          "cwd": start["cwd"], "argv": start["argv"]})
        env = {k: v for k, v in os.environ.items() if k not in (DIR_ENV, RESTART_ENV, MAX_ENV)}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TEMPLATE.parents[2]), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen([sys.executable, "-m", "train.supervision.standby"], env=env,
                                     stdin=subprocess.PIPE, start_new_session=True, preexec_fn=as_launcher,
                                     **{**pipes, "text": True, "errors": "replace"})
        self.proc.stdin.write(json.dumps({"ranks": ranks, "socket": str(template.socket),
                                          "exits": str(self.folder / "exits.json")}) + "\n")
        self.proc.stdin.flush()

    def ready(self, wait_s: float) -> bool:
        """Whether the template has imported what it needs (waiting at most `wait_s`), all alive."""
        deadline = time.monotonic() + wait_s
        while not self.template.ready() and self.template.alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.template.ready() and self.proc.poll() is None

    def start(self):
        """Have the template fork the processes; returns the launcher process of the attempt."""
        self.proc.stdin.write("go\n")
        self.proc.stdin.close()
        return self.proc

    def close(self) -> None:
        """End the launcher if it still runs (the template then kills the processes it forked for
        it: the attempt is over), and remove its folder."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
        self.proc.wait()
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        # its output pipes are left to the supervisor's relay threads: closing one that a relay still
        # reads (a writer left somewhere) would wait for that read forever
        shutil.rmtree(self.folder, ignore_errors=True)


class WarmRestarts:
    """The supervisor's warm restarts: the job's template, and the next restart's standby."""

    def __init__(self, on: bool, say):
        self.on, self.say = on, say
        self.template: Template | None = None  # forks the processes: the job's libraries imported once
        self.standby: Standby | None = None  # the next restart's launcher

    def wanted(self) -> bool:
        return self.on and self.standby is None

    def prepare(self, starts: dict, restart: int, max_restarts: int, pipes: dict) -> None:
        """Restart `restart`'s standby, and the template if there is none (or it died)."""
        if self.template is not None and self.template.proc.poll() == UNSAFE_TO_FORK:
            self.on = False  # it said why: restarts start cold
            return
        try:
            if self.template is None or not self.template.alive():
                self.template and self.template.close()
                self.template = Template(starts)
            self.standby = Standby(starts, restart, max_restarts, pipes, self.template)
        except (OSError, ValueError, KeyError) as e:  # restarts stay cold; the job goes on
            self.on = False
            self.say(f"no warm standby for restarts ({e}); a restart starts cold")

    def take(self, restart: int) -> Standby | None:
        """The standby for this restart when it is ready (waiting for a template still importing:
        sooner than a cold start), else None (the launcher command starts the attempt)."""
        standby, self.standby = self.standby, None
        if restart and standby is not None and standby.ready(wait_s=30):
            return standby
        if standby is not None:
            standby.close()
        return None

    def finish(self, standby: Standby) -> bool:
        """Close the attempt's standby; whether the template forked its processes (if not: said, and
        the template ended first, with anything it holds of the launcher's; a new one serves the
        next restart)."""
        try:
            why = (standby.folder / NOT_FORKED).read_text()
        except OSError:
            why = ""
        if why:
            self.say(f"{why}; starting them with the launcher command")
            if self.template is not None:
                self.template.close()
                self.template = None
        standby.close()
        return not why

    def close(self) -> None:
        for part in (self.standby, self.template):
            if part is not None:
                part.close()


def read_exits(folder: Path) -> tuple[dict, dict]:
    """({pid: exit code}, {pid: local rank}) a standby wrote for its processes, or empty dicts."""
    try:
        exits = json.loads((folder / "exits.json").read_text())
    except (OSError, ValueError):
        return {}, {}
    return ({int(pid): e["code"] for pid, e in exits.items()}, {int(pid): e["local_rank"] for pid, e in exits.items()})


def read_forked(folder: Path) -> set[int]:
    """The pids of the processes the template forked for this attempt (they may have no record yet)."""
    try:
        return set(json.loads((folder / FORKED).read_text()))
    except (OSError, ValueError):
        return set()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def as_template() -> None:
    """As the template: USR1 ignored (its forks inherit that, as a launcher's processes do); killed
    if the supervisor dies (its forks then get SIGTERM: they save and end)."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    die_with_parent(signal.SIGKILL)


def as_launcher() -> None:
    """As the launcher: SLURM's USR1 is for the training processes; SIGTERM if the supervisor dies."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    die_with_parent(signal.SIGTERM)


# ------------------------------------------------------------------- the standby launcher's side
def main() -> int:
    order = json.loads(sys.stdin.readline())
    pids: dict[int, int] = {}  # the attempt's processes: pid -> local rank
    exits: dict[int, dict] = {}
    pending: list[int] = []  # stop signals that came before the processes did

    def pass_on(signum, frame):  # as the launcher does (SIGHUP as SIGTERM)
        signum = signal.SIGTERM if signum == signal.SIGHUP else signum
        if not pids:
            pending.append(signum)
        for pid in pids:
            if pid not in exits:
                try:
                    os.kill(pid, signum)
                except OSError:  # ended meanwhile
                    pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, pass_on)
    if sys.stdin.readline().strip() != "go":
        return 0  # the supervisor did not need it
    folder = Path(order["exits"]).parent
    template = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        (folder / "order.json").write_text(json.dumps({"ranks": order["ranks"]}))
        template.settimeout(HANDOFF_TIMEOUT_S)  # it serves one attempt at a time: the last one's must be gone
        template.connect(order["socket"])
        if template.recv(64) != b"listening":  # its streams are not left in a queue the template never reads
            raise OSError("it did not answer")
        socket.send_fds(template, [json.dumps({"order": str(folder / "order.json")}).encode()], [1, 2])
        forked = template.recv(1 << 16)
        template.settimeout(None)
        if not forked:
            raise OSError("it forked none")
    except OSError as e:  # the supervisor starts the attempt with the launcher command instead
        (folder / NOT_FORKED).write_text(f"the warm template could not fork the processes ({e or 'timed out'})")
        return 1
    pids.update({int(pid): rank for pid, rank in json.loads(forked)["pids"].items()})
    (folder / "forked.tmp").write_text(json.dumps(list(pids)))
    os.replace(folder / "forked.tmp", folder / FORKED)
    for signum in pending:
        pass_on(signum, None)
    while len(exits) < len(pids):
        message = template.recv(1 << 16)
        if not message:  # the template is gone (killed): its processes end with it (parent-death SIGTERM)
            while any(alive(pid) for pid in pids if pid not in exits):
                time.sleep(0.05)
            exits.update({pid: {"code": -signal.SIGKILL, "local_rank": rank} for pid, rank in pids.items()
                          if pid not in exits})
        else:
            ended = json.loads(message)
            exits[ended["pid"]] = {"code": ended["code"], "local_rank": pids[ended["pid"]]}
        tmp = order["exits"] + ".tmp"
        Path(tmp).write_text(json.dumps(exits))
        os.replace(tmp, order["exits"])
    return 0 if all(e["code"] == 0 for e in exits.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
