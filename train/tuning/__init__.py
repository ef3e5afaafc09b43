"""Searches over real runs (`search`: the command, its settings, workers and claims, one trial,
the results), the Optuna study, the search space, pruning, and the learning-rate finder. Trials run
as subprocesses through the launch wrappers."""
