"""Side-by-side benchmark: the same work (the tutorial CNN, batch 128, Adam, one epoch of MNIST
training samples, no validation) for each contender, in interleaved rounds (A B C A B C ...);
the median samples/s of each and its ratio to the floor. Also import time, time to the first
optimizer step, peak memory of one and two processes, and the two-process throughput.

    python bench/run.py [--samples 12800] [--rounds 3] [--json FILE] [--skip-jobs]

Peers (torchkeras, Lightning) run when installed: `pip install -e .[bench]`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MNIST = ROOT / "data" / "mnist"
PY = sys.executable

import torch  # noqa: E402
from torch import nn  # noqa: E402


def tutorial_net() -> nn.Module:
    from train.fronts.models import TutorialCNN

    torch.manual_seed(0)
    return TutorialCNN()


class Work:
    """The shared inputs: normalised training tensors on the device, and loaders over them."""

    def __init__(self, samples: int, device: torch.device, tmp: Path):
        import train
        from train.data.loaders import make_loaders

        self.samples, self.device, self.tmp = samples, device, tmp
        self.cfg = train.load_config(None, [f"data.train_size={samples}", "data.val_size=0",
                                            f"data.path={MNIST}", "batch_size=128"])
        self.loaders = make_loaders(self.cfg, device, seed=0)
        ds = self.loaders.train.dataset
        self.x, self.y = ds.__getitems__(list(range(len(ds))))  # normalised float32, on the device
        self.tv_root = tmp / "torchvision"  # torchvision's offline layout for the tutorial pipeline
        raw = self.tv_root / "MNIST" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        for f in MNIST.glob("*.gz"):
            (raw / f.name[:-3]).write_bytes(gzip.decompress(f.read_bytes()))

    def tensor_loader(self):
        """A plain DataLoader over the in-memory tensors, for the peers."""
        from torch.utils.data import DataLoader, TensorDataset

        return DataLoader(TensorDataset(self.x, self.y), batch_size=128, shuffle=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------- contenders
def floor(work: Work) -> float:
    """A hand-written loop over tensors already on the device: no framework, no data loader."""
    net = tutorial_net().to(work.device)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    sync(work.device)
    start = time.perf_counter()
    perm = torch.randperm(work.samples, device=work.device)
    for i in range(0, work.samples, 128):
        idx = perm[i:i + 128]
        loss = loss_fn(net(work.x[idx]), work.y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(work.device)
    return work.samples / (time.perf_counter() - start)


def tutorial(work: Work) -> float:
    """The tutorial as written: torchvision MNIST + ToTensor + DataLoader(num_workers=4), the
    script-style loop reading loss and metric back every step."""
    import torchvision
    from torch.utils.data import DataLoader, Subset
    from torchvision import transforms

    ds = torchvision.datasets.MNIST(root=str(work.tv_root), train=True, download=False,
                                    transform=transforms.Compose([transforms.ToTensor()]))
    dl_train = DataLoader(Subset(ds, range(work.samples)), batch_size=128, shuffle=True, num_workers=4)
    net = tutorial_net().to(work.device)
    loss_func = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(params=net.parameters(), lr=0.01)

    def metric_func(y_pred, y_true):
        return (torch.argmax(nn.functional.softmax(y_pred, dim=1).data, dim=1) == y_true).float().mean()

    net.train()
    start = time.perf_counter()
    loss_sum = metric_sum = 0.0
    for step, (features, labels) in enumerate(dl_train, 1):
        features, labels = features.to(work.device), labels.to(work.device)
        optimizer.zero_grad()
        predictions = net(features)
        loss = loss_func(predictions, labels)
        metric = metric_func(predictions, labels)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item()
        metric_sum += metric.item()
    sync(work.device)
    return work.samples / (time.perf_counter() - start)


def floor_graphed(work: Work) -> float:
    """The floor's step captured whole in one CUDA graph, by hand (torch's whole-network recipe:
    3 warm-up steps on a side stream, `capturable` Adam, then copy a batch in and replay)."""
    net = tutorial_net().to(work.device)
    opt = torch.optim.Adam(net.parameters(), lr=0.01, capturable=True)
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    sync(work.device)
    start = time.perf_counter()
    perm = torch.randperm(work.samples, device=work.device)
    batches = [perm[i:i + 128] for i in range(0, work.samples - 127, 128)]  # whole batches only
    static_x, static_y = work.x[batches[0]].clone(), work.y[batches[0]].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for idx in batches[:3]:
            static_x.copy_(work.x[idx]), static_y.copy_(work.y[idx])
            loss_fn(net(static_x), static_y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss_fn(net(static_x), static_y).backward()
        opt.step()
    for idx in batches[3:]:
        torch.index_select(work.x, 0, idx, out=static_x), torch.index_select(work.y, 0, idx, out=static_y)
        graph.replay()
    sync(work.device)
    return 128 * len(batches) / (time.perf_counter() - start)


def project_fit(work: Work, **step_options) -> float:
    """This project's class front: `Model.fit` for one epoch (timed around the whole call)."""
    import contextlib
    import io

    import train

    model = train.Model(tutorial_net())
    model.compile(loss_func=nn.CrossEntropyLoss(), optimizer=torch.optim.Adam(model.parameters(), lr=0.01),
                  metrics_dict={"accuracy": train.metrics.accuracy}, **step_options)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        model.fit(1, work.loaders.train)
    sync(work.device)
    return work.samples / (time.perf_counter() - start)


