"""The one walk over nested samples and batches: a tensor, or dicts, tuples and lists of them, as
data sets, collates and models give them (Lightning Fabric's `apply_to_collection`). Everything
that moves, cuts, measures or merges a sample or a batch goes through these three functions.

A dict or a tuple is a container; a list is one when it holds tensors or containers (a list of
numbers, a list of token ids, a list of strings is a value of its own).
"""

from __future__ import annotations

from typing import Callable

import torch


def is_container(item) -> bool:
    if isinstance(item, (dict, tuple)):
        return True
    return isinstance(item, list) and any(torch.is_tensor(v) or isinstance(v, (dict, tuple, list)) for v in item)


def merge(fn: Callable, items: list, path: tuple = ()):
    """Items of one layout walked together: `fn(values, path)` at each leaf, where `values` holds the
    leaf of every item and `path` the keys and indices that lead to it; containers rebuilt around
    the results (a collate merges samples so)."""
    first = items[0]
    if isinstance(first, dict):
        return {k: merge(fn, [i[k] for i in items], (*path, k)) for k in first}
    if is_container(first):
        parts = [merge(fn, [i[n] for i in items], (*path, n)) for n in range(len(first))]
        return type(first)(*parts) if hasattr(first, "_fields") else type(first)(parts)  # a named tuple too
    return fn(items, path)


def apply(fn: Callable[[torch.Tensor], object], item):
    """`item` with `fn` applied to each of its tensors (other values as they are)."""
    return merge(lambda values, _: fn(values[0]) if torch.is_tensor(values[0]) else values[0], [item])


def leaves(item) -> list[tuple[tuple, object]]:
    """`(path, value)` of each leaf of `item`, in order."""
    found = []
    merge(lambda values, path: found.append((path, values[0])), [item])
    return found


def tensors(item) -> list[torch.Tensor]:
    return [value for _, value in leaves(item) if torch.is_tensor(value)]
