"""The package's layers: faces (command line, web, scheduler) use rules, rules use storage, and
storage uses only the records and the database. No module imports one from a layer above it."""

from __future__ import annotations

import ast
from pathlib import Path

import newsletter

PACKAGE = Path(newsletter.__file__).parent

# (layer, module prefixes), lowest first; a module belongs to the longest prefix that names it
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",
        (
            "newsletter",
            "newsletter.errors",
            "newsletter.private",
            "newsletter.config",
            "newsletter.db",
            "newsletter.links",  # every public URL, outbox key and Feedback-ID
        ),
    ),
    (
        "records",
        (
            "newsletter.subscribers.records",
            "newsletter.content.records",
            "newsletter.issues.records",
            "newsletter.bounces.records",
            "newsletter.delivery.records",
            "newsletter.delivery.replies",  # what an SMTP reply means: pure
            "newsletter.delivery.pacing",  # the rate limiter and backoff: pure
            "newsletter.bounces.policy",
            "newsletter.content.embed",  # the sentence model: pure but for loading it
        ),
    ),
    (
        "storage",
        (
            "newsletter.subscribers.repository",
            "newsletter.content.repository",
            "newsletter.issues.repository",
            "newsletter.bounces.repository",
            "newsletter.delivery.claims",
            "newsletter.delivery.ledger",
            "newsletter.operators",
            "newsletter.store",
        ),
    ),
    (
        "rules",
        (
            "newsletter.subscribers",
            "newsletter.content",
            "newsletter.issues",
            "newsletter.bounces",
            "newsletter.delivery",
            "newsletter.reports",
        ),
    ),
    ("faces", ("newsletter.cli", "newsletter.web", "newsletter.schedule")),
]


def _layer(module: str) -> int:
    best = (-1, -1)  # (prefix length, layer)
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best[0]:
                best = (len(prefix), rank)
    assert best[1] >= 0, f"{module} is in no layer: add it to LAYERS"
    return best[1]


def _module_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, module) of every newsletter import run at import or call time; an import for type
    checking only (under `if TYPE_CHECKING:`) runs never and is left out."""
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
        for node in ast.walk(block)
    }
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.startswith("newsletter"):
                found += [(node.lineno, f"{target}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("newsletter")]
    return found


def test_no_module_imports_from_a_layer_above_it() -> None:
    wrong = []
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 50  # the whole package is read
    for path in modules:
        if "migrations" in path.parts:
            continue
        module = _module_of(path)
        mine = _layer(module)
        for line, target in _imports(path, module):
            theirs = _layer(target)
            if theirs > mine:
                wrong.append(f"{module}:{line} ({LAYERS[mine][0]}) imports {target} ({LAYERS[theirs][0]})")
    assert wrong == []


def test_the_layer_check_sees_a_wrong_import(tmp_path: Path) -> None:
    """The check above would fail: a repository importing a face is caught."""
    fake = PACKAGE / "subscribers" / "repository.py"
    source = tmp_path / "repository.py"
    source.write_text("from ..web import create_app\nfrom ..db.models import Subscriber\n")
    found = _imports(source, "newsletter.subscribers.repository")
    assert found == [(1, "newsletter.web.create_app"), (2, "newsletter.db.models.Subscriber")]
    assert _layer("newsletter.web.create_app") > _layer(_module_of(fake))
