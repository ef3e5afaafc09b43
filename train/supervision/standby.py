"""Warm restarts: the next attempt's training processes started in advance, while the job trains,
each waiting with torch, accelerate and the project imported, so that a restart pays the state's
load and a step, not an interpreter and `import torch` (about 6 s a process, measured: torch,
torch._dynamo, accelerate, the process group).

How it goes (one node; a job across nodes restarts with its launcher, as before):
1. Once every training process of an attempt has made its first step, each has written what
   started it (`rank-N.start`: executable, arguments, working folder, environment, loaded modules).
2. The supervisor then starts a standby launcher (`python -m train.supervision.standby`, standard
   library only) with the next attempt's processes: each one's environment as it was, with the
   next attempt's supervisor folder and restart number and a fresh port for its rendezvous (a new
   store: re-initialising gloo on an old one hangs, pytorch 55967). It starts each process as
   `python -u train/supervision/warm_start.py SCRIPT ARGS...`, which imports the libraries the
   processes had loaded (torch, accelerate, the project, ...; not the user's own modules, whose
   import-time code runs where it always ran), says it is ready and waits.
3. On a restart the supervisor says "go": each process runs its script as `python -u SCRIPT ARGS`
   would. The standby launcher is now the attempt's launcher: it waits for its processes, passes
   stop signals on, writes their exit codes for the supervisor (`exits.json`) and exits 0 when all
   finished, else 1. The supervisor makes a new standby once the restarted processes train.

No process is forked: each is a fresh interpreter started in advance, so nothing of a parent's
threads or CUDA state is inherited, and its command line and environment are a training
process's own. A standby that is not ready or has lost a process, or none at all (a first attempt
that failed before its first step, several nodes, another executable), leaves the restart to the
launcher command. The standby's processes use memory and, while they import, CPU beside the
training: a few seconds of CPU per process, once per attempt.
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

from train.supervision.processes import children
from train.supervision.reports import DIR_ENV, MAX_ENV, RESTART_ENV, alive, die_with_parent

# what a standby process imports of the modules the training processes had loaded: libraries whose
# import runs no user code (the project included); `torch._dynamo` is pulled in by the first
# optimizer step, 1.6-1.9 s of a cold start
PRELOAD = ("torch", "accelerate", "numpy", "safetensors", "yaml", "train", "transformers", "peft",
           "torchvision", "pandas", "tqdm", "PIL")
EXTRA = ("torch._dynamo", "train.fronts.script", "train.service.run")
# torchrun's own: its agent's store (gone with it: TORCHELASTIC_USE_AGENT_STORE would have the
# processes wait for it), its error file, its run id
DROP_ENV = "TORCHELASTIC_"
WARM_START = Path(__file__).with_name("warm_start.py")


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
    if any(e.get("WORLD_SIZE", "1") != e.get("LOCAL_WORLD_SIZE", e.get("WORLD_SIZE", "1")) for e in envs):
        return "the job spans nodes"
    if not all(os.access(s["executable"], os.X_OK) for s in starts.values()):
        return "the processes' executable is gone"
    return ""


class Standby:
    """The supervisor's handle on the next attempt's processes, started in advance."""

    def __init__(self, starts: dict, restart: int, max_restarts: int, pipes: dict):
        self.folder = Path(tempfile.mkdtemp(prefix="train-supervisor-"))  # the next attempt's
        port = str(free_port())
        modules = sorted({m for s in starts.values() for m in s["modules"] if m.split(".")[0] in PRELOAD} | set(EXTRA))
        ranks = []
        for rank, start in sorted(starts.items()):
            env = {k: v for k, v in start["env"].items() if not k.startswith(DROP_ENV)}
            env.update({DIR_ENV: str(self.folder), RESTART_ENV: str(restart), MAX_ENV: str(max_restarts)})
            if "MASTER_PORT" in env:
                env["MASTER_PORT"] = port
            ranks.append({"rank": rank, "env": env, "cwd": start["cwd"],
                          "command": [start["executable"], "-u", str(WARM_START), *start["argv"]]})
        env = {k: v for k, v in os.environ.items() if k not in (DIR_ENV, RESTART_ENV, MAX_ENV)}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(WARM_START.parents[2]), env.get("PYTHONPATH")]))
        self.ranks = [r["rank"] for r in ranks]
        self.proc = subprocess.Popen([sys.executable, "-m", "train.supervision.standby"], env=env,
                                     stdin=subprocess.PIPE, start_new_session=True, preexec_fn=as_launcher,
                                     **{**pipes, "text": True, "errors": "replace"})
        self.proc.stdin.write(json.dumps({"ranks": ranks, "modules": modules,
                                          "exits": str(self.folder / "exits.json")}) + "\n")
        self.proc.stdin.flush()

    def ready(self, wait_s: float) -> bool:
        """Whether every process has imported what it needs (waiting at most `wait_s`), all alive."""
        deadline = time.monotonic() + wait_s
        while not self._ready() and self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return self._ready() and self.proc.poll() is None and \
            sum(alive(pid) for pid in children(self.proc.pid)) == len(self.ranks)

    def _ready(self) -> bool:
        return all((self.folder / f"ready-{rank}").exists() for rank in self.ranks)

    def start(self):
        """Let the processes run their script; returns the launcher process of the attempt."""
        (self.folder / "started").touch()  # from now on they are the job's processes (tests tell them apart)
        self.proc.stdin.write("go\n")
        self.proc.stdin.close()
        return self.proc

    def close(self) -> None:
        """End it if it still runs, and remove its folder."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                stream and stream.close()
            except OSError:
                pass
        shutil.rmtree(self.folder, ignore_errors=True)


def read_exits(folder: Path) -> tuple[dict, dict]:
    """({pid: exit code}, {pid: local rank}) a standby wrote for its processes, or empty dicts."""
    try:
        exits = json.loads((folder / "exits.json").read_text())
    except (OSError, ValueError):
        return {}, {}
    return ({int(pid): e["code"] for pid, e in exits.items()}, {int(pid): e["local_rank"] for pid, e in exits.items()})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def as_launcher() -> None:
    """As the launcher: SLURM's USR1 is for the training processes; SIGTERM if the supervisor dies."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    die_with_parent(signal.SIGTERM)


# ------------------------------------------------------------------- the standby launcher's side
def main() -> int:
    order = json.loads(sys.stdin.readline())
    procs = {}
    for rank in order["ranks"]:
        proc = subprocess.Popen(rank["command"], env=rank["env"], cwd=rank["cwd"], stdin=subprocess.PIPE, text=True)
        proc.stdin.write(json.dumps(order["modules"]) + "\n")
        proc.stdin.flush()
        procs[proc] = int(rank["env"].get("LOCAL_RANK", rank["rank"]))
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # passed on, as the launcher does
        signal.signal(signum, lambda s, f: [p.send_signal(signal.SIGTERM if s == signal.SIGHUP else s)
                                            for p in procs if p.poll() is None])
    go = sys.stdin.readline()
    for proc in procs:
        try:
            proc.stdin.write(go)  # "" (the supervisor is done with it): the processes end quietly
            proc.stdin.close()
        except OSError:
            pass
    exits = {}
    while len(exits) < len(procs):
        for proc, local_rank in procs.items():
            if proc.pid not in exits and proc.poll() is not None:
                exits[proc.pid] = {"code": proc.returncode, "local_rank": local_rank}
                if go:
                    tmp = order["exits"] + ".tmp"
                    Path(tmp).write_text(json.dumps(exits))
                    os.replace(tmp, order["exits"])
        time.sleep(0.05)
    return 0 if all(e["code"] == 0 for e in exits.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
