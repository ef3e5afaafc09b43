"""Whether a sharded (torch DCP) checkpoint folder can be loaded without running code from it.

torch's DCP reader unpickles the folder's `.metadata` with plain `pickle.load`, and loads each of its
"bytes" items (an optimizer's param_groups, anything not a tensor) with `torch.load(weights_only=False)`
from a slice of a `.distcp` file; only tensor items are loaded with `weights_only=True`. So a crafted
`.metadata` or bytes item in a group-writable folder would run code on resume. Checked here first,
without running anything of them: the `.metadata` pickle's opcodes are read for the globals it would
import (`pickletools`, the way `torch.serialization.get_unsafe_globals_in_checkpoint` reads a
`torch.save` file) and only DCP's own metadata classes, torch sizes and dtypes and paths are
allowed; then it is unpickled by an unpickler that can build only those, and every bytes item it
lists is checked as the other pickled files of a checkpoint are (`check_saved`).
"""

from __future__ import annotations

import io
import pickle
import pickletools
from pathlib import Path
from typing import Callable

import torch

STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}
DCP = "torch.distributed.checkpoint"
METADATA_GLOBALS = {f"{DCP}.metadata.{name}" for name in (
    "Metadata", "MetadataIndex", "ChunkStorageMetadata", "StorageMeta", "BytesStorageMetadata",
    "TensorStorageMetadata", "TensorProperties", "_MEM_FORMAT_ENCODING")} | {
    f"{DCP}.filesystem._StorageInfo", "torch.Size", "torch.serialization._get_layout", "pathlib.PosixPath",
    "pathlib.WindowsPath", "collections.OrderedDict"}


def pickle_globals(data: bytes) -> set[str]:
    """The globals a pickle would import, read from its opcodes without running it. Where an
    import's module or name is not a plain string pushed just before it, the name holds None: such a
    pickle is never allowed (fail closed)."""
    memo: dict = {}
    pushed: list = []  # what each opcode pushed, in order (a string, else None)
    found: set[str] = set()
    for op, arg, _ in pickletools.genops(data):
        name = op.name
        if name in STRING_OPS:
            pushed.append(arg)
        elif name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = pushed[-1] if pushed else None
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo.get(arg))
        elif name in ("GLOBAL", "INST"):
            found.add(arg.replace(" ", "."))
            pushed.append(None)
        elif name == "STACK_GLOBAL":
            found.add(f"{pushed[-2] if len(pushed) > 1 else None}.{pushed[-1] if pushed else None}")
            pushed.append(None)
        elif name.startswith("EXT"):
            found.add("copyreg extension registry")
            pushed.append(None)
        elif name not in ("FRAME", "PROTO", "STOP", "MARK"):
            pushed.append(None)
    return found


def _allowed(name: str) -> bool:
    if name in METADATA_GLOBALS:
        return True
    parts = name.split(".")
    return len(parts) == 2 and parts[0] == "torch" and isinstance(getattr(torch, parts[1], None), torch.dtype)


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if not _allowed(f"{module}.{name}"):
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed")
        return super().find_class(module, name)


def check_dcp_folder(metadata_file: Path, check_saved: Callable[[io.BytesIO, str], None]) -> None:
    """Raise `ValueError` saying what is wrong if `metadata_file` (a DCP folder's `.metadata`) or any
    bytes item of the folder's shards would import more than plain data; `check_saved(blob, where)`
    checks one `torch.save` blob the way the checkpoint's other pickled files are checked."""
    data = metadata_file.read_bytes()
    unsafe = sorted(name for name in pickle_globals(data) if not _allowed(name))
    if unsafe:
        raise ValueError(f"it imports {', '.join(unsafe)}")
    metadata = _MetadataUnpickler(io.BytesIO(data)).load()
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata

    # anything else makes torch's reader fail over to files that were not checked (`__0.metadata`)
    if not isinstance(metadata, Metadata) or not isinstance(metadata.state_dict_metadata, dict) \
            or not isinstance(metadata.storage_data, dict):
        raise ValueError(f"it holds a {type(metadata).__name__}, not DCP's Metadata with its items")
    kinds = metadata.state_dict_metadata
    for index, info in metadata.storage_data.items():
        if not isinstance(kinds.get(index.fqn), BytesStorageMetadata):
            continue  # a tensor: torch loads those with weights_only=True
        if getattr(info, "transform_descriptors", None):
            raise ValueError(f"its item {index.fqn} is stored transformed ({', '.join(info.transform_descriptors)}), "
                             f"which cannot be checked before loading")
        shard = metadata_file.parent / str(info.relative_path)
        if shard.parent != metadata_file.parent:
            raise ValueError(f"its item {index.fqn} points outside the folder ({info.relative_path})")
        with open(shard, "rb") as f:
            f.seek(info.offset)
            blob = io.BytesIO(f.read(info.length))
        check_saved(blob, f"{shard.name} item {index.fqn}")
