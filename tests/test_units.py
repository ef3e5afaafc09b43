"""Small pieces in-process, fast: the output folder's lock, import paths, run options, the metrics'
exactness over batches, the supervisor's reading of a launcher's output, the refusal of pickles
that would run code."""

import json
import os
import time

import pytest
import torch

from train.base.errors import ConfigError, UserError


def test_a_lock_from_another_host_blocks_while_its_heartbeat_is_fresh(tmp_path):
    from train.base.lock import STALE_S, FolderInUse, OutputLock

    (tmp_path / ".lock").write_text(json.dumps({"host": "node-3", "pid": 1234, "since": "12:04"}))
    with pytest.raises(FolderInUse, match=r"in use by pid 1234 on node-3 since 12:04"):
        OutputLock(tmp_path).acquire()
    stale = time.time() - STALE_S - 1  # node-3 died: no heartbeat for a minute
    os.utime(tmp_path / ".lock", (stale, stale))
    lock = OutputLock(tmp_path)
    lock.acquire()
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    with pytest.raises(FolderInUse, match=rf"in use by pid {os.getpid()}"):  # this host: the flock says so
        OutputLock(tmp_path).acquire()
    lock.release()
    assert not (tmp_path / ".lock").exists()


def test_import_paths_and_their_mistakes(tmp_path, monkeypatch):
    from train.config.names import resolve

    assert resolve("torch.optim:RMSprop", {}, "optimizer") is torch.optim.RMSprop
    assert resolve("torch.optim.SGD", {}, "optimizer") is torch.optim.SGD  # dots only, Hydra's way
    (tmp_path / "mine.py").write_text("def f():\n    return 3\n")
    monkeypatch.chdir(tmp_path)
    assert resolve("mine:f", {}, "data factory")() == 3  # the current folder is importable
    assert resolve(f"{tmp_path}/mine.py:f", {}, "data factory")() == 3  # so is a file path
    with pytest.raises(ConfigError, match=r"no module named 'torch.optimm'; did you mean 'torch.optim'\?"):
        resolve("torch.optimm:SGD", {}, "optimizer")
    with pytest.raises(ConfigError, match=r"module 'torch.optim' has no attribute 'Adamm'; did you mean 'Adam'\?"):
        resolve("torch.optim:Adamm", {}, "optimizer")
    (tmp_path / "broken.py").write_text("raise RuntimeError('oops')\n")
    with pytest.raises(ConfigError, match=r"importing 'broken' raised RuntimeError: oops"):
        resolve("broken:x", {}, "model")


def test_run_options_are_checked_once_in_the_core():
    from train.engine.loop import Loop
    from train.config.options import run_options

    net = torch.nn.Linear(2, 2)
    with pytest.raises(UserError, match=r"nonfinite must be one of 'stop', 'skip'; got 'skipp'"):
        Loop(net, None, torch.nn.functional.mse_loss, nonfinite="skipp")
    with pytest.raises(UserError, match=r"scheduler_interval must be one of 'epoch', 'step'; got 'epochs'"):
        Loop(net, None, torch.nn.functional.mse_loss, scheduler_interval="epochs")
    with pytest.raises(UserError, match=r"fit\(\) got an unknown option 'checkpoint_evry'; did you mean "
                                         r"'checkpoint_every'\?"):
        run_options("fit()", checkpoint_evry=3)
    with pytest.raises(UserError, match=r"keep_last must be a number > 0; got 0"):
        run_options("fit()", keep_last=0)


def test_sample_weighted_metrics_do_not_depend_on_the_batching():
    from train.engine.metrics import EpochSums, mae, mse

    g = torch.Generator().manual_seed(0)
    preds, targets = torch.randn(101, 1, generator=g), torch.randn(101, generator=g)  # (N, 1) against (N,)
    errors = preds.squeeze(1).double() - targets.double()
    whole = {"mae": errors.abs().mean().item(), "mse": errors.pow(2).mean().item()}
    for size in (1, 7, 101):
        sums = EpochSums({"mae": mae, "mse": mse}, "cpu")
        for i in range(0, 101, size):
            p, t = preds[i:i + size], targets[i:i + size]
            sums.add(torch.nn.functional.mse_loss(p.squeeze(1), t), p, t)
        result = sums.result()
        assert result["mae"] == pytest.approx(whole["mae"], abs=1e-12)
        assert result["mse"] == pytest.approx(whole["mse"], abs=1e-12)
        assert result["loss"] == pytest.approx(whole["mse"], rel=1e-6)


