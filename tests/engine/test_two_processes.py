"""Two real gloo ranks on this machine (accelerate launch), compared with one process."""

import pandas as pd
import pytest
import torch

from conftest import ROOT, launch_two, run_one

pytestmark = pytest.mark.slow  # real processes, full runs: `make test-fast` leaves these out

HELPER = ROOT / "tests" / "helpers" / "ddp_check.py"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    single = run_one(HELPER, one)
    assert single.returncode == 0, single.stderr[-3000:]
    double = launch_two(HELPER, two)
    assert double.returncode == 0, double.stderr[-3000:]
    load = lambda p: torch.load(p, weights_only=False)
    return load(one / "rank0.pt"), load(two / "rank0.pt"), load(two / "rank1.pt")


def reference(run):
    """The plain-torch scores and outputs of the run's model (tests.helpers.reference)."""
    from tests.helpers.reference import classifier_scores, mnist
    from train.fronts.models import TutorialCNN

    model = TutorialCNN()
    model.load_state_dict(run["initial"])
    x, y = mnist("test", 1001, stats_size=1024)
    with torch.no_grad():
        outputs = model.eval()(x)
    return classifier_scores(model, x, y), outputs


def test_two_processes_evaluate_exactly_like_one_and_the_reference(runs):
    single, rank0, rank1 = runs
    assert (single["world"], rank0["world"]) == (1, 2)
    assert torch.equal(single["initial"]["layers.0.weight"], rank0["initial"]["layers.0.weight"])
    expected, _ = reference(single)  # 1001 samples: process 1's last batch holds a padding duplicate
    for run in (single, rank0, rank1):
        assert run["scores"]["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-6)
        # 87/1001 summed as per-batch fractions x batch sizes: equal up to float64 rounding
        assert run["scores"]["val_accuracy"] == pytest.approx(expected["val_accuracy"], abs=1e-12)


def test_predict_returns_every_row_in_order(runs):
    single, rank0, rank1 = runs
    _, outputs = reference(single)
    assert single["preds"].shape == rank0["preds"].shape == rank1["preds"].shape == (1001, 10)
    torch.testing.assert_close(single["preds"], outputs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rank0["preds"], outputs, rtol=1e-5, atol=1e-5)
    assert torch.equal(rank0["preds"], rank1["preds"])


def test_fit_returns_the_same_history_on_both_ranks(runs):
    _, rank0, rank1 = runs
    h0, h1 = pd.DataFrame(rank0["history"]), pd.DataFrame(rank1["history"])
    pd.testing.assert_frame_equal(h0, h1)
    assert len(h0) == 1 and h0["val_accuracy"].iloc[0] > 0.25  # 8 steps per rank; chance is 0.1


def test_main_job_on_two_processes(tmp_path):
    result = launch_two(ROOT / "train" / "main.py", "data.train_size=4096", "data.val_size=1001", "epochs=1",
                        f"output_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("val_accuracy") == 1  # one table, printed by the main process only
    assert "on 2 processes on CPUs (gloo), fp32" in result.stdout
    history = pd.read_csv(tmp_path / "history.csv")
    assert history["epoch"].tolist() == [1] and history["val_accuracy"].iloc[0] > 0.5  # 16 steps a rank
