"""The package's layer rule, checked on the source of every module.

Layers point down: physics -> models -> localize -> files -> eval -> train -> configs ->
hpo / bench -> cli. A module imports only from its own layer or below; no module imports a
private name (`_x`, or a name from a private module) of another package; imports sit at the
top of the module, except local ones that carry a one-line reason (a comment on the line or
the line above).
"""
from __future__ import annotations

import ast
import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import rismvdr

PKG = Path(rismvdr.__file__).resolve().parent

#: Layer of each top-level unit of the package (higher may import lower, never the reverse).
LAYERS = {
    "defaults": 0,  # constants only: imports nothing from rismvdr
    "overrides": 0,  # the --set grammar: imports nothing from rismvdr
    "programs": 0,  # the program store (a jax.jit that keeps its traced programs): nothing from rismvdr
    "lazy": 0,  # the packages' names imported on first use (PEP 562): nothing from rismvdr
    "physics": 0,
    "models": 1,
    "localize": 2,
    "io": 3,
    "files": 3,  # the deprecated alias of rismvdr.io
    "eval": 4,
    "train": 5,
    "configs": 6,
    "hpo": 7,
    "bench": 7,
    "cli": 8,
}


def _modules() -> list[str]:
    names = ["rismvdr"]
    for info in pkgutil.walk_packages([str(PKG)], prefix="rismvdr."):
        names.append(info.name)
    return sorted(names)


MODULES = _modules()


def _source(name: str) -> tuple[Path, str]:
    rel = name.split(".")[1:]
    path = PKG.joinpath(*rel)
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return path, path.read_text()


def _unit(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def _package(name: str, is_pkg: bool) -> str:
    parts = name.split(".")
    return ".".join(parts if is_pkg else parts[:-1])


def _imports(tree: ast.AST, name: str, is_pkg: bool):
    """(line, imported module, imported names, nested) for every rismvdr import."""
    out = []
    nested_nodes = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    nested_nodes.add(id(sub))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.append((node.lineno, alias.name, [], id(node) in nested_nodes))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package(name, is_pkg).split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((node.lineno, module, [a.name for a in node.names], id(node) in nested_nodes))
    return out


def test_every_module_imports():
    for name in MODULES:
        importlib.import_module(name)


@pytest.mark.parametrize("name", MODULES)
def test_layer_rule(name):
    path, text = _source(name)
    is_pkg = path.name == "__init__.py"
    unit = _unit(name)
    lines = text.splitlines()
    tree = ast.parse(text)
    problems = []
    for line, module, names, nested in _imports(tree, name, is_pkg):
        if nested:
            here, above = lines[line - 1], lines[line - 2] if line >= 2 else ""
            if "#" not in here and not above.strip().startswith("#"):
                problems.append(f"line {line}: local import of {module or names} without a one-line reason")
        if not module.startswith("rismvdr"):
            continue
        target_unit = _unit(module) or (names[0] if names and names[0] in LAYERS else None)
        if module == "rismvdr" and unit is not None:
            problems.append(f"line {line}: imports the top-level package (import the module itself)")
        if unit is not None and target_unit in LAYERS and unit in LAYERS:
            if LAYERS[target_unit] > LAYERS[unit]:
                problems.append(f"line {line}: {unit} (layer {LAYERS[unit]}) imports {module} "
                                f"(layer {LAYERS[target_unit]}): layers point down")
        own = _package(name, is_pkg)
        target_pkg = ".".join(module.split(".")[:2])
        if not own.startswith(target_pkg):
            private_mod = [p for p in module.split(".") if p.startswith("_")]
            private_names = [n for n in names if n.startswith("_") and n != "__version__"]
            if private_mod or private_names:
                problems.append(f"line {line}: imports private {module}{' ' + str(private_names) if private_names else ''} "
                                "from another package")
    assert not problems, f"{name} ({path.relative_to(PKG.parent)}):\n  " + "\n  ".join(problems)


def test_every_unit_has_a_layer():
    units = {_unit(n) for n in MODULES if _unit(n) is not None}
    unknown = sorted(u for u in units if u not in LAYERS and not u.startswith("_"))
    assert not unknown, f"top-level units without a layer in LAYERS: {unknown}"


def test_public_api_is_explicit():
    assert isinstance(rismvdr.__all__, list) and rismvdr.__all__
    for name in rismvdr.__all__:
        assert hasattr(rismvdr, name), name


@pytest.mark.parametrize("module", ["rismvdr", "rismvdr.files"])
def test_doctests(module):
    """The public API's example and the files module's examples run."""
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
