"""The package's import structure: no import cycles among `rlsd` modules, no import of an `rlsd` module inside
a function unless it is listed below with its reason, imports point down the layers only, and the documented
import paths and the `rlsd` command resolve.

The graph is built from the source files with `ast` (nothing is imported), so it sees every import, the ones
inside functions included: an import moved into a function to hide a cycle still counts as an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "rlsd"

# (importing module, imported module) -> why the import sits inside a function. Hiding a cycle is no reason;
# an optional heavy dependency reached through an rlsd module would be one.
FUNCTION_IMPORTS: dict[tuple[str, str], str] = {}

# Arrows point down only (DESIGN.md "Shape of the package"): app -> trainer -> algorithms -> teacher/credit ->
# (data, rewards). A module may import its own layer or a lower one; the cycle test keeps each layer acyclic.
LAYERS: list[tuple[str, tuple[str, ...]]] = [  # bottom first
    ("data, rewards, run-directory utilities", ("rlsd.data", "rlsd.rewards", "rlsd.runlog", "rlsd.pretrained")),
    # One layer: the teacher pass logs per-kind agent metrics and records credit; tasks read prompts with
    # teacher.prompts; agent rollouts parse answers with tasks.base.
    ("teacher, credit, agents, tasks", ("rlsd.teacher", "rlsd.credit", "rlsd.agents", "rlsd.tasks")),
    ("algorithms", ("rlsd.algorithms",)),
    # checkpoints and trackers serve the trainer (crash-safe saves, metric names), so they sit beside it
    ("trainer", ("rlsd.trainer", "rlsd.config", "rlsd.checkpoints", "rlsd.trackers")),
    ("the public face (rlsd/__init__.py)", ("rlsd",)),
    ("application", ("rlsd.app", "rlsd.__main__")),
]


def _modules(src: Path) -> dict[str, Path]:
    modules = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The rlsd modules an import statement loads (a name that is not a module counts as its package)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            package = ".".join(base + ([node.module] if node.module else []))
        else:
            package = node.module or ""
        names = [f"{package}.{a.name}" if f"{package}.{a.name}" in known else package for a in node.names]
    out = []
    for name in names:
        while name not in known and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in known and name.split(".")[0] == PACKAGE:
            out.append(name)
    return out


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def import_graph(src: Path = SRC) -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    """(module -> rlsd modules it imports, anywhere in the file; [(module, line, target)] of function-level ones)."""
    modules = _modules(src)
    known = set(modules)
    edges: dict[str, set[str]] = {m: set() for m in modules}
    local: list[tuple[str, int, str]] = []
    for module, path in modules.items():
        is_package = path.name == "__init__.py"

        def visit(node: ast.AST, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if _is_type_checking(child):
                    continue  # never runs
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    for target in _targets(child, module, is_package, known):
                        if target != module:
                            edges[module].add(target)
                            if in_function:
                                local.append((module, child.lineno, target))
                visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

        visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), False)
    return edges, local


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return found


def test_the_graph_sees_the_package():
    edges, _ = import_graph()
    assert {"rlsd", "rlsd.config", "rlsd.trainer", "rlsd.data", "rlsd.rewards", "rlsd.tasks"} <= set(edges)
    assert {"rlsd.config", "rlsd.trainer"} <= edges["rlsd"]  # `from .config import RLSDConfig` in __init__


def test_cycle_finder_finds_a_cycle_hidden_in_a_function(tmp_path):
    """The checker itself: a cycle closed by an import inside a function is found, and so is that import."""
    package = tmp_path / PACKAGE
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from .b import g\n")
    (package / "a.py").write_text("from .sub import g\n\ndef f():\n    return g()\n")
    (package / "sub" / "b.py").write_text(
        "def g():\n    from ..a import f\n    return f\n\nif TYPE_CHECKING:\n    from .. import c\n")
    (package / "c.py").write_text("from . import a\n")
    edges, local = import_graph(tmp_path)
    assert edges["rlsd.sub.b"] == {"rlsd.a"}  # the TYPE_CHECKING import is no edge
    assert local == [("rlsd.sub.b", 2, "rlsd.a")]
    assert cycles(edges) == [["rlsd.a", "rlsd.sub", "rlsd.sub.b"]]


def test_no_import_cycles():
    found = cycles(import_graph()[0])
    assert not found, ("import cycles among rlsd modules (move what both sides need into a lower module):\n"
                       + "\n".join(" <-> ".join(c) for c in found))


def test_no_function_level_imports_of_rlsd_modules():
    _, local = import_graph()
    unexplained = [f"{m}:{line} imports {t}" for m, line, t in local if (m, t) not in FUNCTION_IMPORTS]
    assert not unexplained, ("imports of rlsd modules inside functions (import at the top of the module; an "
                             "exception goes in FUNCTION_IMPORTS with its reason):\n" + "\n".join(unexplained))


def layer_of(module: str) -> int:
    """Index in LAYERS of the longest prefix naming `module` or a package above it (the root only names itself)."""
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            below = module.startswith(prefix + ".") and prefix != PACKAGE
            if (module == prefix or below) and len(prefix) > best:
                best, rank = len(prefix), i
    if rank is None:
        raise KeyError(f"{module} is in no layer of tests/test_layout.py LAYERS: place it")
    return rank


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    return [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
            for a, targets in sorted(edges.items()) for b in sorted(targets) if layer_of(b) > layer_of(a)]


def test_arrows_point_down():
    edges, _ = import_graph()
    for module in edges:
        layer_of(module)  # every module has a layer (a new top-level module must be placed)
    upward = upward_imports(edges)
    assert not upward, "imports that point up the layers:\n" + "\n".join(upward)


def test_an_upward_import_is_found():
    edges = {"rlsd.teacher.prompts": {"rlsd.data"}, "rlsd.credit.maths": {"rlsd.app.report"}, "rlsd": {"rlsd.app"}}
    assert upward_imports(edges) == [
        "rlsd (the public face (rlsd/__init__.py)) imports rlsd.app (application)",
        "rlsd.credit.maths (teacher, credit, agents, tasks) imports rlsd.app.report (application)"]


def test_console_script_and_python_m_run_the_same_main():
    """pyproject's `rlsd` entry point names a real function, and `python -m rlsd` imports that one."""
    import importlib
    import re

    text = (SRC.parent / "pyproject.toml").read_text(encoding="utf-8")
    target = re.search(r'^rlsd\s*=\s*"([\w.]+):(\w+)"', text, re.M)
    assert target, "pyproject.toml [project.scripts] has no `rlsd = \"module:function\"`"
    assert callable(getattr(importlib.import_module(target.group(1)), target.group(2)))
    main_module = ast.parse((SRC / PACKAGE / "__main__.py").read_text(encoding="utf-8"))
    imported = {(f"{PACKAGE}.{n.module}" if n.level else n.module, a.name)
                for n in ast.walk(main_module) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert (target.group(1), target.group(2)) in imported, imported


def test_documented_import_paths():
    """The paths README, docs and users' code name keep working after the move into subpackages."""
    import importlib

    from rlsd import RLSDConfig, RLSDTrainer, register_algorithm  # noqa: F401

    for module, names in {"rlsd.rewards": ["get_reward", "get_rewards", "load_reward"], "rlsd.data": ["load_dataset"],
                          "rlsd.tasks": ["get_task", "TASKS"], "rlsd.teacher": ["with_reference", "teacher_prompt"],
                          "rlsd.credit": ["rlsd_token_advantages", "group_advantages"],
                          "rlsd.app.evaluate": ["evaluate"], "rlsd.app.quickstart": ["run_quickstart"],
                          "rlsd.app.warmstart": ["warm_start"], "rlsd.app.run_config": ["load_run_config"]}.items():
        loaded = importlib.import_module(module)
        assert all(hasattr(loaded, name) for name in names), (module, [n for n in names if not hasattr(loaded, n)])


def test_package_faces_re_export_their_main_module():
    """`rlsd.credit.<fn>` and `rlsd.teacher.<fn>` (the paths from before the packages) name every public function."""
    import importlib

    for package, module in {"rlsd.credit": "rlsd.credit.maths", "rlsd.teacher": "rlsd.teacher.prompts"}.items():
        tree = ast.parse(_modules(SRC)[module].read_text(encoding="utf-8"))
        public = {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")}
        missing = sorted(public - set(importlib.import_module(package).__all__))
        assert not missing, f"{package}/__init__.py: also re-export {', '.join(missing)} from {module}"
