"""The shape of the code, checked: floors, no import circles, small modules, docs in the repo.

Each package (or ground-floor module) stands on a floor (`FLOORS`, docs/architecture.md#floors);
a module imports only from lower floors, or from its own package.
"""

from __future__ import annotations

import ast
import inspect
import io
import re
import tokenize
from pathlib import Path

from emif_daemon.engine.runner import Engine

PACKAGE = Path(__file__).resolve().parent.parent / "emif_daemon"
REPO = PACKAGE.parent
MAX_MODULE_LINES = 400


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, name: str) -> set[str]:
    """Every module of the package that `path` imports, at any depth (lazy ones too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)
    known = modules()
    return {m for m in found if m in known and m != name}


# package (or ground-floor module) → floor; the most specific prefix decides
FLOORS = {
    "emif_daemon": 0,  # __init__: the version
    "emif_daemon.errors": 0,
    "emif_daemon.exit_codes": 0,
    "emif_daemon.events": 0,
    "emif_daemon.logs": 0,
    "emif_daemon.retry": 0,
    "emif_daemon.png": 0,
    "emif_daemon.share": 1,
    "emif_daemon.servers": 1,
    "emif_daemon.config": 2,
    "emif_daemon.engine": 3,
    "emif_daemon.intake": 3,
    "emif_daemon.macos": 3,
    "emif_daemon.stages": 4,
    "emif_daemon.observe": 4,
    "emif_daemon.dataset": 4,
    "emif_daemon.daemon": 5,
    "emif_daemon.cli": 6,
}


def home(name: str) -> str:
    """The entry of `FLOORS` that a module belongs to."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in FLOORS:
            return prefix
    raise AssertionError(f"{name} is on no floor: add its package to FLOORS")


def test_every_module_has_a_floor() -> None:
    assert {name: home(name) for name in modules()}


def test_nothing_imports_a_floor_above_its_own_or_a_neighbour_on_it() -> None:
    wrong = [
        f"{name} (floor {FLOORS[home(name)]}) imports {dep} (floor {FLOORS[home(dep)]})"
        for name, path in modules().items()
        for dep in sorted(imports_of(path, name))
        if home(dep) != home(name)
        and FLOORS[home(dep)] >= FLOORS[home(name)]
        and home(dep) != "emif_daemon"
    ]
    assert wrong == []


def test_the_package_tree_stays_a_few_rooms() -> None:
    """At most 8 modules on the ground floor, at most 15 in any subpackage."""
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 8, top
    crowded = {
        str(folder.relative_to(PACKAGE)): n
        for folder in PACKAGE.rglob("*")
        if folder.is_dir() and (n := len(list(folder.glob("*.py")))) > 15
    }
    assert crowded == {}


def test_there_is_no_import_circle() -> None:
    graph = {name: imports_of(path, name) for name, path in modules().items()}
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                circles.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert circles == []


def test_only_the_segment_model_imports_torch() -> None:
    heavy = {"torch", "torchvision", "segment_anything"}
    users = set()
    for name, path in modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            if any(n.split(".")[0] in heavy for n in names):
                users.add(name)
    assert users == {"emif_daemon.stages.segment_model", "emif_daemon.stages.sam_decoder"}


def test_no_module_is_over_400_lines_and_none_is_squeezed() -> None:
    """Nor kept under the limit by `# fmt: skip` joining lines the formatter would split."""
    long = {
        name: n
        for name, path in modules().items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}
    squeezed = [
        f"{name}:{n}"
        for name, path in modules().items()
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "fmt: skip" in line
    ]
    assert squeezed == []


def test_the_engine_takes_at_most_8_parameters() -> None:
    params = [p for p in inspect.signature(Engine.__init__).parameters if p != "self"]
    assert len(params) <= 8, params


def comments_and_docstrings(path: Path) -> list[tuple[int, str]]:
    text = path.read_text(encoding="utf-8")
    out = [
        (tok.start[0], tok.string)
        for tok in tokenize.generate_tokens(io.StringIO(text).readline)
        if tok.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                out.append((getattr(node, "lineno", 1), doc))
    return out


OUTSIDE = re.compile(r"\bSPEC\b|\.\./shared|\breference/|shared/reference|STYLE\.md")


def test_no_comment_points_outside_the_repository() -> None:
    sources = [*PACKAGE.rglob("*.py"), *(REPO / "tests").glob("*.py")]
    sources += [*(REPO / "benchmarks").glob("*.py")]
    bad = [
        f"{path.relative_to(REPO)}:{line}: {OUTSIDE.search(text).group(0)}"  # type: ignore[union-attr]
        for path in sources
        if path.name != "test_architecture.py"
        for line, text in comments_and_docstrings(path)
        if OUTSIDE.search(text)
    ]
    assert bad == []


def test_the_docs_that_comments_point_to_exist() -> None:
    """`docs/<page>.md#<anchor>` in a comment names a real page and heading."""
    pointer = re.compile(r"docs/([a-z_-]+\.md)(?:#([a-z0-9-]+))?")
    missing = []
    for path in [*PACKAGE.rglob("*.py"), *(REPO / "tests").glob("*.py")]:
        for line, text in comments_and_docstrings(path):
            for page, anchor in pointer.findall(text):
                doc = REPO / "docs" / page
                if not doc.exists():
                    missing.append(f"{path.name}:{line}: docs/{page}")
                elif anchor and anchor not in anchors(doc):
                    missing.append(f"{path.name}:{line}: docs/{page}#{anchor}")
    assert missing == []


def anchors(doc: Path) -> set[str]:
    """GitHub-style anchors of a Markdown page's headings."""
    out = set()
    for line in doc.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            title = re.sub(r"[^\w\- ]", "", title)
            out.add(title.replace(" ", "-"))
    return out


# Knowledge with one owner: the text that spells it, and the only module allowed to.
ONE_HOME = {
    r"\.plan\.json": "intake/plans.py",  # where plans live: read and written there alone
    r"%Y-%m-%dT%H:%M:%S": "share/clock.py",  # the UTC timestamp format
    r"^\s*(EXIT_\w+|OK|FAILED|USAGE|SERVER_DOWN)\s*(:\s*int\s*)?=\s*\d": "exit_codes.py",
}


def test_each_piece_of_knowledge_is_spelled_in_one_module() -> None:
    found = {
        pattern: sorted(
            str(path.relative_to(PACKAGE))
            for path in PACKAGE.rglob("*.py")
            if re.search(pattern, path.read_text(encoding="utf-8"), re.M)
        )
        for pattern in ONE_HOME
    }
    assert found == {pattern: [home] for pattern, home in ONE_HOME.items()}


def test_the_architecture_page_lists_every_module() -> None:
    """docs/architecture.md has a row for each module, by its path under emif_daemon/."""
    page = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [
        rel
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "__init__.py"
        and f"`{(rel := path.relative_to(PACKAGE).as_posix())}`" not in page
    ]
    assert missing == []
