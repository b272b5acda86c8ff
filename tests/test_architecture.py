"""Checks the package structure by reading the source with ``ast`` (nothing here imports the project).

The library is layered, and imports flow one way, down this stack (a module may import from its
own layer or any layer below it, never from one above)::

    ssdlite.cli        the `ssdlite` command
    ssdlite.batch      corpus detection: inputs, output formats, slicing, resume, Ray Data
    ssdlite.video      frame sources, tracking, line and zone counting
    ssdlite.runtime    backends, loading, Detector
    ssdlite.weights    checkpoint, zoo, convert/
    ssdlite.deploy     onnx, int8, end_to_end, export
    ssdlite.images     read/write/preprocess/draw
    ssdlite.core       config, layers, backbones/, head, anchors, boxes, loss, postprocess, model
    ssdlite.errors

The modules outside the stack (``ssdlite/__init__.py``, ``__main__.py`` and the compatibility
modules ``detect``, ``export``, ``zoo`` and ``convert``, kept for ``python -m ssdlite.export``) sit
on top of it: they may import any layer, and no layer may import them. Nothing in ``ssdlite/``
imports ``train``, ``service`` or ``bench``; ``ssdlite.cli`` loads ``train`` and ``service`` by
name through ``importlib``.

Besides the layers, ``ssdlite``, ``train`` and ``service`` have no import cycles (counting the
imports inside functions: such an import hides a cycle, it does not remove it), and imports of
first-party modules inside functions are allowed only in the files listed in ``ALLOWED_LOCAL``.
"""

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("ssdlite", "train", "service", "bench")
LAYERS = (  # top to bottom
    "ssdlite.cli",
    "ssdlite.batch",
    "ssdlite.video",
    "ssdlite.runtime",
    "ssdlite.weights",
    "ssdlite.deploy",
    "ssdlite.images",
    "ssdlite.core",
    "ssdlite.errors",
)
# file (relative to the repository root) -> why its functions may import first-party modules.
ALLOWED_LOCAL: dict[str, str] = {
    "ssdlite/cli/detect.py": "ssdlite.batch.ray needs the optional ray extra; imported only for --ray",
}


class Import(NamedTuple):
    module: str  # the importing module
    lineno: int
    target: str  # the imported module: "a.b" for `from a.b import name`, "a.b.c" if c is a submodule
    in_function: bool
    where: str  # "path:line", for the messages


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str, root: Path) -> bool:
    """Whether ``name`` is a module under ``root``: ``a/b.py`` or a package ``a/b/__init__.py``."""
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path, root: Path) -> Iterator[Import]:
    """Yields every import statement in a file, relative imports resolved to absolute module names."""
    module = module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    where = str(path.relative_to(root))

    def visit(node: ast.AST, in_function: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            location = f"{where}:{getattr(child, 'lineno', '?')}"
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(module, child.lineno, alias.name, in_function, location)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # `from ..core import x` in ssdlite.runtime.detector: base is ssdlite.core
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - child.level + 1] + ([base] if base else []))
                # `from . import distributed` in package train imports the module train.distributed
                submodules = (f"{base}.{alias.name}" for alias in child.names)
                for target in dict.fromkeys(name if is_module(name, root) else base for name in submodules):
                    yield Import(module, child.lineno, target, in_function, location)
            yield from visit(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef))

    yield from visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), in_function=False)


def all_imports(root: Path, package: str) -> list[Import]:
    return [found for path in sorted((root / package).rglob("*.py")) for found in imports(path, root)]


