"""Everything that prints, plots, writes or reports during a run, each a callback: the epoch table,
history.csv, early stopping, the stop signals, the slow-data note, the tutorial's step lines,
progress, plots, tracking. Imports the engine and below."""

from train.engine.events import Callback, RunView  # noqa: F401  (train.callbacks.Callback, as before)
