"""The package's layout holds: the layer contracts (import-linter, as pyproject.toml declares them)
pass and fail when broken, no import circle, no private name crosses a module, modules and the
search's classes stay small, and the exit codes the README's table lists are the ones declared on
the error classes."""

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

LINT = str(Path(sys.executable).with_name("lint-imports"))
PACKAGE = ROOT / "train"


def lint(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, "--config", str(folder / "pyproject.toml")], cwd=folder, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(folder), "PATH": "/usr/bin:/bin"})


@pytest.mark.launches  # one named subprocess in the fast tier
def test_the_layer_contracts_pass():
    done = lint(ROOT)
    assert done.returncode == 0 and "3 kept, 0 broken" in done.stdout, done.stdout + done.stderr


@pytest.mark.launches  # one named subprocess in the fast tier
def test_a_broken_layer_contract_fails(tmp_path):
    """torch in the supervisor, and the engine reaching into saving: both contracts named."""
    shutil.copytree(PACKAGE, tmp_path / "train", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    attempts = tmp_path / "train" / "supervision" / "attempts.py"
    attempts.write_text(attempts.read_text() + "\nimport torch  # noqa\n")
    metrics = tmp_path / "train" / "engine" / "metrics.py"
    metrics.write_text(metrics.read_text() + "\nfrom train.saving import storage  # noqa\n")
    done = lint(tmp_path)
    assert done.returncode == 1, done.stdout
    assert "train.supervision.attempts -> torch" in done.stdout
    assert "train.engine.metrics -> train.saving.storage" in done.stdout
    assert "0 kept, 3 broken" in done.stdout


def modules() -> dict[str, ast.Module]:
    return {str(p.relative_to(ROOT)): ast.parse(p.read_text()) for p in PACKAGE.rglob("*.py")}


def test_no_import_circle_and_no_private_name_crosses_a_module():
    import grimp

    graph = grimp.build_graph("train")
    internal = {m for m in graph.modules if m.startswith("train")}
    # a module's own imports, lazy ones inside functions too: a circle anywhere is one too many
    for module in internal:
        for imported in graph.find_modules_directly_imported_by(module) & internal:
            if imported == module or imported.startswith(module + "."):
                continue
            assert not graph.chain_exists(importer=imported, imported=module, as_packages=False) \
                or module.startswith(imported + "."), f"an import circle: {module} <-> {imported}"
    for path, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("train"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path} imports {private} from {node.module}"


def test_modules_and_the_search_classes_stay_small():
    for path, tree in modules().items():
        lines = len((ROOT / path).read_text().splitlines())
        assert lines <= 360, f"{path} has {lines} lines: split it by concept"
        if path.startswith("train/tuning/"):
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef):
                    size = node.end_lineno - node.lineno + 1
                    assert size <= 200, f"{path}: class {node.name} has {size} lines"


def test_the_readme_exit_codes_are_the_declared_ones():
    from train.base.errors import DELIBERATE_MEANINGS, EXIT_MEANINGS

    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| code | meaning |"):]
    table = table[:table.index("\n\n")]
    listed = sorted(int(code) for code in re.findall(r"^\| (\d+) \|", table, flags=re.M))
    assert listed == sorted({*EXIT_MEANINGS, *DELIBERATE_MEANINGS}), listed
