"""The shape of the code: imports between `gateway` and `adapters` point one way, the core
stays pure, and SQL is written in `gateway/ledger/` only.

The import graph is read from the source with `ast`, not from a running interpreter, so that an
import nobody has executed yet (inside a function, under `if TYPE_CHECKING:`) is seen too.
Every import counts as an edge:

- a function-level import is still a dependency, only a later one: deferring it hides a cycle
  from the interpreter, not from the reader;
- an import under `if TYPE_CHECKING:` is not a runtime cycle, but it is still one module needing
  the other to be understood; "imports pointing one way" holds for types too;
- `import a.b.c` and `from a.b import c` run `a/__init__.py` and `a/b/__init__.py` first, so
  they are edges to those packages as well (unless the importer is inside them);
- `from pkg import name` is an edge to the submodule `pkg.name` when there is one, else to
  `pkg` itself.

A cycle is a strongly connected component of more than one module (a package importing its
own submodules is none); the failure names one closed path through it with the file and line of each import.
"""

from __future__ import annotations

import ast
import sys
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatch
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "adapters")

# The pure core and the leaves it may lean on: records, rules and integer arithmetic, no I/O.
PURE_OUTSIDE_CORE = frozenset({"gateway.protocol.errors", "gateway.core.money"})
PURE_THIRD_PARTY = frozenset({"msgspec"})
# Standard-library modules that reach the world (network, files, processes, clock, threads):
# the core is handed what it needs (a `now`, the locked rows) and never fetches it.
IO_STDLIB = frozenset(
    {
        "asyncio",
        "http",
        "io",
        "logging",
        "multiprocessing",
        "os",
        "pathlib",
        "select",
        "selectors",
        "shutil",
        "socket",
        "sqlite3",
        "ssl",
        "subprocess",
        "tempfile",
        "threading",
        "time",
        "urllib",
    }
)


@dataclass(frozen=True, slots=True)
class Import:
    """One imported module, resolved to its absolute dotted name."""

    target: str
    path: Path
    line: int
    type_only: bool

    def where(self, root: Path) -> str:
        return f"{self.path.relative_to(root)}:{self.line}"


def find_modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Dotted module name -> its file, for every .py under the given top-level packages."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """Ids of the nodes inside an `if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`) body."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.If):
            continue
        test = node.test
        named = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        )
        if named:
            for statement in node.body:
                inside.update(id(n) for n in ast.walk(statement))
    return inside


def imports_of(name: str, path: Path, known: Mapping[str, Path]) -> list[Import]:
    """Every module `name` imports, anywhere in its file, resolved against `known`.

    A name outside `known` (the standard library, a third-party package) is kept as written,
    so that the caller can judge it too.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    type_only = _type_checking_nodes(tree)
    own_package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: list[Import] = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = own_package[: len(own_package) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base == "__future__":
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.append(submodule if submodule in known else base)
        else:
            continue
        for target in dict.fromkeys(targets):
            found.append(Import(target, path, node.lineno, id(node) in type_only))
    return found


def _known_module(target: str, known: Mapping[str, Path]) -> str | None:
    """The longest known module `target` names (`a.b.Thing` -> `a.b`), or None."""
    parts = target.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def import_graph(root: Path, packages: Iterable[str]) -> dict[str, dict[str, Import]]:
    """Module -> the modules of the same packages it imports (each with its first import)."""
    known = find_modules(root, packages)
    graph: dict[str, dict[str, Import]] = {}
    for name, path in known.items():
        edges: dict[str, Import] = {}
        for imp in imports_of(name, path, known):
            module = _known_module(imp.target, known)
            if module is None:
                continue
            parts = module.split(".")
            # The packages above it run first, unless the importer is already inside them.
            enclosing = [".".join(parts[:i]) for i in range(1, len(parts))]
            for target in (*enclosing, module):
                if target not in known or target == name or name.startswith(target + "."):
                    continue
                edges.setdefault(target, Import(target, imp.path, imp.line, imp.type_only))
        graph[name] = edges
    return graph


def strongly_connected(graph: Mapping[str, Mapping[str, object]]) -> list[list[str]]:
    """Tarjan's components of more than one module; iterative, so a long import chain cannot
    exhaust the recursion limit."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterable[str]]] = []
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        work.append((start, iter(sorted(graph.get(start, {})))))
        while work:
            node, successors = work[-1]
            advanced = False
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph.get(succ, {})))))
                    advanced = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return sorted(components)


