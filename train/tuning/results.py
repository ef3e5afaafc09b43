"""A search's results: `trials.csv` (number, values, objective, state, epochs, training time,
folder), `sweep.png`, and the summary at the end with the best values, their model and the command
that retrains them."""

from __future__ import annotations

import math
from pathlib import Path

from train.base.text import wrapped


def say(text: str) -> None:
    print(wrapped(text), flush=True)


class Results:
    def __init__(self, settings):
        self.settings = settings
        self.folder = settings.folder

    def table(self, s) -> list[dict]:
        rows = []
        for t in s.get_trials(deepcopy=False):
            if t.state.name == "WAITING":
                continue
            history = history_of(self.settings.trial_folder(t.number))
            value = t.value
            if value is None and t.intermediate_values:
                value = t.intermediate_values[max(t.intermediate_values)]
            rows.append({"number": t.number, **{d.key: t.params.get(d.key) for d in self.settings.dimensions},
                         "objective": value, "state": t.state.name, "epochs": len(history),
                         "time_s": round(sum(float(r.get("epoch_s", 0) or 0) for r in history), 2),
                         "folder": str(self.settings.trial_folder(t.number))})
        return rows

    def write_results(self, s, plot: bool = False) -> None:
        import pandas as pd

        from train.base.files import atomic_write_text
        from train.callbacks.plots import plot_sweep

        rows = self.table(s)
        if not rows:
            return
        frame = pd.DataFrame(rows).rename(columns={"objective": f"objective ({self.settings.monitor})"})
        atomic_write_text(self.folder / "trials.csv", frame.to_csv(index=False))
        if plot:
            plot_sweep(rows, [(d.key, d.is_log or spans_decades(d.choices)) for d in self.settings.dimensions],
                       self.settings.monitor, self.settings.mode, self.folder / "sweep.png")

    def summary(self, s) -> None:
        from optuna.trial import TrialState

        trials = s.get_trials(deepcopy=False)
        done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        running = sum(t.state == TrialState.RUNNING for t in trials)
        counts = f"{len(complete)} complete, {len(done) - len(complete)} pruned" + \
            (f", {running} running in other workers" if running else "")
        say(f"sweep: {len(done)} of {self.settings.trials} trials done ({counts}); {self.folder}/trials.csv, "
            f"{self.folder}/sweep.png")
        if not complete:
            return
        best = s.best_trial
        shown = " ".join(f"{k}={short(v)}" for k, v in best.params.items())
        say(f"best: trial {best.number}, {self.settings.monitor} {short(best.value)}: {shown}")
        print(f"  its model: train.load_model('{self.settings.trial_folder(best.number)}')", flush=True)
        print(f"  retrain it: {self.settings.retrain_command(best.params)}", flush=True)


def shown(value) -> str:
    """A setting as the user wrote it: a space as `key kind [low, high]; ...`, a list without brackets."""
    if isinstance(value, list):
        return "; ".join(map(str, value)) or "none"
    return str(value)


def spans_decades(choices) -> bool:
    """Numeric choices spread over two decades or more read best on a log scale."""
    numbers = [c for c in choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
    return bool(numbers) and len(numbers) == len(choices) and min(numbers) > 0 and max(numbers) / min(numbers) >= 100


def short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def history_of(folder: Path) -> list[dict]:
    """The trial's history rows (none before its first epoch)."""
    import pandas as pd

    try:
        return pd.read_csv(folder / "history.csv").to_dict("records")
    except (OSError, pd.errors.EmptyDataError):
        return []
