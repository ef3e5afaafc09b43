"""Text helpers every layer shares: the one did-you-mean, the 100-column wrap of every line a run
prints, and the one flattening of nested settings into dotted keys."""

from __future__ import annotations

import difflib
import textwrap
from typing import Callable, Iterable, Mapping

WIDTH = 100  # every line a run prints fits 100 columns


def closest(name: str, options: Iterable[str], cutoff: float = 0.6):
    """The option most like `name`, or None."""
    match = difflib.get_close_matches(str(name), list(options), n=1, cutoff=cutoff)
    return match[0] if match else None


def did_you_mean(name: str, options: Iterable[str], cutoff: float = 0.6, otherwise: str = "") -> str:
    """`"did you mean 'x'?"` for the option most like `name`, else `otherwise`."""
    match = closest(name, options, cutoff)
    return f"did you mean '{match}'?" if match else otherwise


def wrapped(text: str, indent: str = "    ") -> str:
    """`text` wrapped at 100 columns, later lines indented, words and paths never broken."""
    return textwrap.fill(text, WIDTH, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False)


def flatten(tree: Mapping, keep_whole: Callable[[str], bool] = lambda key: False, prefix: str = "") -> dict:
    """`{"optimizer": {"lr": 1}}` -> `{"optimizer.lr": 1}`. A key for which `keep_whole(dotted key)`
    is true keeps its (dict) value whole, as do empty dicts."""
    flat = {}
    for k, v in tree.items():
        name = prefix + str(k)
        if isinstance(v, Mapping) and v and not keep_whole(name):
            flat.update(flatten(v, keep_whole, name + "."))
        else:
            flat[name] = v
    return flat