def project_script(work: Work) -> float:
    """This project's script in a subprocess, read from its own timer around the epoch."""
    import pandas as pd

    out = Path(tempfile.mkdtemp(dir=work.tmp))
    subprocess.run([PY, str(ROOT / "train" / "main.py"), "epochs=1", f"data.train_size={work.samples}",
                    "data.val_size=0", "scheduler.name=none", "progress=false", f"output_dir={out}"],
                   check=True, capture_output=True, cwd=ROOT)
    return float(pd.read_csv(out / "history.csv")["samples_per_s"].iloc[0])


def torchkeras_fit(work: Work) -> float:
    import contextlib
    import io

    import torchkeras

    net = tutorial_net()
    model = torchkeras.KerasModel(net, loss_fn=nn.CrossEntropyLoss(), metrics_dict={},
                                  optimizer=torch.optim.Adam(net.parameters(), lr=0.01))
    dl = work.tensor_loader()
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        model.fit(train_data=dl, val_data=None, epochs=1, ckpt_path=str(work.tmp / "tk.pt"), plot=False,
                  monitor="train_loss", cpu=work.device.type == "cpu")
    sync(work.device)
    return work.samples / (time.perf_counter() - start)


def lightning_fit(work: Work) -> float:
    import logging

    import lightning as L

    logging.getLogger("lightning").setLevel(logging.ERROR)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net, self.loss_fn = tutorial_net(), nn.CrossEntropyLoss()

        def training_step(self, batch, _):
            x, y = batch
            return self.loss_fn(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.01)

    trainer = L.Trainer(max_epochs=1, accelerator="gpu" if work.device.type == "cuda" else "cpu", devices=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    dl = work.tensor_loader()
    start = time.perf_counter()
    trainer.fit(Module(), dl)
    sync(work.device)
    return work.samples / (time.perf_counter() - start)


CONTENDERS = {"floor": floor, "tutorial as written": tutorial, "project fit": project_fit,
              "project script": project_script, "torchkeras": torchkeras_fit, "lightning": lightning_fit,
              "floor, graphed": floor_graphed, "project fit, graphs": lambda work: project_fit(work, graphs=True)}
PEERS = {"torchkeras": "torchkeras", "lightning": "lightning"}
ON_CUDA = ("floor, graphed", "project fit, graphs")  # CUDA graphs: nothing to compare on a CPU


def available(name: str) -> bool:
    if name in ON_CUDA:
        return torch.cuda.is_available()
    if name not in PEERS:
        return True
    import importlib.util

    return importlib.util.find_spec(PEERS[name]) is not None


# ---------------------------------------------------------------------- process-level figures
def wall(cmd, env=None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT, env=env)
    return time.perf_counter() - start


def import_times(reps: int) -> dict:
    rows = {"import train": [], "import accelerate": []}
    for _ in range(reps):  # interleaved, so drift hits both alike
        rows["import train"].append(wall([PY, "-c", "import train"]))
        rows["import accelerate"].append(wall([PY, "-c", "import accelerate"]))
    return {k: statistics.median(v) for k, v in rows.items()}


def job_records(out: Path, world: int) -> list[dict]:
    return [json.loads(Path(f"{out}.rank{r}").read_text()) for r in range(world)]


def first_step(tmp: Path, reps: int) -> dict:
    """Seconds from launching the main job to its first optimizer step, against the wall time of
    an empty script launched the same way (`python FILE`)."""
    empty = tmp / "empty.py"
    empty.write_text("")
    firsts, empties, floors = [], [], []
    for i in range(reps):
        out = tmp / f"first{i}.json"
        env = dict(os.environ, BENCH_STOP_AFTER_FIRST_STEP="1")
        launched = time.time()
        subprocess.run([PY, str(ROOT / "bench" / "job.py"), str(out), "progress=false",
                        f"output_dir={tmp / f'first{i}'}"], check=True, capture_output=True, cwd=ROOT, env=env)
        firsts.append(job_records(out, 1)[0]["first_step"] - launched)
        empties.append(wall([PY, str(empty)]))
        launched = time.time()
        out = subprocess.run([PY, str(ROOT / "bench" / "floor_first_step.py")], check=True, capture_output=True,
                             text=True, cwd=ROOT).stdout
        floors.append(json.loads(out)["first_step"] - launched)
    first, empty_s, floor_s = (statistics.median(v) for v in (firsts, empties, floors))
    return {"first_step_s": first, "empty_script_s": empty_s, "first_step_after_empty_s": first - empty_s,
            "floor_script_first_step_s": floor_s, "first_step_after_floor_script_s": first - floor_s}


SMOKE = ["epochs=1", "data.train_size=128", "data.val_size=0", "progress=false", "checkpoint.enabled=false"]


def smoke_run(tmp: Path, reps: int) -> dict:
    """Whole-process wall time of a one-batch smoke run of the script against the hand-written
    script (`bench/floor_first_step.py`: import torch, build the CNN and Adam, one step), alternated
    so that the machine's drift hits both alike."""
    script, floor = [], []
    for i in range(reps):
        script.append(wall([PY, str(ROOT / "train" / "main.py"), *SMOKE, f"output_dir={tmp / f'smoke{i}'}"]))
        floor.append(wall([PY, str(ROOT / "bench" / "floor_first_step.py")]))
    script_s, floor_s = statistics.median(script), statistics.median(floor)
    return {"smoke_run_s": script_s, "floor_script_s": floor_s, "ratio": script_s / floor_s,
            "smoke_runs_s": script, "floor_scripts_s": floor}


def memory_and_two_processes(tmp: Path, samples: int) -> dict:
    """Peak RSS of the main job in one process and in two (gloo ranks) together, and their throughput."""
    args = [f"data.train_size={samples}", "data.val_size=1001", "epochs=1", "progress=false"]
    one = tmp / "one.json"
    subprocess.run([PY, str(ROOT / "bench" / "job.py"), str(one), *args, f"output_dir={tmp / 'one'}"],
                   check=True, capture_output=True, cwd=ROOT)
    two = tmp / "two.json"
    accelerate = str(Path(PY).with_name("accelerate"))
    threads = max(1, (os.cpu_count() or 2) // 2)
    env = dict(os.environ, ACCELERATE_USE_CPU="1") if not torch.cuda.is_available() else dict(os.environ)
    subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                    "--mixed_precision", "no", "--dynamo_backend", "no", "--num_cpu_threads_per_process",
                    str(threads), str(ROOT / "bench" / "job.py"), str(two), *args, f"output_dir={tmp / 'two'}"],
                   check=True, capture_output=True, cwd=ROOT, env=env)
    r1, r2 = job_records(one, 1), job_records(two, 2)
    rss1, rss2 = r1[0]["peak_rss_mb"], sum(r["peak_rss_mb"] for r in r2)
    return {"rss_one_process_mb": rss1, "rss_two_processes_mb": rss2, "memory_ratio_two_to_one": rss2 / rss1,
            "samples_per_s_one_process": r1[0]["samples_per_s"], "samples_per_s_two_processes": r2[0]["samples_per_s"]}


