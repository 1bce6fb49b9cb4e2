"""The shape of the house (architecture section 9), checked on the source with ``ast``: floors
import only downward, no import loop, one folder per evidence family of one shape, the
registries list every family, simulators use only the ground and the agent, modules stay
small and no two files declare the same byte layout."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.paths import ROOT

from verifier import registry

PACKAGES = ("keybroker", "verifier", "broker", "attester_agent", "keybroker_cli")
FLOOR = {"keybroker": 1, "verifier": 2, "broker": 2, "attester_agent": 2, "keybroker_cli": 3}
GENERATED = ROOT / "keybroker" / "v1"
MAX_LINES = 400
TEE_SHAPE = ("verify.py", "claims.py", "policy.py", "appraisal.py", "view.py", "tee.py")
# Verifier modules every TEE folder may build on; none of them may import a TEE folder.
SHARED_VERIFIER = ("verifier.pki", "verifier.verdict", "verifier.tee", "verifier.claim_fields",
                   "verifier.collateral", "verifier.eventlog", "verifier.init_data",
                   "verifier.config", "verifier.workload", "verifier.tpm_quote")


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    tree: ast.Module


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _product_files() -> Iterator[Path]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if GENERATED not in path.parents:
                yield path


def _modules() -> dict[str, Module]:
    out = {}
    for path in _product_files():
        name = _module_name(path)
        out[name] = Module(name, path, ast.parse(path.read_text(), str(path)))
    return out


MODULES = _modules()


def _resolve(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.name.split(".")
    if module.path.name != "__init__.py":
        base.pop()
    base = base[:len(base) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports_of(module: Module) -> set[str]:
    """Every project module ``module`` imports (function-level and TYPE_CHECKING imports
    included); ``from package import module`` counts as importing the module."""
    found: set[str] = set()
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                     for alias in node.names]
        else:
            continue
        for imported in names:
            target = imported
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != module.name:
                found.add(target)
    return found


GRAPH = {name: imports_of(module) for name, module in MODULES.items()}


def _top(name: str) -> str:
    return name.split(".", maxsplit=1)[0]


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        out.append(sorted(component))
    return out


def tee_folders() -> list[str]:
    """Every evidence family folder of the verifier (a package holding a ``tee.py``)."""
    return sorted(name.rpartition(".")[0] for name in MODULES
                  if _within(name, "verifier") and name.endswith(".tee")
                  and name != "verifier.tee")


def test_cycle_finder_finds_a_loop() -> None:
    """The loop check itself works: a two-module loop and a three-module loop are found."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
    assert sorted(_cycles(graph)) == [["a", "b"], ["c", "d", "e"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_loop() -> None:
    """No two product modules import each other, directly or through others."""
    assert _cycles(GRAPH) == []


def test_floors_import_only_downward() -> None:
    """The ground imports no process or CLI; a process imports only the ground and itself;
    only the CLI (top floor) may import every floor."""
    upward = []
    for name, deps in GRAPH.items():
        for dep in deps:
            mine, theirs = _top(name), _top(dep)
            if mine == theirs:
                continue
            if FLOOR[theirs] >= FLOOR[mine]:
                upward.append(f"{name} -> {dep}")
    assert upward == []


def test_no_import_by_name() -> None:
    """Modules are imported with import statements, never loaded by name at run time."""
    offenders = []
    for module in MODULES.values():
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(
                    func, "id", "")
                if called in ("import_module", "__import__"):
                    offenders.append(f"{module.name}:{node.lineno}")
    assert offenders == []


def test_tee_folders_have_one_shape_and_stay_apart() -> None:
    """Each evidence family folder has the same modules and imports no other family folder."""
    folders = tee_folders()
    assert {"verifier.snp", "verifier.dcap"} <= set(folders)
    for folder in folders:
        present = {p.name for p in (ROOT / folder.replace(".", "/")).glob("*.py")}
        assert set(TEE_SHAPE) <= present, (folder, sorted(set(TEE_SHAPE) - present))
        for name, deps in GRAPH.items():
            if not _within(name, folder):
                continue
            foreign = [d for d in deps for other in folders
                       if other != folder and _within(d, other)]
            assert foreign == [], (name, foreign)


def test_shared_verifier_modules_import_no_tee_folder() -> None:
    """Certificate handling, the collateral cache, event logs and the TEE shape are below
    every family: they import no family folder."""
    folders = tee_folders()
    for name, deps in GRAPH.items():
        if any(_within(name, shared) for shared in SHARED_VERIFIER):
            assert [d for d in deps for f in folders if _within(d, f)] == [], name


def test_every_family_is_in_the_registries() -> None:
    """The verifier's registry lists every family folder's entry, and the service, the policy
    compiler, the claims view and the decision engine import no family folder directly."""
    listed = {family.open_verifier.__module__.rpartition(".")[0]
              for family in registry.FAMILIES}
    assert listed == set(tee_folders())
    folders = tee_folders()
    for name in ("verifier.service", "verifier.server", "verifier.policy.decision",
                 "verifier.claims_view", "verifier.policy.compile", "verifier.policy.model"):
        assert [d for d in GRAPH[name] for f in folders if _within(d, f)] == [], name


def test_simulators_use_only_the_ground_and_the_agent() -> None:
    """The agent's simulators build evidence from the ground's layouts, never from verifier
    internals."""
    for name, deps in GRAPH.items():
        if _within(name, "attester_agent.simulator"):
            assert {_top(d) for d in deps} <= {"keybroker", "attester_agent"}, name


def test_modules_stay_small() -> None:
    """No product, bench or script module exceeds 400 lines."""
    files = [*_product_files(), *sorted((ROOT / "bench").glob("*.py")),
             *sorted((ROOT / "scripts").glob("*.py"))]
    long = {str(p.relative_to(ROOT)): n for p in files
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


class _Layout(ast.NodeTransformer):
    """A construct layout with its field names erased, so two declarations of the same bytes
    compare equal whatever their fields are called."""

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, ast.Div) and isinstance(node.left, ast.Constant) and isinstance(
                node.left.value, str):
            node.left = ast.Constant("_")
        return node


def _layouts(module: Module) -> Iterator[tuple[str, str]]:
    for node in ast.walk(module.tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "Struct"):
            continue
        args = [a for a in node.args if not isinstance(a, ast.Starred)]
        if len(args) < 2 or len(args) != len(node.args):
            continue  # built from shared field groups: those are checked where declared
        shape = ast.dump(_Layout().visit(ast.parse(ast.unparse(node), mode="eval")))
        yield shape, f"{module.name}:{node.lineno}"


def test_no_byte_layout_is_declared_twice() -> None:
    """No two construct structures in the product describe the same bytes."""
    seen: dict[str, str] = {}
    duplicates = []
    for module in MODULES.values():
        for shape, where in _layouts(module):
            if shape in seen:
                duplicates.append((seen[shape], where))
            seen.setdefault(shape, where)
    assert duplicates == []


def test_duplicate_layouts_would_be_found() -> None:
    """The layout check itself works: renamed fields of the same bytes compare equal."""
    one = ast.parse('c.Struct("id" / c.Int32ul, "data" / c.Prefixed(c.Int32ul, c.GreedyBytes))')
    two = ast.parse('c.Struct("tag" / c.Int32ul, "body" / c.Prefixed(c.Int32ul, c.GreedyBytes))')
    module_one = Module("one", ROOT / "one.py", one)
    module_two = Module("two", ROOT / "two.py", two)
    assert [s for s, _ in _layouts(module_one)] == [s for s, _ in _layouts(module_two)]


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_have_no_import_time_work(package: str) -> None:
    """A package's ``__init__`` holds a docstring (and constants) only: importing a package
    imports none of its modules."""
    init = ast.parse((ROOT / package / "__init__.py").read_text())
    allowed = (ast.Expr, ast.Assign, ast.AnnAssign, ast.ImportFrom)
    assert all(isinstance(node, allowed) for node in init.body)
    assert not [n for n in init.body if isinstance(n, ast.ImportFrom)
                and n.module != "__future__"]


def test_readme_layout_names_every_top_folder() -> None:
    """The README's Layout section names every package and test folder of the tree."""
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    for name in (*PACKAGES, "tests/unit/", "tests/integration/", "tests/vectors/"):
        assert re.search(rf"(^|\s){re.escape(name)}/?\s", layout, re.M), name
