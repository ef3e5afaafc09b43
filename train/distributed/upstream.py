"""Per-step costs of Accelerate (1.15, 1.16) that depend on nothing a run changes, paid once instead.

`AcceleratedOptimizer.step()` asks `is_lomo_available()` twice per call, and that runs
`importlib.util.find_spec("lomo_optim")` every time, uncached: about 120 us a call here (more with a
longer `sys.path`), so a quarter to a third of a small model's whole step on a CPU, and host time
that leaves a GPU idle. Whether a package is installed does not change while a run trains, so the
answer is kept after the first call. (Accelerate has no setting for this; the patch is one line,
applied once, and leaves every other behaviour of the wrapper as it is.)"""

from __future__ import annotations

import functools


def cache_package_lookups() -> None:
    import accelerate.optimizer as wrapper

    lookup = getattr(wrapper, "is_lomo_available", None)  # another Accelerate may not have it: nothing to do
    if lookup is not None and not hasattr(lookup, "cache_info"):
        wrapper.is_lomo_available = functools.lru_cache(maxsize=None)(wrapper.is_lomo_available)
