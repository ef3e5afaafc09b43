"""The ways to drive a run: the script (`script`, from a config: `from_config`, `building`), the
Keras-like class (`keras`), the tutorial's functions (`functions`), and what comes after training
(`reload`, `predict`, `summary`). Thin: each builds the same objects and calls the same `Run`."""
