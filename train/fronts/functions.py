"""The function front, in the tutorial's style: the model carries `optimizer`, `loss_func`,
`metric_func` and `metric_name`; `train_step`, `valid_step` and `train_model` drive the one loop
through a `train.Run` built from those attributes."""

from __future__ import annotations

from typing import Optional

from train.base.errors import UserError


def _run_for(model, **options):
    """The `Run` behind `model`, built on first use from the attributes the model carries."""
    from train.config.options import run_options
    from train.service.run import Run

    run = model.__dict__.get("_functional_run")
    if run is None or not run.uses(model.optimizer) or options:
        missing = [a for a in ("optimizer", "loss_func", "metric_func", "metric_name") if not hasattr(model, a)]
        if missing:
            raise UserError(f"the model needs the attribute(s) {', '.join(missing)} "
                            f"(e.g. model.optimizer = torch.optim.Adam(model.parameters()))")
        previous = run.state() if run is not None else None
        run = Run(model, model.optimizer, model.loss_func, {model.metric_name: model.metric_func},
                  options=run_options("train_model()", name=type(model).__name__, **options))
        if previous is not None:
            run.continue_from(previous)
        model.__dict__["_functional_run"] = run
    return run


def _metric(run, preds, labels) -> float:
    name, fn = next(iter(run.metrics.items()))
    return float(fn(preds, labels))


def train_step(model, features, labels) -> tuple[float, float]:
    """One optimizer step on one batch; returns (loss, metric) as numbers."""
    run = _run_for(model)
    loss, preds, labels = run.train_step(features, labels)
    return float(loss), _metric(run, preds, labels)


def valid_step(model, features, labels) -> tuple[float, float]:
    """Loss and metric of one batch without training; returns (loss, metric) as numbers."""
    run = _run_for(model)
    loss, preds, labels = run.eval_step(features, labels)
    return float(loss), _metric(run, preds, labels)


def train_model(model, epochs: int, dl_train, dl_valid=None, log_step_freq: int = 100, *,
                seed: Optional[int] = None, **options):
    """Train until epoch `epochs`; prints step lines and an epoch table; returns the history
    DataFrame. Keyword options are those of `Model.fit` (`output_dir=...` and the rest), and so
    are its errors: with `output_dir`, one `error:` line and the exit code; without, the exception."""
    from train.base.errors import RunError

    try:
        run = _run_for(model, log_step_freq=log_step_freq, step_lines=True, seed=seed, **options)
        return run.fit(epochs, dl_train, dl_valid).frame()
    except RunError as e:
        if options.get("output_dir") is None:
            raise
        from train.supervision.reports import ended_by

        raise SystemExit(ended_by(e)) from None
