"""Where things are: the project folder (the package's parent: configs/, launch/, data/ are there),
and the names inside a run's output folder that more than one layer reads."""

import os
import tempfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
CONFIGS = ROOT / "configs"
DEFAULT_CONFIG = CONFIGS / "mnist.yaml"
SHIPPED_MNIST = ROOT / "data" / "mnist"
CHECKPOINTS, LATEST, BEST = "checkpoints", "latest", "best"  # <output_dir>/checkpoints/{latest,best}: pointers
WEIGHTS = "model.safetensors"  # a run's final weights, and a checkpoint's whole model
RAW_WEIGHTS = "model_raw.safetensors"  # with ema: the trained weights, beside the averaged ones in WEIGHTS
# inside a checkpoint, as Accelerate's save_state names them: a sharded model's and optimizer's DCP
# folders (strategy=fsdp on several processes), else a whole optimizer's file
SHARDED_MODEL, SHARDED_OPTIMIZER, OPTIMIZER_FILE = "pytorch_model_fsdp_0", "optimizer_0", "optimizer.bin"


def node_memory() -> Path:
    """This node's RAM-backed folder, for staged and memory checkpoints: `TRAIN_STAGING_DIR` (e.g. a
    node-local NVMe), else /dev/shm, else the temporary folder."""
    if os.environ.get("TRAIN_STAGING_DIR"):
        return Path(os.environ["TRAIN_STAGING_DIR"])
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def memory_checkpoints(checkpoints: str | Path) -> Path:
    """Where the memory checkpoints (`checkpoint.memory_every_steps`) of the checkpoints folder
    `checkpoints` are kept on this node: a folder of the same layout (`step-*`, `latest`)."""
    return node_memory() / f"train-memory-{zlib.crc32(str(Path(checkpoints).resolve()).encode()):08x}"
