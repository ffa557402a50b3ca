"""Issue 13, "library and harness apart": public names only, no cycles, no import-time registry."""

import ast
from pathlib import Path

import pytest

import swgl
from swgl.bench import methods
from swgl.bench.methods import METHODS, MODULES, OPTIMIZERS, build_tables

ROOT = Path(swgl.__file__).parent
HARNESS = sorted((ROOT / "bench").rglob("*.py")) + [ROOT / "cli.py"]


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import in the file, lazy ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module, [a.name for a in node.names]))
    return out


def test_the_harness_uses_only_the_public_api():
    for path in HARNESS:
        for module, names in _imports(path):
            if module.startswith("swgl") and not module.startswith("swgl.bench"):
                assert module == "swgl", f"{path.name} imports {module}"
                assert set(names) <= set(swgl.__all__) | {"cli"}, (path.name, names)


def test_no_import_cycles_in_the_harness():
    modules = {_module(p) for p in HARNESS}
    graph = {}
    for path in HARNESS:
        deps = set()
        for module, names in _imports(path):
            subs = {f"{module}.{n}" for n in names} & modules   # `from pkg import module`
            deps |= subs or ({module} & modules)
        graph[_module(path)] = deps

    def visit(node, stack):
        assert node not in stack, " -> ".join([*stack, node])
        for dep in graph[node]:
            visit(dep, [*stack, node])

    for node in graph:
        visit(node, [])
    assert "swgl.bench.report" in graph["swgl.bench.runner"]   # the graph is really built


def test_the_tables_are_built_from_the_listed_modules_only():
    # No global registry a module could fill as a side effect of being imported.
    assert not hasattr(methods.base, "register") and not hasattr(methods.base, "METHODS")
    assert all(isinstance(m.SPECS, tuple) for m in MODULES)
    assert build_tables(MODULES) == (METHODS, OPTIMIZERS)
    assert "upgd" in OPTIMIZERS                      # upgd.OPTIMIZERS, merged explicitly
    assert build_tables((methods.naive,))[0].keys() == {
        "naive-sgd", "naive-sgd-momentum", "naive-adam", "naive-adamw"}


def test_a_name_defined_twice_is_an_error():
    with pytest.raises(ValueError, match="'naive-sgd' .* defined twice"):
        build_tables((methods.naive, methods.naive))
