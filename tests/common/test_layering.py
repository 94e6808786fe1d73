"""No module imports upward or in a circle: common/ below the five packages, each package alone.

The imports are read from the source with `ast` (also those inside functions, which hide a cycle
from Python but not from a reader), so nothing is imported to check them.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("kneeoa", "deepra", "spinenet", "boneage", "mura")
LAYERS = ("common", *PACKAGES)

# Known faults outside this change's reach, listed so that the test still runs over everything:
# common.verify takes the default of `--verify` from common.cli, which calls common.verify.
KNOWN_CYCLES = []
KNOWN_CLI_IMPORTS = set()


def module_files(root, tops):
    """{dotted module name: file} of every `.py` file under the folders `tops` of `root`."""
    found = {}
    for top in tops:
        for path in sorted((Path(root) / top).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def import_graph(root, tops):
    """{module: set of modules it imports}, restricted to the modules under `tops`."""
    files = module_files(root, tops)

    def known(name):
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(known(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in files else known(base))
        graph[name] = targets - {None, name}
    return graph


def cycles(graph):
    """The strongly connected components of more than one module (Tarjan), as sets."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = set()
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.add(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def upward_imports(graph):
    """`(module, imported)` pairs where common imports a package or a package another package."""
    faults = []
    for name, targets in graph.items():
        top = name.split(".")[0]
        for target in targets:
            other = target.split(".")[0]
            if other != top and other != "common":
                faults.append((name, target))
    return sorted(faults)


@pytest.fixture(scope="module")
def graph():
    return import_graph(ROOT, LAYERS)


def test_the_graph_sees_the_imports(graph):
    # a reader that found nothing would pass every check below
    assert "common.training" in graph["kneeoa.train"]
    assert "deepra.evaluate" in graph["deepra.train"]  # imported at the top since issue 13
    assert "common.run_config" in graph["common.training"]  # imported inside a function


def test_common_imports_no_package_and_no_package_another(graph):
    assert upward_imports(graph) == []


def test_no_common_module_imports_the_cli(graph):
    # the CLI is the top layer of common: it calls the rest, nothing in common calls it
    importers = {
        name
        for name, targets in graph.items()
        if "common.cli" in targets and name.startswith("common.")
    }
    assert importers == KNOWN_CLI_IMPORTS


def test_no_import_cycles(graph):
    assert sorted(map(sorted, cycles(graph))) == sorted(map(sorted, KNOWN_CYCLES))


def test_the_checks_find_faults(tmp_path):
    # The control: a cycle, an upward import and a package importing another are all reported.
    files = {
        "common/__init__.py": "",
        "common/a.py": "from common import b\n",
        "common/b.py": "def f():\n    from common.a import x\n",
        "common/c.py": "import kneeoa.model\n",
        "kneeoa/__init__.py": "",
        "kneeoa/model.py": "from common.c import y\nfrom deepra import data\nfrom . import train\n",
        "kneeoa/train.py": "from .model import z\n",
        "deepra/__init__.py": "",
        "deepra/data.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    found = import_graph(tmp_path, ("common", "kneeoa", "deepra"))
    assert sorted(map(sorted, cycles(found))) == [
        ["common.a", "common.b"],
        ["common.c", "kneeoa.model", "kneeoa.train"],  # through the upward import
    ]
    assert upward_imports(found) == [("common.c", "kneeoa.model"), ("kneeoa.model", "deepra.data")]
