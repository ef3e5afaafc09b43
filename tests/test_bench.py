"""The benchmark keeps working (tiny size; speed itself is never asserted in tests)."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # real processes, full runs: `make test-fast` leaves these out


def test_benchmark_runs_on_a_tiny_size(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--samples", "512", "--rounds", "1",
                             "--only", "floor", "tutorial as written", "project fit", "project script",
                             "--skip-jobs", "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert set(data["median"]) == {"floor", "tutorial as written", "project fit", "project script"}
    assert data["ratio_to_floor"]["floor"] == 1.0
    assert all(v > 0 for v in data["median"].values())
    assert "project fit" in result.stdout and "x floor" in result.stdout