def closed_path(graph: Mapping[str, Mapping[str, Import]], component: list[str]) -> list[str]:
    """A shortest cycle through the component's first module: [a, b, ..., a]."""
    members = set(component)
    start = component[0]
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for succ in sorted(graph[node]):
            if succ == start:
                chain = [node]
                while chain[-1] != start:
                    chain.append(came_from[chain[-1]])
                return [*reversed(chain), start]
            if succ in members and succ not in came_from:
                came_from[succ] = node
                queue.append(succ)
    raise AssertionError(f"{component} is not strongly connected")


def describe_cycles(graph: Mapping[str, Mapping[str, Import]], root: Path) -> list[str]:
    """One line per cycle: each import on a closed path, with its file and line."""
    lines = []
    for component in strongly_connected(graph):
        path = closed_path(graph, component)
        steps = []
        for a, b in pairwise(path):
            imp = graph[a][b]
            kind = " (type-only)" if imp.type_only else ""
            steps.append(f"{a} -> {b} at {imp.where(root)}{kind}")
        lines.append(f"cycle among {', '.join(component)}: " + "; ".join(steps))
    return lines


def test_no_import_cycle_in_gateway_and_adapters() -> None:
    graph = import_graph(ROOT, PACKAGES)
    # The graph is the real one: a parser that saw nothing would find no cycle either.
    assert "gateway.pipeline.dispatch" in graph["gateway.pipeline.group_commit"]
    assert (
        "gateway.pipeline.grouped" in graph["gateway.protocol.transaction"]
    )  # under TYPE_CHECKING
    assert graph["gateway.protocol.transaction"]["gateway.pipeline.grouped"].type_only
    cycles = describe_cycles(graph, ROOT)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_core_imports_only_pure_modules() -> None:
    """`gateway/core/` is rules over records: it imports other core modules, the error types
    and integer money, the standard library's pure parts and msgspec; nothing from the rest of
    `gateway/`, nothing from `adapters/`, no database, HTTP or Redis client."""
    known = find_modules(ROOT, PACKAGES)
    core = sorted(m for m in known if m == "gateway.core" or m.startswith("gateway.core."))
    pure = {*core, *PURE_OUTSIDE_CORE}
    assert len(core) > 3 and set(known) >= PURE_OUTSIDE_CORE
    wrong = []
    for name in sorted(pure):
        for imp in imports_of(name, known[name], known):
            top = imp.target.split(".")[0]
            if top in PACKAGES:
                ok = _known_module(imp.target, known) in pure | {"gateway"}
            else:
                ok = top in PURE_THIRD_PARTY or (
                    top in sys.stdlib_module_names and top not in IO_STDLIB
                )
            if not ok:
                wrong.append(f"{name} imports {imp.target} at {imp.where(ROOT)}")
    assert not wrong, "the pure core reaches out:\n" + "\n".join(wrong)


# The graph functions on a package written for the occasion.


def _write(root: Path, files: Mapping[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_a_cycle_through_every_import_form_is_found_and_named(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from . import b\n",
            "pkg/b.py": "from pkg.sub.c import thing\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/c.py": "thing = 1\n\n\ndef later():\n    from ..a import x\n    return x\n",
            "pkg/d.py": "import pkg.a\n",  # into the cycle, not part of it
        },
    )
    graph = import_graph(tmp_path, ["pkg"])
    assert strongly_connected(graph) == [["pkg.a", "pkg.b", "pkg.sub.c"]]
    (line,) = describe_cycles(graph, tmp_path)
    assert "pkg.a -> pkg.b at pkg/a.py:1" in line
    assert "pkg.b -> pkg.sub.c at pkg/b.py:1" in line
    assert "pkg.sub.c -> pkg.a at pkg/sub/c.py:5" in line
    assert "pkg.d" not in line


def test_a_type_only_import_closes_a_cycle_and_is_marked(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "import pkg.b\n",
            "pkg/b.py": (
                "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from pkg.a import A\n"
            ),
        },
    )
    graph = import_graph(tmp_path, ["pkg"])
    (line,) = describe_cycles(graph, tmp_path)
    assert "pkg.b -> pkg.a at pkg/b.py:4 (type-only)" in line