def test_the_supervisor_holds_back_the_launchers_traceback_and_reads_its_report():
    from train.supervision.supervisor import LauncherFilter, what_happened

    shown, filt = [], LauncherFilter()
    lines = ["epoch 1 ...\n",
             "[rank 0] error: lost contact with another process (Connection reset by peer) at epoch 2 batch 5\n",
             "E1127 02:21:13.861000 5120 torch/distributed/elastic/multiprocessing/api.py:882] failed (exitcode: -9) "
             "local_rank: 1 (pid: 5127) of binary: /venv/bin/python\n",
             "Traceback (most recent call last):\n", '  File "/venv/bin/accelerate", line 8, in <module>\n',
             "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n", "=====\n"]
    for line in lines:
        shown += filt._line(1, line)
    assert shown == lines[:2] and filt.exit_codes == {5127: -9}
    user_traceback = ["Traceback (most recent call last):\n", '  File "/work/my_script.py", line 3\n']
    assert LauncherFilter()._line(1, user_traceback[0]) == []
    records = [{"rank": 0, "pid": 5126, "code": 1, "reason": "lost contact", "epoch": 2, "batch": 5},
               {"rank": 1, "pid": 5127, "code": None}]
    assert what_happened(records, filt.exit_codes, []) == "rank 1 exited (SIGKILL) at epoch 2 batch 5"
    assert what_happened(records, {}, [1]) == "rank 1 stalled (rank 0: lost contact) at epoch 2 batch 5"
    records[1].update(code=1, reason="RuntimeError: a bug in rank 1's model")  # the cause, not its echo
    assert what_happened(records, {}, []) == "rank 1 failed (RuntimeError: a bug in rank 1's model) at epoch 2 batch 5"


def test_a_pickle_that_would_run_code_is_refused_before_it_is_loaded(tmp_path):
    from train.saving.storage import refuse_unsafe

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    torch.save({"rng": torch.get_rng_state()}, tmp_path / "fine.pt")
    refuse_unsafe(tmp_path)  # tensors and plain data pass
    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match=r"evil.pt would run code when loaded \(it imports posix.system\)"):
        refuse_unsafe(tmp_path)
    (tmp_path / "evil.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="evil.pt is not a file torch.save wrote"):
        refuse_unsafe(tmp_path)


def test_an_unexpected_error_on_the_main_process_reaches_every_process():
    from train.engine.devices import from_main, make_accelerator
    from train.base.errors import RunError

    with pytest.raises(RunError, match="ZeroDivisionError: division by zero") as caught:
        from_main(make_accelerator(), lambda: 1 / 0)
    assert caught.value.same_on_every_process


def test_saving_the_same_step_again_keeps_latest_valid(tmp_path):
    from test_checkpoint import build, loader

    from train.saving.checkpoint import Checkpoint

    loop = build()
    ck = Checkpoint(loop, tmp_path)
    loop.fit(1, loader(), callbacks=[ck])  # step-00000008 at the epoch's end
    first = (tmp_path / "step-00000008" / "manifest.json").read_text()
    ck.save()  # the same step again, as a resumed epoch that ended where it had been saved
    assert (tmp_path / "latest").read_text().strip() == "step-00000008"
    assert (tmp_path / "step-00000008" / "manifest.json").is_file()
    assert not list(tmp_path.glob(".old-*")) and not list(tmp_path.glob(".tmp-*"))
    from train.saving import storage

    assert storage.damage(tmp_path / "step-00000008") is None  # replaced whole: every file its manifest lists
    assert json.loads(first)["files"].keys() == json.loads((tmp_path / "step-00000008" / "manifest.json")
                                                           .read_text())["files"].keys()


class Counter:
    """A user's own stateful callback: its state travels in checkpoints."""

    state_key = "counter"

    def __init__(self):
        self.epochs = 0

    def on_epoch_end(self, epoch, logs):  # Keras' signature
        self.epochs += 1

    def state_dict(self):
        return {"epochs": self.epochs}

    def load_state_dict(self, state):
        self.epochs = state["epochs"]


def test_a_users_stateful_callback_is_restored_on_resume(tmp_path):
    from test_run import blobs, small_model

    first = Counter()
    small_model().fit(2, blobs(), callbacks=[first], output_dir=str(tmp_path), progress=False)
    assert first.epochs == 2
    again = Counter()
    small_model().fit(3, blobs(), callbacks=[again], output_dir=str(tmp_path), progress=False)
    assert again.epochs == 3  # 2 restored from the checkpoint, 1 trained now


def test_per_sample_draws_follow_seed_epoch_and_index_through_a_prepared_loader():
    from helpers.augmented import Noisy

    from train.data.sample_draws import SeededSamples
    from train.engine.loop import Loop, set_epoch

    data = SeededSamples(torch.utils.data.Subset(Noisy(64, 0), range(32)), seed=5)
    loop = Loop(torch.nn.Linear(64, 2), None, torch.nn.functional.cross_entropy)
    dl = loop.prepare_loader(torch.utils.data.DataLoader(data, batch_size=8, shuffle=True))

    torch.manual_seed(0)
    before = torch.rand(1)
    first = [data[i][0] for i in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(first, [data[i][0] for i in range(4)]))  # the same draws again
    torch.manual_seed(0)
    assert torch.equal(torch.rand(1), before)  # loading in this process drew nothing from its generators
    set_epoch(dl, 1)
    assert data.epoch == 1  # the data set hears the epoch although the sampler has set_epoch
    assert not torch.equal(data[0][0], first[0])  # another epoch, other draws
