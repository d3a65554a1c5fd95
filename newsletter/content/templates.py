"""The operator's templates (SPEC 10): eject copies the packaged ones into the folder, and a check
renders each with sample data and reads what it uses, so an override an upgrade left behind (a
name the new version no longer gives, "the upgrade trap") is named with its file and line before a
command builds or sends anything.

Mails render with StrictUndefined: a name their context lacks fails the render. The check does the
same render over the sample data below, and also reads each template's names, so a name on a
branch the sample does not take is found too."""

from __future__ import annotations

import shutil
import traceback
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import jinja2
from jinja2 import meta, nodes

from ..config import Settings
from ..errors import ConfigError, UsageError
from .digest import Digest, DigestStory, Section
from .render import (
    Placeholders,
    confirmation_context,
    environment,
    issue_context,
    welcome_context,
)

__all__ = [
    "TemplateProblem",
    "check_email",
    "eject",
    "overrides",
    "packaged_names",
    "problems_of",
    "sample_digest",
]

SAMPLE_NOW = datetime(2026, 11, 25, 7, 0, tzinfo=UTC)


class TemplateProblem(NamedTuple):
    file: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line or 1}: {self.reason}"


def packaged_names() -> list[str]:
    """Every packaged template, by its relative name (email/digest.html.j2 ...)."""
    root = resources.files("newsletter") / "templates"
    return sorted(_walk(root, ""))


def _walk(folder: Any, prefix: str) -> Iterable[str]:
    for entry in folder.iterdir():
        name = f"{prefix}{entry.name}"
        if entry.is_dir():
            yield from _walk(entry, f"{name}/")
        elif entry.name.endswith(".j2"):
            yield name