def test_imports_pointing_one_way_are_no_cycle(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            # The package imports a name, not a submodule: the edge is to pkg, and pkg.b's
            # import of pkg (its own package) is no edge back.
            "pkg/__init__.py": "VERSION = 1\n",
            "pkg/a.py": "from pkg import b\nfrom pkg.c import C\n",
            "pkg/b.py": "from pkg import VERSION\nfrom . import c\n",
            "pkg/c.py": "import json\nC = 1\n",
        },
    )
    graph = import_graph(tmp_path, ["pkg"])
    assert set(graph["pkg.a"]) == {"pkg.b", "pkg.c"}
    assert set(graph["pkg.b"]) == {"pkg.c"}
    assert graph["pkg.c"] == {}
    assert describe_cycles(graph, tmp_path) == []


def test_a_package_that_imports_its_importer_is_a_cycle(tmp_path: Path) -> None:
    # `import outer.inner.mod` runs outer/inner/__init__.py first; if that imports the
    # importer, the two wait on each other at start-up.
    _write(
        tmp_path,
        {
            "outer/__init__.py": "",
            "outer/inner/__init__.py": "from outer import top\n",
            "outer/inner/mod.py": "X = 1\n",
            "outer/top.py": "import outer.inner.mod\n",
        },
    )
    graph = import_graph(tmp_path, ["outer"])
    assert strongly_connected(graph) == [["outer.inner", "outer.top"]]


# ------------------------------------------------------------------ SQL in gateway/ledger/ only

# asyncpg's methods that take SQL text (or, for copy_records_to_table, a table name) first.
SQL_METHODS = frozenset(
    {
        "fetch",
        "fetchrow",
        "fetchval",
        "execute",
        "executemany",
        "copy_records_to_table",
        "cursor",
        "prepare",
    }
)
_SQL_KEYWORDS = ("query", "table_name")
LEDGER = "gateway/ledger/"
# Files outside gateway/ledger/ whose SQL is not the ledger's, each with the reason.
SQL_ALLOWED = {
    # It makes the embedded server's database before any ledger exists in it.
    "gateway/app/embedded.py": "administration of the embedded server (CREATE DATABASE), not the ledger",
}


def _string_names(tree: ast.AST) -> set[str]:
    """Names the file binds to string text, anywhere (`_ORIGINALS = ("SELECT ..." " ...")`)."""
    names: set[str] = set()
    grew = True
    while grew:  # a name bound to text built from another such name counts too
        grew = False
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                targets, value = node.targets, node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                targets, value = [node.target], node.value
            else:
                continue
            if not _is_text(value, names):
                continue
            for target in targets:
                if isinstance(target, ast.Name) and target.id not in names:
                    names.add(target.id)
                    grew = True
    return names


def _is_text(node: ast.expr, names: set[str]) -> bool:
    """Whether the expression is string text: a literal, an f-string, a name bound to text, or
    text built from those (`+`, `%`, a conditional, a method of a string such as `.format`)."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.Name):
        return node.id in names
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
        return _is_text(node.left, names) or _is_text(node.right, names)
    if isinstance(node, ast.IfExp):
        return _is_text(node.body, names) or _is_text(node.orelse, names)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return _is_text(node.func.value, names)
    return False


def sql_calls(path: Path) -> list[int]:
    """Lines where the file hands SQL text to one of asyncpg's methods."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = _string_names(tree)
    lines = []
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in SQL_METHODS
        ):
            continue
        first = node.args[:1] or [k.value for k in node.keywords if k.arg in _SQL_KEYWORDS]
        if first and _is_text(first[0], names):
            lines.append(node.lineno)
    return sorted(lines)


def sql_outside_ledger(root: Path, allowed: Mapping[str, str]) -> list[str]:
    """`path:line` of every SQL call in `gateway/` and `adapters/` outside gateway/ledger/ and
    outside the allowed files."""
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root).as_posix()
            if relative.startswith(LEDGER) or any(fnmatch(relative, p) for p in allowed):
                continue
            found.extend(f"{relative}:{line}" for line in sql_calls(path))
    return found


