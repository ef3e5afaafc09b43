"""What the README promises of `resume`: `resume=none` refuses a folder with checkpoints (one line,
exit 2, nothing changed; the script and the class front), `resume=PATH` continues from exactly that
checkpoint (an older one than `latest` too), and a mid-epoch checkpoint resumed on another number
of processes is refused in one line while an epoch-end one resumes on any number."""

import os
import subprocess

import pandas as pd
import pytest

from tests.helpers.small_runs import blobs, small_model

from conftest import MNIST, ROOT
from train.engine.history import TIMING_COLUMNS
from train.fronts.script import main

RUN = ["epochs=2", "scheduler.name=none", "data.train_size=256", "data.val_size=64", "batch_size=64", f"data.path={MNIST}", "checkpoint.every_steps=2",
       "checkpoint.keep_last=10", "progress=false"]  # 4 optimizer steps an epoch


def files_of(folder):
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_resume_none_refuses_a_folder_with_checkpoints(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*RUN, "epochs=1", f"output_dir={out}"]) == 0
    before = files_of(out)
    capsys.readouterr()
    assert main([*RUN, "resume=none", f"output_dir={out}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: output_dir '{out}' holds checkpoints of an earlier run; resume=auto continues it, or "
                   f"choose a new output_dir"], err
    assert files_of(out) == before  # nothing written


def test_the_class_fronts_resume_none_refuses_a_folder_with_checkpoints(tmp_path, capsys):
    small_model().fit(1, blobs(), output_dir=str(tmp_path), progress=False)
    before = files_of(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as ended:
        small_model().fit(2, blobs(), output_dir=str(tmp_path), resume="none", progress=False)
    assert ended.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: output_dir '{tmp_path}' holds checkpoints of an earlier run; resume=auto continues it, "
                   f"or choose a new output_dir"], err
    assert files_of(tmp_path) == before


def test_resume_from_a_named_checkpoint_continues_exactly_from_it(tmp_path, capsys):
    reference = tmp_path / "reference"
    assert main([*RUN, f"output_dir={reference}"]) == 0  # uninterrupted: steps 2, 4 (epoch 1), 6, 8 (epoch 2)
    out = tmp_path / "run"
    assert main([*RUN, "epochs=1", f"output_dir={out}"]) == 0
    capsys.readouterr()
    older = out / "checkpoints" / "step-00000002"  # mid-epoch 1, older than latest (step 4)
    assert main([*RUN, f"resume={older}", f"output_dir={tmp_path / 'again'}"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert f"resuming from {older} (epoch 1, batch 2" in said, said
    timing = TIMING_COLUMNS
    history = pd.read_csv(tmp_path / "again" / "history.csv")
    history = history.drop(columns=[c for c in timing if c in history])
    expected = pd.read_csv(reference / "history.csv")[history.columns]
    pd.testing.assert_frame_equal(history, expected, check_exact=True)


def cpu2(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / "launch" / "cpu2.sh"), *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.mark.slow
def test_a_process_count_that_cannot_keep_the_global_batch_is_refused_and_one_that_can_resumes(tmp_path):
    """A run's global batch is what a resume on another process count keeps (train.saving.elastic)."""
    one = tmp_path / "one"
    assert main([*RUN, "epochs=1", f"output_dir={one}"]) == 0  # 1 process x batch 64: a global batch of 64
    mid = one / "checkpoints" / "step-00000002"
    refused = cpu2(*RUN, f"resume={mid}", f"output_dir={tmp_path / 'two'}")
    said = [line for line in (refused.stdout + refused.stderr).splitlines() if line.strip()]
    assert refused.returncode == 2, said
    assert said == [f"error: checkpoint '{mid}' was written by 1 process(es) x accumulation 1: a global batch of 1 x "
                    f"batch_size, which 2 processes cannot share evenly; resume on a number of processes that divides 1",
                    "supervisor: exit 2 (bad input): the job ended on purpose; not restarting"
                    ], said  # one line for the job, not one a process, and no launcher's traceback
    assert not (tmp_path / "two" / "checkpoints").exists()
    # one process with accumulation 2 takes two processes' batches in each step: its run resumes on two
    accumulated = tmp_path / "accumulated"
    assert main([*RUN, "epochs=1", "gradient_accumulation_steps=2", f"output_dir={accumulated}"]) == 0
    on_two = cpu2(*RUN, "gradient_accumulation_steps=2", f"output_dir={accumulated}")
    assert on_two.returncode == 0, on_two.stdout + on_two.stderr
    said = " ".join(on_two.stdout.split())
    assert f"resuming from {accumulated}/checkpoints/step-00000002" in said, said
    assert "accumulation 1 keeps the global batch of 128 samples" in said, said
    history = pd.read_csv(accumulated / "history.csv")
    assert history["epoch"].tolist() == [1, 2] and history["loss"].notna().all()
