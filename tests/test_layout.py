"""The layout of the project's own modules: no import cycle, and the one-way rules between packages.

Every .py file outside .venv/, var/ and hidden directories is parsed, not
imported. Each import in it, at module level or inside a function (a lazy
import still closes a cycle), becomes an edge to the project module it
names: ``import a.b`` and ``from a.b import name`` lead to ``a.b``, or to
the submodule ``a.b.name`` when there is one; relative imports are resolved
against the importing module's package. A package's ``__init__.py`` is the
module named for the package. Imports of anything else (the standard
library, installed packages) are left out.
"""

import ast
import functools
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIPPED_DIRS = {".venv", "var", "__pycache__", "node_modules"}


# -- the graph ------------------------------------------------------------------


@functools.cache
def project_modules(root):
    """{module name: path} of every .py file of the project under ``root``.

    A file whose name holds a dot (gunicorn.conf.py) cannot be imported: it is
    named by its path, so no import resolves to it.
    """
    modules = {}
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(name for name in subdirectories
                                   if name not in SKIPPED_DIRS and not name.startswith("."))
        for name in sorted(files):
            if name.endswith(".py"):
                path = Path(directory) / name
                modules[_module_name(path.relative_to(root))] = path
    return modules


def _module_name(relative):
    if "." in relative.stem:
        return relative.as_posix()
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(tree, module, is_package):
    """(line, module named, name imported from it or None) for every import statement in ``tree``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            yield from ((node.lineno, _absolute(node, module, is_package), alias.name) for alias in node.names)


def _absolute(node, module, is_package):
    """The module an ``ast.ImportFrom`` names, relative levels resolved against ``module``'s package."""
    if not node.level:
        return node.module
    package = module if is_package else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return ".".join(part for part in (package, node.module) if part)


def _resolve(modules, named, name):
    """The project module an import leads to, or None: the submodule ``named.name`` if it exists, else the
    longest prefix of ``named`` that is a project module."""
    if name and f"{named}.{name}" in modules:
        return f"{named}.{name}"
    parts = named.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


@functools.cache
def import_graph(root=ROOT):
    """{module: {imported project module: line of the first import}} for the project under ``root`` (read
    once: do not change what it returns)."""
    modules = project_modules(root)
    graph = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges = graph[module] = {}
        for line, named, name in _imports(tree, module, path.name == "__init__.py"):
            target = _resolve(modules, named, name) if named else None
            if target and target != module:
                edges.setdefault(target, line)
    return graph


# -- cycles ---------------------------------------------------------------------


def strongly_connected(graph):
    """Tarjan's strongly connected components of ``graph`` with more than one module."""
    index, lowlink, on_stack, stack, components = {}, {}, set(), [], []

    def visit(node):
        index[node] = lowlink[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                lowlink[node] = min(lowlink[node], lowlink[target])
            elif target in on_stack:
                lowlink[node] = min(lowlink[node], index[target])
        if lowlink[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def a_cycle(graph, component):
    """One cycle through the first module of ``component``, as a list of modules ending where it starts."""
    members, start = set(component), component[0]
    paths, seen = {start: [start]}, {start}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node]):
                if target == start:
                    return paths[node] + [start]
                if target in members and target not in seen:
                    seen.add(target)
                    paths[target] = paths[node] + [target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {component}")


def describe(graph, cycle, modules, root):
    """``a (a.py:3) -> b (b.py:7) -> a``: where each import of the cycle is."""
    steps = [f"{here} ({modules[here].relative_to(root).as_posix()}:{graph[here][there]})"
             for here, there in zip(cycle, cycle[1:])]
    return " -> ".join(steps + [cycle[-1]])


def cycles(root=ROOT):
    """A cycle of each group of modules that import each other round, described; the group's other members
    (when the cycle does not pass through them all) after it."""
    graph, modules = import_graph(root), project_modules(root)
    found = []
    for component in strongly_connected(graph):
        cycle = a_cycle(graph, component)
        others = sorted(set(component) - set(cycle))
        found.append(describe(graph, cycle, modules, root) + (f"; in the same cycles: {', '.join(others)}"
                                                               if others else ""))
    return found


# -- one-way rules ----------------------------------------------------------------


def _within(module, package):
    return module == package or module.startswith(package + ".")


def imports_breaking(rule, root=ROOT):
    """``importer:line -> imported`` for every edge where ``rule(importer, imported)`` holds."""
    graph = import_graph(root)
    return sorted(f"{importer}:{line} -> {imported}" for importer, edges in graph.items()
                  for imported, line in edges.items() if rule(importer, imported))


def blueprint_imported_by_a_leaf(importer, imported):
    """A blueprint is a leaf: jobs and other blueprints share code through the modules beneath them. Only
    blueprints/__init__.py may import them, to register them."""
    leaf = importer != "blueprints" and (_within(importer, "blueprints") or _within(importer, "jobs"))
    return leaf and _within(imported, "blueprints")


def outside_tests_importing_tests(importer, imported):
    return not _within(importer, "tests") and _within(imported, "tests")


def harness_importing_tests(importer, imported):
    return _within(importer, "harness") and _within(imported, "tests")


def _none(found):
    assert found == [], "\n".join(["", *found])


def test_no_import_cycle():
    _none(cycles())


def test_jobs_and_blueprints_import_no_blueprint():
    _none(imports_breaking(blueprint_imported_by_a_leaf))


def test_nothing_outside_tests_imports_tests():
    _none(imports_breaking(outside_tests_importing_tests))


def test_harness_imports_no_tests():
    _none(imports_breaking(harness_importing_tests))


# -- the checks themselves can fail ----------------------------------------------------


def _tree(root, files):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_check_finds_a_cycle_through_lazy_and_relative_imports(tmp_path):
    _tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from . import b\n",
        "pkg/b.py": "def later():\n    from pkg.c import thing\n",
        "pkg/c.py": "import json\nimport pkg.a\nthing = 1\n",
        "top.py": "from pkg import a\n",
        "gunicorn.conf.py": "import top\n",
        ".venv/lib/pkg/a.py": "import top\n",
    })
    found = cycles(tmp_path)
    assert len(found) == 1
    assert found[0].startswith("pkg.a (") and found[0].count(" -> ") == 3 and found[0].endswith(" -> pkg.a")
    assert import_graph(tmp_path)["gunicorn.conf.py"] == {"top": 1}


def test_the_check_finds_a_package_importing_its_own_init(tmp_path):
    _tree(tmp_path, {"pkg/__init__.py": "from pkg.a import VALUE\n", "pkg/a.py": "from pkg import OTHER\nVALUE = 1\n"})
    assert len(cycles(tmp_path)) == 1


def test_the_rules_find_their_breaches(tmp_path):
    _tree(tmp_path, {
        "blueprints/__init__.py": "from blueprints import files\n",
        "blueprints/files.py": "",
        "blueprints/chats.py": "from blueprints.files import record\n",
        "jobs/__init__.py": "",
        "jobs/gc.py": "from blueprints import files\n",
        "tests/__init__.py": "",
        "tests/helpers.py": "",
        "harness/__init__.py": "",
        "harness/servers.py": "def later():\n    from tests import helpers\n",
    })
    assert imports_breaking(blueprint_imported_by_a_leaf, tmp_path) == ["blueprints.chats:1 -> blueprints.files",
                                                                      "jobs.gc:1 -> blueprints.files"]
    assert imports_breaking(outside_tests_importing_tests, tmp_path) == ["harness.servers:2 -> tests.helpers"]
    assert imports_breaking(harness_importing_tests, tmp_path) == ["harness.servers:2 -> tests.helpers"]
