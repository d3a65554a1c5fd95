"""`templates eject` and `templates check`: the operator's own look (SPEC 10)."""

from __future__ import annotations

import click

from ..errors import TemplateError
from . import App, main, out, pass_app


@main.group()
def templates() -> None:
    """The operator's templates folder ([newsletter] templates_dir)."""


@templates.command("eject")
@click.option("--force", is_flag=True, help="overwrite the copies already in the folder")
@pass_app
def templates_eject(app: App, force: bool) -> None:
    """Copy every packaged template into the folder, for editing."""
    from ..content.templates import eject

    folder = app.settings.templates_path
    written = eject(folder, force=force)
    out.print(f"copied {len(written)} templates into {folder}", markup=False)
    out.print("edit them there; 'newsletter templates check' renders each with sample data", markup=False)


@templates.command("check")
@pass_app
def templates_check(app: App) -> None:
    """Render every template with sample data; print each problem as FILE:LINE: reason."""
    from ..content.templates import overrides
    from ..web.templates import check_templates

    problems = check_templates(app.settings)
    if problems:
        raise TemplateError("\n".join(str(p) for p in problems))
    mine = len(overrides(app.settings.templates_path))
    out.print(f"templates ok ({mine} of them the operator's, in {app.settings.templates_path})", markup=False)


def require_templates(app: App) -> None:
    """What a command that renders does first: a broken override stops it, before anything is
    built or sent."""
    from ..web.templates import require_templates as check

    check(app.settings)
