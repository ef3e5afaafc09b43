"""The training itself: the one loop and its step (`loop`), evaluation, the checks of a real batch,
metrics and their sums, the history, token-level losses (`targets`), rounds across processes,
adapters, devices and processes, the stop check, timing, and the events callbacks hear (`events`).
Knows nothing of files, checkpoints, the run around it or the fronts."""
