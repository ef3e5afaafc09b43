"""Names in a config turned into Python objects: a built-in name, or anything importable.

`resolve("tutorial_cnn", MODELS, "model")` gives a built-in; `resolve("mypkg.models:Net", ...)`,
`resolve("mypkg.models.Net", ...)` and `resolve("path/to/models.py:Net", ...)` import one, with the
project folder and the current folder importable. Each mistake is one `ConfigError` line with a
did-you-mean: a module that is not there, a name the module lacks, a module that fails to import.
This is what Hydra's `instantiate` and jsonargparse's `class_path` do; ours is the forty lines a
flat YAML needs, without a second config system.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any, Mapping

from train.base.text import closest, did_you_mean
from train.base.errors import ConfigError, describe
from train.base.paths import ROOT



def _hint(name: str, options) -> str:
    hint = did_you_mean(name, options)
    return f"; {hint}" if hint else ""


def is_import_path(spec: str) -> bool:
    return ":" in spec or "." in spec or spec.endswith(".py")


def resolve(spec: str, builtins: Mapping[str, Any], what: str) -> Any:
    """The object `spec` names (see the module docstring); `what` names the kind in messages."""
    if spec in builtins:
        return builtins[spec]
    if not isinstance(spec, str) or not is_import_path(spec):
        hint = f" ({did_you_mean(spec, builtins)})" if closest(spec, builtins) else ""
        raise ConfigError(f"unknown {what} '{spec}'{hint}; choose one of {', '.join(builtins)}, or give an import "
                          f"path such as 'package.module:Name'")
    module_path, sep, attr = spec.rpartition(":") if ":" in spec else spec.rpartition(".")
    if not module_path or not attr:
        raise ConfigError(f"cannot import '{spec}': give it as 'package.module:Name' or 'path/to/file.py:Name'")
    module = _import(module_path, spec)
    if not hasattr(module, attr):
        public = [n for n in dir(module) if not n.startswith("_")]
        raise ConfigError(f"cannot import '{spec}': module '{module_path}' has no attribute '{attr}'"
                          f"{_hint(attr, public)}")
    return getattr(module, attr)


def _import(module_path: str, spec: str):
    for folder in (str(Path.cwd()), str(ROOT)):  # the current folder first, then the project's
        if folder not in sys.path:
            sys.path.insert(0, folder)
    try:
        if module_path.endswith(".py"):
            file = Path(module_path)
            if not file.is_file():
                raise ConfigError(f"cannot import '{spec}': no file '{module_path}'")
            import hashlib  # not hash(): it differs per process, and workers unpickle by module name

            name = f"train_user_{hashlib.sha256(str(file.resolve()).encode()).hexdigest()[:16]}"
            if name not in sys.modules:
                loader = importlib.util.spec_from_file_location(name, file)
                module = importlib.util.module_from_spec(loader)
                sys.modules[name] = module
                loader.loader.exec_module(module)
            return sys.modules[name]
        return importlib.import_module(module_path)
    except ModuleNotFoundError as e:
        missing = e.name or module_path
        parent, _, leaf = missing.rpartition(".")
        siblings = [f"{parent}.{name}" if parent else name for name in _submodules(parent)]
        hint = _hint(missing, siblings)
        raise ConfigError(f"cannot import '{spec}': no module named '{missing}'{hint}") from None
    except ConfigError:
        raise
    except Exception as e:  # the user's module itself failed: say so in one line
        raise ConfigError(f"cannot import '{spec}': importing '{module_path}' raised {describe(e)}") from None


def _submodules(package: str) -> list[str]:
    import pkgutil

    try:
        paths = importlib.import_module(package).__path__ if package else sys.path
        return [m.name for m in pkgutil.iter_modules(paths)]
    except Exception:
        return []


def instantiate(obj: Any, args: Mapping[str, Any], what: str, spec: str, *positional) -> Any:
    """`obj(*positional, **args)`: a class instantiated, a factory called. Arguments it does not
    take are one line naming the object and its signature; an error inside it is its own."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):  # no signature to check against (some builtins)
        signature = None
    if signature is not None:
        try:
            signature.bind(*positional, **dict(args))
        except TypeError as e:
            raise ConfigError(f"{what} '{spec}' does not take {dict(args)}: {e} (it takes {signature})") from None
    return obj(*positional, **dict(args))


def short_name(spec: str) -> str:
    """What a history column or the plan calls an imported object: its last name."""
    return spec.replace(":", ".").rsplit(".", 1)[-1]