# ------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=12800, help="training samples per epoch")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--only", nargs="*", help="contenders to run (default: all available)")
    parser.add_argument("--skip-jobs", action="store_true", help="skip import/first-step/memory figures "
                        "(repeated 2 x rounds - 1 times, the first step `rounds` times)")
    parser.add_argument("--smoke-only", type=int, metavar="REPS",
                        help="only the start-up figure: REPS alternated smoke runs and hand-written scripts")
    args = parser.parse_args(argv)
    if args.smoke_only:
        with tempfile.TemporaryDirectory() as tmp_name:
            result = smoke_run(Path(tmp_name), args.smoke_only)
        print(f"smoke run {result['smoke_run_s']:.2f} s, hand-written script {result['floor_script_s']:.2f} s "
              f"(medians of {args.smoke_only}): ratio {result['ratio']:.3f}")
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        return 0

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    wanted = args.only or list(CONTENDERS)
    names = [n for n in wanted if available(n)]
    skipped = [n for n in wanted if n not in names and n not in ON_CUDA]  # peers that are not installed
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        work = Work(args.samples, device, tmp)
        runs: dict[str, list[float]] = {n: [] for n in names}
        for _ in range(args.rounds):
            for name in names:
                runs[name].append(CONTENDERS[name](work))
        medians = {n: statistics.median(v) for n, v in runs.items()}
        base = medians.get("floor")
        results = {
            "machine": {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor()
                        or platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
                        "threads": torch.get_num_threads()},
            "samples": args.samples, "rounds": args.rounds, "samples_per_s": runs, "median": medians,
            "ratio_to_floor": {n: m / base for n, m in medians.items()} if base else {},
            "skipped": skipped,
        }
        if "project fit" in medians:
            results["project_fit_ratio_to"] = {n: medians["project fit"] / m for n, m in medians.items()
                                               if n != "project fit"}
        if not args.skip_jobs:
            reps = 2 * args.rounds - 1  # 5 for the default 3 rounds
            results["import_s"] = import_times(reps)
            results["import_ratio_train_to_accelerate"] = (results["import_s"]["import train"]
                                                           / results["import_s"]["import accelerate"])
            results["first_step"] = first_step(tmp, args.rounds)
            results["smoke_run"] = smoke_run(tmp, reps)
            results["processes"] = memory_and_two_processes(tmp, min(args.samples, 12800))

    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def print_table(r: dict) -> None:
    print(f"device: {r['machine']['device']} ({r['machine']['cpus']} CPUs, {r['machine']['threads']} torch threads), "
          f"{r['samples']} samples, {r['rounds']} rounds, median")
    print(f"{'contender':<22}{'samples/s':>12}{'x floor':>10}{'fit x it':>10}")
    for name, median in r["median"].items():
        ratio = r["ratio_to_floor"].get(name, float("nan"))
        fit_vs = r.get("project_fit_ratio_to", {}).get(name)
        print(f"{name:<22}{median:>12.0f}{ratio:>10.3f}{(f'{fit_vs:.3f}' if fit_vs else ''):>10}")
    for name in r["skipped"]:
        print(f"{name:<22}{'not installed (pip install -e .[bench])':>32}")
    if "import_s" in r:
        i = r["import_s"]
        print(f"import train {i['import train']:.2f} s, import accelerate {i['import accelerate']:.2f} s "
              f"(ratio {r['import_ratio_train_to_accelerate']:.2f})")
        f = r["first_step"]
        print(f"first optimizer step {f['first_step_s']:.2f} s after launch; empty script {f['empty_script_s']:.2f} s "
              f"(difference {f['first_step_after_empty_s']:.2f} s); a hand-written torch script's first step "
              f"{f['floor_script_first_step_s']:.2f} s (difference {f['first_step_after_floor_script_s']:.2f} s)")
        m = r["smoke_run"]
        print(f"smoke run of the script {m['smoke_run_s']:.2f} s, hand-written script {m['floor_script_s']:.2f} s "
              f"(ratio {m['ratio']:.3f})")
        p = r["processes"]
        print(f"peak RSS: one process {p['rss_one_process_mb']:.0f} MB, two processes {p['rss_two_processes_mb']:.0f} MB "
              f"(ratio {p['memory_ratio_two_to_one']:.2f}); samples/s one process "
              f"{p['samples_per_s_one_process']:.0f}, two processes {p['samples_per_s_two_processes']:.0f}")


if __name__ == "__main__":
    sys.exit(main())