def test_sql_is_written_in_the_ledger_only() -> None:
    """Every statement lives in a module of gateway/ledger/ named after what it stores; the
    rest of the code calls those functions."""
    # The scan is the real one: it sees the SQL the allowed file holds.
    assert sql_calls(ROOT / "gateway" / "app" / "embedded.py")
    assert sql_calls(ROOT / "gateway" / "ledger" / "fees.py")
    wrong = sql_outside_ledger(ROOT, SQL_ALLOWED)
    assert not wrong, "SQL outside gateway/ledger/ (move it into a ledger module):\n" + "\n".join(
        wrong
    )


def test_every_sql_allowance_names_existing_files() -> None:
    """An allowance for a file renamed or deleted would silently cover its successor."""
    every = [p.relative_to(ROOT).as_posix() for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    stale = [p for p in SQL_ALLOWED if not any(fnmatch(f, p) for f in every)]
    assert not stale, f"allowances that match no file: {stale}"
    assert all(reason.strip() for reason in SQL_ALLOWED.values())


def test_sql_in_every_form_is_found_outside_the_ledger(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "gateway/__init__.py": "",
            "gateway/ledger/__init__.py": "",
            "gateway/ledger/rows.py": (
                "async def count(conn):\n    return await conn.fetchval('SELECT count(*) FROM t')\n"
            ),
            "gateway/handler.py": (
                "_ONE = ('SELECT a FROM t'\n"
                "        ' WHERE b = $1')\n"
                "_TWO = _ONE + ' FOR UPDATE'\n"
                "async def run(conn, call, table, lock, query):\n"
                "    await conn.execute('DELETE FROM t')\n"  # 5: a literal
                "    await conn.fetch(f'SELECT * FROM {table}')\n"  # 6: an f-string
                "    await call.conn.fetchrow(_ONE, 1)\n"  # 7: a name bound to SQL
                "    await conn.fetchrow(_TWO, 1)\n"  # 8: built from such a name
                "    await conn.fetch('SELECT 1' + (' FOR UPDATE' if lock else ''))\n"  # 9
                "    await conn.copy_records_to_table('t', records=[])\n"  # 10: a table name
                "    await conn.execute(query='UPDATE t SET a = 1')\n"  # 11: by keyword
                "    await conn.execute(query)\n"  # a parameter: SQL from elsewhere
                "    await conn.execute(rows.INSERT)\n"  # the ledger's own text
                "    await executor.execute(job)\n"
                "    conn.execute\n"
            ),
            "adapters/__init__.py": "",
            "adapters/side.py": "async def f(conn):\n    await conn.executemany('INSERT', [])\n",
            "gateway/later.py": "async def f(conn):\n    await conn.fetchval('SELECT 1')\n",
        },
    )
    found = sql_outside_ledger(tmp_path, {"gateway/later.py": "moved later"})
    assert found == [f"gateway/handler.py:{n}" for n in range(5, 12)] + ["adapters/side.py:2"]


# Which way imports between the adapters and the gateway point.
ADAPTERS_OF_CLIENTS = ("adapters.his", "adapters.pos")
COMPOSITION_ROOT = ("gateway.app", "gateway.__main__")


def _inside(module: str, packages: Iterable[str]) -> str | None:
    return next((p for p in packages if module == p or module.startswith(p + ".")), None)


def one_way_violations(graph: Mapping[str, Mapping[str, Import]], root: Path) -> list[str]:
    """Imports against the direction the layout promises: the HIS and POS adapters decode their
    clients' shapes into the gateway's requests and are loaded by the composition root alone
    (gateway/app registers them); no other part of the gateway, and not the national wire
    layer both adapters share, reaches into one; and neither adapter reaches into the other."""
    wrong = []
    for name, edges in sorted(graph.items()):
        own = _inside(name, ADAPTERS_OF_CLIENTS)
        for target, imp in sorted(edges.items()):
            into = _inside(target, ADAPTERS_OF_CLIENTS)
            if into is None or into == own or _inside(name, COMPOSITION_ROOT):
                continue
            wrong.append(f"{name} imports {target} at {imp.where(root)}")
    return wrong


def test_only_the_composition_root_imports_the_client_adapters() -> None:
    graph = import_graph(ROOT, PACKAGES)
    # The graph is the real one: the root does load both adapters.
    assert "adapters.pos.pharmacy" in graph["gateway.app.openapi"]
    assert "adapters.his.transactions" in graph["gateway.app.server"]
    wrong = one_way_violations(graph, ROOT)
    assert not wrong, "imports against the layout's direction:\n" + "\n".join(wrong)


