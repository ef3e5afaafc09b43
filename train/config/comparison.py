"""Whether a folder's saved run is the run asked for now: the settings a resume may change, and
the one-line refusal that names the others. Before anything of the folder is loaded or written."""

from __future__ import annotations

from pathlib import Path

from train.base.errors import ConfigError
from train.base.text import flatten
from train.config.loading import all_keys, build_config
from train.config.schema import Config

# Keys a resumed run may change: how long it trains, how it is watched and tracked, how the data is
# fed and where it lies, how the model is spread over the processes and how checkpoints are written
# (the same steps either way: train.saving.reshard). Any other difference means another run (model,
# data, optimizer, loss, ...).
RESUMABLE_CHANGES = ("epochs", "output_dir", "resume", "preflight", "progress", "log_step_freq", "log_every_s",
                     "collective_timeout_s", "tracking.", "checkpoint.keep_last", "checkpoint.every_steps", "checkpoint.memory_every_steps", "callbacks",
                     "sweep.", "data.path", "data.num_workers", "data.pin_memory", "data.prefetch_factor",
                     "peft.merged_export", "strategy", "fsdp.", "checkpoint.async_save",
                     "device.", "profile.")


def dotted(config: dict) -> dict:
    """A config as `{dotted key: value}`; the values of dict-typed keys (model_args, data.args) whole."""
    known = all_keys()
    return flatten(config, keep_whole=lambda key: known.get(key, {}).get("type") is dict)


# Keys whose null means "the run works it out" (data.num_classes: the model's output width): a value
# saved by an earlier run is no difference (the checkpoint's own check of the model's shapes applies).
WORKED_OUT_WHEN_NULL = ("data.num_classes",)


def config_differences(saved: dict, new: dict) -> list[str]:
    """`key: saved -> new` for each setting that differs and that a resume may not change."""
    before, after = dotted(saved), dotted(new)
    changed = []
    for key in sorted(set(before) | set(after)):
        if any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE_CHANGES):
            continue
        if key in WORKED_OUT_WHEN_NULL and after.get(key) is None:
            continue
        if before.get(key) != after.get(key):
            changed.append(f"{key}: {before.get(key)!r} there, {after.get(key)!r} now")
    return changed


def refuse_other_run(out, cfg: Config) -> None:
    """A `ConfigError` naming the differences when the run saved in the folder `out` (its
    config.yaml) has other settings than `cfg`, before anything is loaded or written."""
    import yaml

    saved = Path(out) / "config.yaml"
    if not saved.is_file():
        return
    try:
        before = yaml.safe_load(saved.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return  # unreadable: the checkpoint's own checks (the model's shapes) still apply
    try:  # with today's defaults filled in, so that a key added since is no difference
        before = build_config(dotted(before)).to_dict()
    except Exception:  # a config of another version: compare what it says
        pass
    changed = config_differences(before, cfg.to_dict())
    if before.get("scheduler", {}).get("name") == "onecycle" and before.get("epochs") != cfg.epochs:
        changed.append(f"epochs: {before.get('epochs')!r} there, {cfg.epochs!r} now (a one-cycle schedule is "
                       f"planned for its epochs)")
    if changed:
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise ConfigError(f"output_dir {out} holds a run with other settings ({'; '.join(changed[:3])}{more}); use "
                          f"another output_dir (only epochs, logging, tracking, callbacks and data loading may "
                          f"change on a resume)")
