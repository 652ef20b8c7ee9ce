"""The package's import structure: no import cycles, and the library never imports the CLI.

The layers, from the bottom: storage formats and kernels, operators, the layer graph, I/O,
the zoo, pruning, benchmarking, and on top the command line (``fscnn.cli``), which nothing
else imports. The checks read the source (module-level imports, which run at import time)
and run a fresh interpreter (what ``import fscnn`` actually loads).
"""
import ast
import os
import subprocess
import sys

import fscnn

PACKAGE_DIR = os.path.dirname(os.path.abspath(fscnn.__file__))
TOP = ("fscnn.cli", "fscnn.__main__")  # the command line: may import anything


def _modules():
    """name -> source path of every module of the package."""
    found = {}
    root = os.path.dirname(PACKAGE_DIR)
    for folder, _, files in os.walk(PACKAGE_DIR):
        for file in files:
            if file.endswith(".py"):
                path = os.path.join(folder, file)
                parts = os.path.relpath(path, root)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts.pop()
                found[".".join(parts)] = path
    return found


def _is_package(name, modules):
    return modules[name].endswith("__init__.py")


def _imports(name, modules, module_level):
    """The package's modules that ``name`` imports; with ``module_level``, only the imports
    that run when it is imported (not those inside functions)."""
    tree = ast.parse(open(modules[name]).read())
    package = name if _is_package(name, modules) else name.rpartition(".")[0]
    nodes, stack = [], [tree]
    while stack:
        node = stack.pop()
        if module_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            nodes.append(node)
        stack.extend(ast.iter_child_nodes(node))
    targets = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        if node.level:
            base = package.split(".")
            base = base[:len(base) - node.level + 1]
            base = ".".join(base + ([node.module] if node.module else []))
        else:
            base = node.module
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            targets.add(sub if sub in modules else base)
    return {t for t in targets if t in modules and t != name}


def test_the_library_never_imports_the_cli():
    modules = _modules()
    offenders = {name: sorted(t for t in _imports(name, modules, module_level=False)
                              if t in TOP)
                 for name in modules if name not in TOP}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_import_fscnn_does_not_load_the_cli(tmp_path):
    code = ("import sys, fscnn, fscnn.bench, fscnn.prune, fscnn.io; "
            "print(sorted(m for m in sys.modules if m.startswith('fscnn.cli')))")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(PACKAGE_DIR) + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    # cwd outside the checkout: `python -c` puts its working directory first on sys.path, where
    # the source tree (without compiled extensions) would shadow the fscnn under test
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_no_import_cycles():
    modules = _modules()
    graph = {name: _imports(name, modules, module_level=True) for name in modules}
    # a package's __init__ importing its own submodules is how packages are built; a cycle is
    # a module that (transitively) imports a module importing it back
    cycles, state = [], {}

    def visit(name, path):
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_the_scan_sees_imports():
    """The checks above would pass vacuously if the scan found nothing: it must find the
    imports that are known to be there."""
    modules = _modules()
    assert {"fscnn.cli", "fscnn.nn._plan", "fscnn.sparse.formats", "fscnn.models.vgg"} \
        <= set(modules)
    assert "fscnn.ops" in _imports("fscnn.nn._plan", modules, module_level=True)
    assert "fscnn._table" in _imports("fscnn.prune", modules, module_level=True)
    assert "fscnn.bench" in _imports("fscnn.cli", modules, module_level=False)
    assert "fscnn.bench" not in _imports("fscnn.cli", modules, module_level=True)