def in_package(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def layer(name: str) -> int | None:
    """The index of the layer a module belongs to in LAYERS (0 is the top); None above the stack."""
    return next((i for i, prefix in enumerate(LAYERS) if in_package(name, prefix)), None)


def layer_violations(root: Path) -> list[str]:
    errors = []
    for found in all_imports(root, "ssdlite"):
        source = layer(found.module)
        if any(in_package(found.target, other) for other in FIRST_PARTY if other != "ssdlite"):
            errors.append(f"{found.where}: {found.module} imports {found.target} (ssdlite must not import it)")
        elif source is not None and in_package(found.target, "ssdlite"):
            target = layer(found.target)
            if target is None or target < source:
                errors.append(f"{found.where}: {found.module} imports {found.target}, a layer above its own")
    return errors


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def cycles(root: Path, package: str) -> list[list[str]]:
    """The import cycles in ``package``: for each tangle of modules, the shortest cycle [a, b, ..., a] through one."""
    graph: dict[str, set[str]] = {}
    for found in all_imports(root, package):
        graph.setdefault(found.module, set())
        if in_package(found.target, package) and found.target != found.module:
            graph[found.module].add(found.target)
    reach = {name: reachable(graph, name) for name in graph}
    found_cycles, reported = [], set()
    for start in sorted(graph):
        if start in reported or start not in reach[start]:
            continue
        reported |= {name for name in reach[start] if start in reach.get(name, ())}  # the whole tangle
        paths, visited = [[start]], {start}  # breadth first: the shortest way back to start
        while start not in graph.get(paths[0][-1], ()):
            path = paths.pop(0)
            for nxt in sorted(graph.get(path[-1], set()) - visited):
                visited.add(nxt)
                paths.append(path + [nxt])
        found_cycles.append(paths[0] + [start])
    return found_cycles


def local_imports(root: Path, packages: tuple[str, ...]) -> list[Import]:
    """Imports of first-party modules inside functions, outside the files in ALLOWED_LOCAL."""
    return [
        found
        for package in packages
        for found in all_imports(root, package)
        if found.in_function
        and any(in_package(found.target, name) for name in FIRST_PARTY)
        and found.where.rpartition(":")[0] not in ALLOWED_LOCAL
    ]


def test_imports_flow_down_the_layers():
    errors = layer_violations(ROOT)
    assert not errors, "imports going up the layers (see this module's docstring):\n" + "\n".join(errors)


@pytest.mark.parametrize("package", ["ssdlite", "train", "service"])
def test_no_import_cycles(package):
    found = cycles(ROOT, package)
    assert not found, f"import cycles in {package}:\n" + "\n".join(" -> ".join(cycle) for cycle in found)


def test_first_party_imports_are_at_module_level():
    found = local_imports(ROOT, ("ssdlite", "train", "service"))
    lines = [f"{i.where}: {i.module} imports {i.target}" for i in found]
    assert not lines, "first-party imports inside functions (move them up, or list the file in ALLOWED_LOCAL):\n" + (
        "\n".join(lines)
    )


def test_first_party_imports_resolve():
    """Guards the checks above: an import they cannot resolve to a file is an edge they cannot see."""
    unresolved = [
        f"{i.where}: {i.module} imports {i.target}"
        for package in FIRST_PARTY
        for i in all_imports(ROOT, package)
        if any(in_package(i.target, name) for name in FIRST_PARTY) and not is_module(i.target, ROOT)
    ]
    assert not unresolved, "imports of modules that are neither x.py nor x/__init__.py:\n" + "\n".join(unresolved)


def test_allowed_local_lists_existing_files():
    missing = [name for name in ALLOWED_LOCAL if not (ROOT / name).is_file()]
    assert not missing, f"ALLOWED_LOCAL lists files that no longer exist: {missing}"


def test_importing_ssdlite_does_not_import_the_service_stack():
    code = "import ssdlite, sys; print(sorted({'fastapi', 'uvicorn'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"`import ssdlite` imported {result.stdout.strip()}"


# The checks above, on a tiny fake project: each must catch what it is there to catch.
FAKE_PROJECT = {
    "ssdlite/__init__.py": "from .runtime import Detector\nfrom . import cli\n",
    "ssdlite/errors.py": "",
    "ssdlite/cli.py": "",
    "ssdlite/core/__init__.py": "from .model import Model\n",
    "ssdlite/core/model.py": "from ..errors import Error\nfrom ssdlite.runtime import Detector\n",
    "ssdlite/runtime/__init__.py": "from .detector import Detector\n",
    "ssdlite/runtime/detector.py": "from ..core import Model\n\ndef f():\n    from .. import cli\n",
    "ssdlite/images.py": "import train.data\n",
    "train/__init__.py": "",
    "train/data/__init__.py": "from .. import coco\n",
    "train/coco.py": "import numpy\n\ndef main():\n    from .data import loader\n",
}


@pytest.fixture
def fake_root(tmp_path):
    for name, text in FAKE_PROJECT.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_checks_catch_violations(fake_root):
    assert layer_violations(fake_root) == [
        "ssdlite/core/model.py:2: ssdlite.core.model imports ssdlite.runtime, a layer above its own",
        "ssdlite/images.py:1: ssdlite.images imports train.data (ssdlite must not import it)",
        "ssdlite/runtime/detector.py:4: ssdlite.runtime.detector imports ssdlite.cli, a layer above its own",
    ]
    assert cycles(fake_root, "train") == [["train.coco", "train.data", "train.coco"]]
    assert cycles(fake_root, "ssdlite") == [
        ["ssdlite.core", "ssdlite.core.model", "ssdlite.runtime", "ssdlite.runtime.detector", "ssdlite.core"]
    ]
    assert [(i.where, i.target) for i in local_imports(fake_root, ("ssdlite", "train"))] == [
        ("ssdlite/runtime/detector.py:4", "ssdlite.cli"),
        ("train/coco.py:4", "train.data"),
    ]
