"""`profile:` (train.callbacks.profiler): a trace per process that loads as Chrome's trace format,
the top operations printed, and weights equal to an unprofiled run's."""

import json

import pytest
import torch
from safetensors.torch import load_file

import train
from conftest import MNIST, flat, launch_two
from tests.helpers.small_runs import blobs, small_model


def test_profiled_batches_leave_a_trace_and_a_summary_and_the_same_weights(tmp_path, capsys):
    plain = small_model()
    plain.fit(1, blobs(), output_dir=str(tmp_path / "plain"), progress=False)
    profiled = small_model()
    profiled.compile(loss_func=torch.nn.CrossEntropyLoss(), optimizer=torch.optim.Adam(profiled.parameters(), lr=0.01),
                     metrics_dict={"accuracy": train.metrics.accuracy}, profile={"steps": 3, "start_step": 2})
    capsys.readouterr()
    profiled.fit(1, blobs(), output_dir=str(tmp_path / "profiled"), progress=False)
    said = capsys.readouterr().out
    trace = json.loads((tmp_path / "profiled" / "profile" / "rank0.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert "aten::addmm" in names  # batches 2-4: the profiler's steps 1-3 (it counts from 0; step 0 warmed up)
    assert sorted(n for n in names if n.startswith("ProfilerStep#")) == ["ProfilerStep#1", "ProfilerStep#2", "ProfilerStep#3"]
    assert "profile: top operations by self CPU time, per batch over 3 batch(es)" in said
    assert [line for line in said.splitlines() if len(line) > 100] == []
    assert "aten::addmm" in (tmp_path / "profiled" / "profile" / "summary-rank0.txt").read_text()
    assert "profile: batches 2-4 of each process through torch's profiler" in flat(said)
    mine, theirs = (load_file(str(tmp_path / f / "model.safetensors")) for f in ("profiled", "plain"))
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


@pytest.mark.parametrize("profile, error", [({"step": 3}, "profile has no key 'step'; did you mean 'steps'"),
                                            ({"steps": -1}, "profile.steps must be a whole number >= 0"),
                                            ({"steps": 2, "start_step": 0}, "profile.start_step must be"),
                                            ({"steps": 2, "activities": ["gpu"]}, "profile.activities must be")])
def test_profile_mistakes_are_one_line(profile, error):
    with pytest.raises(train.UserError, match=error.replace("(", r"\(").replace(")", r"\)")):
        small_model().compile(loss_func=torch.nn.CrossEntropyLoss(), profile=profile)


@pytest.mark.slow
def test_two_processes_each_write_a_trace_and_train_as_unprofiled(tmp_path):
    from conftest import ROOT

    common = [ROOT / "train" / "main.py", "epochs=1", "data.train_size=2048", "data.val_size=0", f"data.path={MNIST}",
              "progress=false"]
    plain = launch_two(*common, f"output_dir={tmp_path / 'plain'}")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    done = launch_two(*common, "profile.steps=5", "profile.record_shapes=true", f"output_dir={tmp_path / 'profiled'}")
    assert done.returncode == 0, done.stdout + done.stderr
    for rank in (0, 1):
        trace = json.loads((tmp_path / "profiled" / "profile" / f"rank{rank}.json").read_text())
        steps = {e["name"] for e in trace["traceEvents"] if e.get("name", "").startswith("ProfilerStep#")}
        assert len(steps) == 5 and any(e.get("name") == "aten::convolution" for e in trace["traceEvents"])
        assert (tmp_path / "profiled" / "profile" / f"summary-rank{rank}.txt").is_file()
    assert done.stdout.count("profile: top operations by self CPU time, per batch over 5 batch(es)") == 1
    assert "aten::convolution" in done.stdout or "aten::mkldnn_convolution" in done.stdout
    mine, theirs = (load_file(str(tmp_path / f / "model.safetensors")) for f in ("profiled", "plain"))
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
