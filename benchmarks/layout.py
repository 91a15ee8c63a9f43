"""The code's shape at a git revision (default: the working tree): lines of Python per folder,
the longest functions, and the imports that point the wrong way (the layers of
tests/test_architecture.py: machinery <- methods <- metrics <- experiments <- scripts).

    PYTHONPATH=. python -m benchmarks.layout              # the working tree
    PYTHONPATH=. python -m benchmarks.layout --rev HEAD~5  # an earlier commit, side by side
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Each layer may import its own and the layers before it, but metrics import no method (they
# evaluate image folders); testbed/ and benchmarks/ stand beside the scripts (they may import
# every layer but the scripts); tests/ import anything.
LAYERS = ("machinery", "methods", "metrics", "experiments", "scripts")
OUTSIDE = ("testbed", "benchmarks", "tests")
SCRIPT = re.compile(r"\d_\w+")


def python_files(rev: str | None) -> dict[str, str]:
    """Path -> source of every tracked Python file at ``rev`` (None: the working tree, untracked
    files that git does not ignore included)."""
    if rev is None:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.split()
        return {path: open(os.path.join(ROOT, path)).read() for path in listed if os.path.exists(os.path.join(ROOT, path))}
    listed = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.split()
    return {path: subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout for path in listed if path.endswith(".py")}


def folder_of(path: str) -> str:
    parts = path.split("/")
    if len(parts) == 1:
        return "scripts" if parts[0][0].isdigit() else "."
    if parts[0] == "utils" and len(parts) > 2 and parts[1] == "methods":
        return "utils/methods"
    return parts[0]


def longest_functions(files: dict[str, str], count: int) -> list[tuple[int, str]]:
    """The ``count`` longest functions (lines, 'path: name'), nested ones counted on their own."""
    found = []
    for path, source in files.items():
        for node in ast.walk(ast.parse(source, path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((node.end_lineno - node.lineno + 1, f"{path}: {node.name}"))
    return sorted(found, reverse=True)[:count]


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name of this repository (None: a library's)."""
    top = module.split(".")[0]
    if SCRIPT.fullmatch(top):
        return "scripts"
    if module == "utils.methods" or module.startswith("utils.methods."):
        return "methods"
    return {"utils": "machinery", "metrics": "metrics", "experiments": "experiments"}.get(
        top, top if top in OUTSIDE else None)


def imported(source: str, module: str, package: bool = False) -> set[str]:
    """Every module a source imports, at its top or inside a function, or by ``import_module``
    with a literal name; ``module``: its dotted name (``package``: an ``__init__``)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing package
                parts = module.split(".")
                parts = parts if package else parts[:-1]
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)):
            names.add(node.args[0].value)
    return names


def violations(files: dict[str, str]) -> list[str]:
    """Every import against the layers: a layer importing a later one, metrics importing a
    method, or testbed/ or benchmarks/ importing a numbered script or the tests (tests/ may
    import anything)."""
    found = []
    for path, source in files.items():
        if path.startswith("tests/"):
            continue
        module = path[:-3].replace("/", ".").removesuffix(".__init__")
        own = layer_of(module)
        for name in imported(source, module, path.endswith("__init__.py")):
            target = layer_of(name)
            if own is None or target is None or (target == own and own != "scripts"):
                continue
            if own == "scripts" and target == "scripts" or own in OUTSIDE and target in ("scripts", "tests"):
                found.append(f"{module} imports {name} ({target})")
            elif own not in OUTSIDE and (target in OUTSIDE or LAYERS.index(target) > LAYERS.index(own)
                                         or (own, target) == ("metrics", "methods")):
                found.append(f"{module} ({own}) imports {name} ({target})")
    return sorted(found)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", default=None, help="git revision (default: the working tree)")
    parser.add_argument("--longest", type=int, default=8, help="how many of the longest functions to list")
    args = parser.parse_args(argv)
    files = python_files(args.rev)
    lines = Counter()
    for path, source in files.items():
        lines[folder_of(path)] += source.count("\n")
    print(f"{args.rev or 'working tree'}: {sum(lines.values())} lines of Python in {len(files)} files")
    for folder, count in sorted(lines.items()):
        print(f"  {folder:<15} {count:>6}")
    print("longest functions (lines):")
    for length, name in longest_functions({p: s for p, s in files.items() if not p.startswith("tests/")},
                                          args.longest):
        print(f"  {length:>4}  {name}")
    wrong = violations(files)
    print(f"imports against the layers: {len(wrong)}" + "".join(f"\n  {line}" for line in wrong))
    return dict(lines=dict(lines), wrong_imports=wrong)


if __name__ == "__main__":
    main()
