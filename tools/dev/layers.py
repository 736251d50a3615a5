"""The house rules as a check: which folder of the plugin may import which, no `qgis` in the core, no import circle.

Every import counts, at the top of a module or inside a function, relative or absolute. Standard library only, so
it reads any checkout without importing it (``python -m tools.dev.layers [ROOT]``; the test suite runs it).
"""

import ast
import sys
from pathlib import Path

PACKAGE = "segearth_qgis"
CORE = f"{PACKAGE}.core"
# The core's floors, lowest first: a folder may import its own floor's modules in the same folder and any lower
# floor, never a higher floor or a sibling folder of its own floor. ``setup`` runs before the ML stack exists, so
# it stands on ``common`` alone.
CORE_FLOORS = {"common": 0, "method": 1, "runtime": 2, "gis": 2, "pipeline": 3, "eval": 4, "train": 4}
ONLY_COMMON = {"setup"}
# Outside the core: the QGIS glue may import the core, the core never the glue; nothing of the plugin imports the
# developer tools; build tooling uses the standard library only.
GLUE = ("processing", "gui", "plugin", "compat", "cli", "unsupported")


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(root: Path, path: Path) -> list[tuple[str, int]]:
    """(absolute name, line) for every import in the file; ``from X import name`` yields ``X.name``, which
    ``graph`` shortens to ``X`` where ``name`` is not a module of its own."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    current = module_name(root, path)
    package = current if path.name == "__init__.py" else current.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found += [(f"{target}.{alias.name}", node.lineno) for alias in node.names]
    return found


def python_files(root: Path) -> list[Path]:
    return sorted(p for top in (PACKAGE, "tools") if (root / top).is_dir() for p in (root / top).rglob("*.py"))


def graph(root: Path) -> dict:
    """{module: [(imported module of the tree, line), ...]} over segearth_qgis and tools."""
    files = python_files(root)
    modules = {module_name(root, p): p for p in files}
    edges = {}
    for name, path in modules.items():
        targets = []
        for target, line in imports_of(root, path):
            while target and target not in modules:
                target = target.rpartition(".")[0]   # X.name where name is not a module: X itself
            if target and target != name:
                targets.append((target, line))
        edges[name] = sorted(set(targets))
    return edges


def core_room(module: str) -> str | None:
    """The core folder (or ``pipeline``) a core module lives in; None for the core's own __init__."""
    if module == CORE:
        return None
    rest = module[len(CORE) + 1:].split(".")
    return rest[0]


def rule_broken(source: str, target: str) -> str | None:
    """Why ``source`` may not import ``target`` (two modules of the tree), or None."""
    if source.startswith("tools.build") and not target.startswith("tools.build"):
        return "build tooling uses the standard library only"
    if source.startswith(PACKAGE) and target.startswith("tools"):
        return "the plugin never imports the developer tools (the zip does not ship them)"
    if not source.startswith(CORE + ".") or not target.startswith(PACKAGE):
        return None
    if not target.startswith(CORE):
        return "the core imports nothing of the QGIS glue"
    if target == CORE:
        return "inside the core, import from the module itself, not from the public segearth_qgis.core"
    room, other = core_room(source), core_room(target)
    if room == other:
        return None
    if room in ONLY_COMMON:
        return None if other == "common" else f"core/{room} may import only core/common"
    if other in ONLY_COMMON:
        return f"core/{other} is the installer's room: nothing else in the core imports it"
    floor, other_floor = CORE_FLOORS[room], CORE_FLOORS[other]
    if other_floor > floor:
        return f"core/{room} (floor {floor}) may not import core/{other} (floor {other_floor}): a lower layer " \
               "never imports a higher one"
    if other_floor == floor:
        return f"core/{room} and core/{other} share floor {floor}: neither imports the other"
    return None


def circles(edges: dict) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target, _ in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(edges) + 100))
    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def qgis_in_core(root: Path) -> list[str]:
    problems = []
    for path in python_files(root):
        name = module_name(root, path)
        if not name.startswith(CORE):
            continue
        for target, line in imports_of(root, path):
            if target.split(".")[0] in ("qgis", "processing"):
                problems.append(f"{path.relative_to(root)}:{line}: imports {target}: the core has no qgis import")
    return problems


def standard_library_only(root: Path) -> list[str]:
    problems = []
    for path in python_files(root):
        name = module_name(root, path)
        if not name.startswith("tools.build"):
            continue
        for target, line in imports_of(root, path):
            top = target.split(".")[0]
            if top not in sys.stdlib_module_names and top != "tools":
                problems.append(f"{path.relative_to(root)}:{line}: imports {target}: build tooling uses the "
                                "standard library only")
    return sorted(set(problems))


def violations(root: Path) -> list[str]:
    """Every broken rule in the checkout at ``root``, one line each (empty: the house is in order)."""
    root = Path(root)
    edges = graph(root)
    problems = qgis_in_core(root) + standard_library_only(root)
    for source, targets in sorted(edges.items()):
        for target, line in targets:
            why = rule_broken(source, target)
            if why and not (source.startswith("tools.build") and why.startswith("build tooling")):
                problems.append(f"{source} imports {target} (line {line}): {why}")
    for component in circles(edges):
        problems.append(f"import circle: {' <-> '.join(component)}")
    return problems


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[2]
    problems = violations(root)
    for problem in problems:
        print(problem)
    print(f"{len(problems)} layer rule(s) broken" if problems else "layers: in order")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
