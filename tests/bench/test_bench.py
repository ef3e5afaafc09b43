"""The benchmark keeps working: every contender and every job to the end, on a tiny size (speed
itself is never asserted in tests)."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # real processes, full runs: `make test-fast` leaves these out


def test_benchmark_runs_every_job_on_a_tiny_size(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--samples", "512", "--rounds", "1",
                             "--only", "floor", "tutorial as written", "project fit", "project script",
                             "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert set(data["median"]) == {"floor", "tutorial as written", "project fit", "project script"}
    # the medians and ratios follow from each round's own figure (one round here: the figure itself)
    rounds = data["samples_per_s"]
    assert all(len(v) == 1 and v[0] > 0 for v in rounds.values()), rounds
    for name, figures in rounds.items():
        assert data["median"][name] == figures[0]
        assert data["ratio_to_floor"][name] == pytest.approx(figures[0] / rounds["floor"][0], rel=1e-12)
    row = next(line.split() for line in result.stdout.splitlines() if line.startswith("project fit "))
    assert row[3] == f"{data['ratio_to_floor']['project fit']:.3f}", row  # the table says what the JSON says
    # the jobs: the probe reached the first optimizer step, the smoke runs and both process counts ran
    assert 0 < data["first_step"]["empty_script_s"] < data["first_step"]["first_step_s"]
    assert data["smoke_run"]["smoke_run_s"] > 0 and len(data["smoke_run"]["smoke_runs_s"]) == 1
    assert data["processes"]["samples_per_s_two_processes"] > 0 and data["processes"]["rss_two_processes_mb"] > 0
    for line in ("project fit", "x floor", "first optimizer step", "smoke run of the script", "peak RSS"):
        assert line in result.stdout, result.stdout