def overrides(folder: Path) -> list[str]:
    """The templates in the operator's folder, by relative name ("" when there is no folder)."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(
            f"configuration key 'newsletter.templates_dir' names {folder}, which is not a folder"
        )
    if not folder.is_dir():
        return []
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.j2") if p.is_file())


def eject(folder: Path, *, force: bool) -> list[Path]:
    """Copy every packaged template into `folder`; an existing copy is refused unless `force`
    (nothing is copied then). Returns the files written."""
    root = resources.files("newsletter") / "templates"
    names = packaged_names()
    there = [folder / n for n in names if (folder / n).exists()]
    if there and not force:
        raise UsageError(
            f"{there[0]} exists ({len(there)} of the {len(names)} templates are there already); "
            f"nothing was copied: --force overwrites them"
        )
    if folder.exists() and not folder.is_dir():
        raise ConfigError(
            f"configuration key 'newsletter.templates_dir' names {folder}, which is not a folder"
        )
    written = []
    for name in names:
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():  # --force replaces the link, never writes through it
            target.unlink()
        with resources.as_file(root.joinpath(*name.split("/"))) as source:
            shutil.copyfile(source, target)
        written.append(target)
    return written


def problems_of(
    env: jinja2.Environment,
    name: str,
    *,
    known: set[str],
    sample: Mapping[str, Any] | None,
    render: Callable[[jinja2.Template, Mapping[str, Any]], object] = jinja2.Template.render,
) -> list[TemplateProblem]:
    """A template's problems: its syntax, each name it reads that is not in `known` (with the line
    that first reads it), and what rendering it with `sample` raises. `sample` None: not rendered
    alone (a partial: its includer's render covers it)."""
    try:
        source, filename, _ = env.loader.get_source(env, name)  # type: ignore[union-attr]
        tree = env.parse(source, name, filename)
        template = env.get_template(name)
    except jinja2.TemplateSyntaxError as exc:
        return [TemplateProblem(exc.filename or name, exc.lineno, exc.message or "syntax error")]
    except UnicodeDecodeError as exc:
        folders = [
            Path(p)
            for loader in getattr(env.loader, "loaders", [env.loader])
            for p in getattr(loader, "searchpath", [])
        ]
        where = next((str(f / name) for f in folders if (f / name).is_file()), name)
        return [TemplateProblem(where, 1, f"is not UTF-8 text ({exc.reason} at byte {exc.start})")]
    file = filename or name
    found = []
    for var in sorted(meta.find_undeclared_variables(tree) - known - set(env.globals)):
        found.append(
            TemplateProblem(file, _first_read(tree, var), f"uses '{var}', which this template is not given")
        )
    # a filter or test that does not exist fails only when its line runs: on a branch the sample
    # does not take, it would pass the check and fail a later send
    for node in tree.find_all((nodes.Filter, nodes.Test)):
        kind, known_names = ("filter", env.filters) if isinstance(node, nodes.Filter) else ("test", env.tests)
        if node.name not in known_names:
            found.append(
                TemplateProblem(file, node.lineno, f"uses the {kind} '{node.name}', which does not exist")
            )
    if sample is not None and not found:
        contexts = [sample, {**sample, "weekly": True}] if "weekly" in sample else [sample]
        for context in contexts:  # the weekly edition's branch too
            try:
                render(template, context)
            except Exception as exc:  # noqa: BLE001 - whatever a template raises is reported, not raised
                where, line = _template_frame(exc, file)
                found.append(TemplateProblem(where, line, f"{type(exc).__name__}: {exc}"))
                break
    return found


def _first_read(tree: nodes.Template, var: str) -> int | None:
    lines = [n.lineno for n in tree.find_all(nodes.Name) if n.name == var and n.ctx == "load"]
    return min(lines) if lines else None


def _template_frame(exc: BaseException, fallback: str) -> tuple[str, int | None]:
    """Jinja rewrites a render's traceback so its frames are the templates' own lines: the
    innermost template frame is where it failed."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith(".j2")]
    if isinstance(exc, jinja2.TemplateSyntaxError):  # in an included template, found when included
        return exc.filename or fallback, exc.lineno
    if not frames:
        return fallback, None
    return frames[-1].filename, frames[-1].lineno


def stored_names(env: jinja2.Environment, names: Iterable[str]) -> set[str]:
    """Every name the templates set themselves (loop targets, `set`, macro arguments): what a
    partial may read from the template that includes it."""
    found: set[str] = set()
    for name in names:
        try:
            source, filename, _ = env.loader.get_source(env, name)  # type: ignore[union-attr]
            tree = env.parse(source, name, filename)
        except (jinja2.TemplateSyntaxError, jinja2.TemplateNotFound, UnicodeDecodeError):
            continue  # its own check names it
        found |= {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
    return found


# -- the sample data: what the tests render too ---------------------------------------------------


def sample_story(i: int, **changed: Any) -> DigestStory:
    base: dict[str, Any] = dict(
        id=i,
        title=f"Headline {i} & more",
        link=f"https://x.example/{i}",
        source="Example Wire",
        section="Tech News",
        summary=f"Summary {i}.",
        bullets=(),
        author="A. Writer",
        image=None,
        published_at=SAMPLE_NOW - timedelta(hours=i),
        fetched_at=SAMPLE_NOW,
    )
    base.update(changed)
    return DigestStory(**base)


def sample_digest() -> Digest:
    lead = sample_story(1, image="https://img.example/lead.jpg", bullets=("Point one.", "Point two."))
    also = sample_story(5, source="Other Wire", title="Headline 2, told again")
    return Digest(
        issue_date=date(2026, 11, 25),
        lead=lead,
        sections=(
            Section("Tech News", (sample_story(2, also=(also,)), sample_story(3, published_at=None))),
            Section("Reviews", (sample_story(4, image="https://img.example/4.jpg"),)),
        ),
    )


def email_samples(settings: Settings) -> dict[str, Mapping[str, Any]]:
    """Each mail template's context, as its renderer makes it, over the sample data."""
    issue = issue_context(
        sample_digest(), settings, issue_id=1, names=Placeholders.new(), intro="An editor's note."
    )
    confirm = confirmation_context(settings, confirm_url="https://news.example/confirm/SAMPLE")
    welcome = welcome_context(
        settings,
        preferences_url="https://news.example/preferences/SAMPLE",
        latest_issue_url="https://news.example/archive/1",
    )
    found: dict[str, Mapping[str, Any]] = {}
    for kind, context in (("digest", issue), ("confirm", confirm), ("welcome", welcome)):
        for part in ("html", "txt"):
            found[f"email/{kind}.{part}.j2"] = context
    return found


def check_email(settings: Settings) -> list[TemplateProblem]:
    """Every mail template (email/...), packaged or the operator's, rendered with the sample."""
    env = environment(settings.templates_path)
    samples = email_samples(settings)
    names = sorted(
        {n for n in packaged_names() + overrides(settings.templates_path) if n.startswith("email/")}
    )
    everything = set().union(*(set(c) for c in samples.values())) | stored_names(env, names)
    found: list[TemplateProblem] = []
    for name in names:
        context = samples.get(name)
        if context is None:  # a partial, or a file of the operator's that a template includes
            found += problems_of(env, name, known=everything, sample=None)
        else:
            found += problems_of(env, name, known=set(context), sample=context)
    return found
