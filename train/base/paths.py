"""Where things are: the project folder (the package's parent: configs/, launch/, data/ are there),
and the names inside a run's output folder that more than one layer reads."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
CONFIGS = ROOT / "configs"
DEFAULT_CONFIG = CONFIGS / "mnist.yaml"
SHIPPED_MNIST = ROOT / "data" / "mnist"
CHECKPOINTS, LATEST, BEST = "checkpoints", "latest", "best"  # <output_dir>/checkpoints/{latest,best}: pointers
