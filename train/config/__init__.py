"""The run's settings: the one schema (`schema`), YAML and overrides (`loading`), names and import
paths turned into objects (`names`), the options of a run that every front fills (`options`), and
what may change on a resume (`comparison`). Imports `train.base` only."""

from train.config.schema import Config  # noqa: F401