def test_an_import_into_an_adapter_from_below_is_named(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "gateway/__init__.py": "",
            "gateway/app/__init__.py": "",
            "gateway/app/server.py": "import adapters.his.visit\n",
            "gateway/jobs/__init__.py": "",
            "gateway/jobs/replay.py": "def run():\n    from adapters.his import visit\n",
            "adapters/__init__.py": "",
            "adapters/his/__init__.py": "",
            "adapters/his/visit.py": "from adapters.pos import sale\n",
            "adapters/pos/__init__.py": "",
            "adapters/pos/sale.py": "from adapters.national import wire\n",
            "adapters/national/__init__.py": "",
            "adapters/national/wire.py": "",
        },
    )
    wrong = one_way_violations(import_graph(tmp_path, PACKAGES), tmp_path)
    assert wrong == [
        "adapters.his.visit imports adapters.pos at adapters/his/visit.py:1",
        "adapters.his.visit imports adapters.pos.sale at adapters/his/visit.py:1",
        "gateway.jobs.replay imports adapters.his at gateway/jobs/replay.py:2",
        "gateway.jobs.replay imports adapters.his.visit at gateway/jobs/replay.py:2",
    ]


# The HIS and POS adapters decode and encode; a transaction's reads and writes are its service's.
LEDGER_PACKAGE = ("gateway.ledger",)


def ledger_reached_from_the_client_adapters(
    graph: Mapping[str, Mapping[str, Import]], root: Path
) -> list[str]:
    """Imports of `gateway/ledger/` from `adapters/his/` or `adapters/pos/`: the adapter of a
    transaction decodes the national shape into its service's request (gateway/services/),
    calls the service and encodes its answer; what is read, checked and written is the
    service's. A type-only import counts too: a record a request carries is named through the
    service that takes it. The national wire layer (`adapters/national/`) may read ledger
    records to encode them."""
    wrong = []
    for name, edges in sorted(graph.items()):
        if _inside(name, ADAPTERS_OF_CLIENTS) is None:
            continue
        for target, imp in sorted(edges.items()):
            if _inside(target, LEDGER_PACKAGE) is not None:
                kind = " (type only)" if imp.type_only else ""
                wrong.append(f"{name} imports {target} at {imp.where(root)}{kind}")
    return wrong


def test_the_client_adapters_reach_the_ledger_through_services_only() -> None:
    graph = import_graph(ROOT, PACKAGES)
    # The graph is the real one: the services do read the ledger, the adapters call them.
    assert "gateway.ledger.encounters" in graph["gateway.services.encounters"]
    assert "gateway.services.encounters" in graph["adapters.his.outpatient"]
    wrong = ledger_reached_from_the_client_adapters(graph, ROOT)
    assert not wrong, "adapters doing a service's work:\n" + "\n".join(wrong)


def test_a_ledger_import_from_a_client_adapter_is_named(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "gateway/__init__.py": "",
            "gateway/ledger/__init__.py": "",
            "gateway/ledger/fees.py": "",
            "gateway/ledger/settlements.py": "",
            "gateway/services/__init__.py": "",
            "gateway/services/uploads.py": "from gateway.ledger import fees\n",
            "adapters/__init__.py": "",
            "adapters/his/__init__.py": "",
            "adapters/his/visit.py": (
                "from gateway.services import uploads\n\n\ndef later():\n"
                "    import gateway.ledger.fees\n"
            ),
            "adapters/pos/__init__.py": "",
            "adapters/pos/sale.py": (
                "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
                "    from gateway.ledger.settlements import Record\n"
            ),
            "adapters/national/__init__.py": "",
            "adapters/national/output.py": "from gateway.ledger.settlements import Record\n",
        },
    )
    wrong = ledger_reached_from_the_client_adapters(import_graph(tmp_path, PACKAGES), tmp_path)
    assert wrong == [
        "adapters.his.visit imports gateway.ledger at adapters/his/visit.py:5",
        "adapters.his.visit imports gateway.ledger.fees at adapters/his/visit.py:5",
        "adapters.pos.sale imports gateway.ledger at adapters/pos/sale.py:4 (type only)",
        "adapters.pos.sale imports gateway.ledger.settlements at adapters/pos/sale.py:4"
        " (type only)",
    ]
