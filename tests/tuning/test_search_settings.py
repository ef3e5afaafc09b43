"""The parts of tuning that need no training: the search space and its one-line errors, the
objective a search takes from a config, a search folder holding another search, and the
learning-rate finder's curve arithmetic."""

import math
import signal
import subprocess

import pytest

from conftest import ROOT, need_module

DIGITS = "examples/digits/config.yaml"


@pytest.fixture
def sweep_cli(tmp_path, capsys):
    """`python -m train.sweep --config DIGITS --space <text> --trials 2 --dir tmp/search ...`, in this
    process (the fast tier starts none); its signal handlers are put back afterwards."""
    from train.tuning.search import main

    def run(space_text, *args) -> subprocess.CompletedProcess:
        space = tmp_path / "space.yaml"
        space.write_text(space_text)
        argv = ["--config", str(ROOT / DIGITS), "--space", str(space), "--trials", "2", "--dir",
                str(tmp_path / "search"), *args]
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1,
                                                           signal.SIGHUP)}
        capsys.readouterr()
        try:
            code = main(argv)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        said = capsys.readouterr()
        return subprocess.CompletedProcess(argv, code, said.out, said.err)

    return run


@pytest.mark.parametrize("space, says", [
    ("optimzer.lr: {log_uniform: [1.0e-4, 0.1]}\n", "optimzer.lr: unknown config key 'optimzer.lr'; did you mean "
                                                     "'optimizer.lr'?"),
    ("batch_size: {uniform: [32, 256]}\n", "batch_size: config key 'batch_size' expects int, got float"),
    ("optimizer.lr: {log_uniform: [0, 0.1]}\n", "optimizer.lr: a log scale needs low > 0, got [0, 0.1]"),
    ("optimizer.lr: {uniform: [0.1, 0.01]}\n", "optimizer.lr: uniform needs low < high, got [0.1, 0.01]"),
    ("model_args.hidden: {int: [16.5, 64]}\n", "model_args.hidden: int needs whole numbers"),
    ("batch_size: {choice: []}\n", "batch_size: choice needs a non-empty list of values"),
    ("optimizer.lr: 0.01\n", "optimizer.lr: expected one of log_uniform, uniform, int, choice"),
    ("optimizer.lr: {normal: [0, 1]}\n", "optimizer.lr: expected one of log_uniform, uniform, int, choice"),
    ("{}\n", "the search space is empty"),
    ("optimizer.lr: [1, 2\n", "is not valid YAML"),
])
def test_a_bad_space_is_one_line_and_exit_2_before_any_trial(tmp_path, sweep_cli, space, says):
    done = sweep_cli(space)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("error: ") and says in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "search").exists()  # nothing written


def test_a_folder_holding_another_search_is_refused_in_one_line(tmp_path, sweep_cli):
    need_module("optuna")
    from train.tuning import study

    folder = tmp_path / "search"
    folder.mkdir()
    s = study.load(folder, direction="min")
    s.set_user_attr("settings", {"config": "other.yaml", "space": ["optimizer.lr uniform [0.1, 0.2]"]})
    journal = (folder / "study.journal").read_bytes()
    done = sweep_cli("optimizer.lr: {log_uniform: [1.0e-4, 0.1]}\n")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"{folder} holds a search with other settings (config: other.yaml there" in done.stderr
    assert "space: optimizer.lr uniform [0.1, 0.2] there, optimizer.lr log_uniform [0.0001, 0.1] now" in done.stderr
    assert (folder / "study.journal").read_bytes() == journal  # refused: nothing written
    assert len(study.load(folder).get_trials()) == 0  # no trial was asked for


def test_zero_trials_is_refused_not_taken_for_the_default(tmp_path, sweep_cli):
    done = sweep_cli("optimizer.lr: {log_uniform: [1.0e-4, 0.1]}\n", "--trials", "0")
    assert done.returncode == 2 and done.stderr == "error: --trials must be > 0, got 0\n", done.stderr
    assert not (tmp_path / "search").exists()


def test_the_objective_comes_from_the_config_when_not_given():
    from train.config.loading import load_config
    from train.tuning.settings import objective_of

    assert objective_of(load_config(DIGITS)) == ("val_loss", "min")  # the checkpoint's default monitor
    assert objective_of(load_config(DIGITS, ["early_stopping.monitor=val_accuracy", "early_stopping.mode=max"])) \
        == ("val_accuracy", "max")
    assert objective_of(load_config(DIGITS, ["checkpoint.monitor=val_accuracy", "checkpoint.mode=max"])) \
        == ("val_accuracy", "max")
    assert objective_of(load_config(DIGITS, ["sweep.monitor=val_accuracy"])) == ("val_accuracy", "max")
    assert objective_of(load_config(DIGITS, ["sweep.monitor=val_mae"])) == ("val_mae", "min")
    assert objective_of(load_config(DIGITS, ["sweep.monitor=val_accuracy", "sweep.mode=min"])) == ("val_accuracy", "min")
    assert objective_of(load_config(DIGITS, ["data.args={val_fraction: 0}", "data.val_size=0"]))[0] == "loss"


def test_the_space_gives_overrides_the_config_reads_back():
    from train.config.loading import load_config
    from train.tuning.space import override, parse_space

    dims = parse_space({"optimizer.lr": {"log_uniform": [1e-4, 0.1]}, "batch_size": {"choice": [32, 64]},
                        "model_args.hidden": {"int": [16, 128], "log": True},
                        "optimizer.name": {"choice": ["adam", "sgd"]}}, "space")
    assert [d.is_log for d in dims] == [True, False, True, False]
    cfg = load_config(DIGITS, [override("optimizer.lr", 0.0012345678901234567), override("batch_size", 32),
                               override("model_args.hidden", 17), override("optimizer.name", "sgd")])
    assert (cfg.optimizer.lr, cfg.batch_size, cfg.model_args["hidden"], cfg.optimizer.name) == \
        (0.0012345678901234567, 32, 17, "sgd")
    assert dims[0].holds(0.003) and not dims[0].holds(0.5) and dims[1].holds(64) and not dims[1].holds(128)


def test_lr_find_arithmetic():
    from train.tuning.lr_find import learning_rates, smooth, suggest

    rates = learning_rates(1e-6, 1.0, 61)
    assert rates[0] == pytest.approx(1e-6) and rates[-1] == pytest.approx(1.0)
    assert all(b / a == pytest.approx(rates[1] / rates[0]) for a, b in zip(rates, rates[1:]))  # even on a log scale
    assert smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])  # bias-corrected: no pull toward 0
    # a curve flat at 1, falling fastest at 1e-3 (a logistic step in log10 rate), flat again
    curve = [1 - 0.9 / (1 + math.exp(-4 * (math.log10(r) + 3))) for r in rates]
    assert suggest(rates, curve) == pytest.approx(1e-3, rel=0.3)
    assert suggest(rates[:5], curve[:5]) is None  # too few points once the ends are left out
