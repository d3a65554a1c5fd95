"""The operator's templates (SPEC 10): overrides file by file, eject, check, and the check at the
start of every command that renders. The command line runs as a user runs it."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from newsletter.config import Settings, load_settings
from newsletter.content.render import environment, render_confirmation, render_issue
from newsletter.content.templates import packaged_names, sample_digest
from newsletter.store import Store
from newsletter.web import create_app
from newsletter.web.templates import check_templates

from ..support.helpers import ROOT, run_cli, write_config

PACKAGED = ROOT / "newsletter" / "templates"
MASTHEAD = """<tr><td class="masthead" style="background-color: #123456;">
  <p class="brand">{{ newsletter.name }} (ours)</p>
</td></tr>
"""


def override(settings: Settings, name: str, text: str) -> Path:
    path = settings.templates_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    environment.cache_clear()  # a new folder in a test; the process's own is cached
    return path


def test_an_override_replaces_its_file_alone(settings: Settings) -> None:
    before = render_issue(sample_digest(), settings, issue_id=3)
    assert "#123456" not in before.html
    override(settings, "email/_masthead.html.j2", MASTHEAD)
    after = render_issue(sample_digest(), settings, issue_id=3)
    assert "background-color:#123456" in after.html.replace(" ", "") and "Test Digest (ours)" in after.html
    assert after.text == before.text.replace(before.placeholders.key or "", after.placeholders.key or "")
    assert "Headline 2 &amp; more" in after.html  # the rest is the packaged issue
    _, confirm_html, _ = render_confirmation(settings, confirm_url="https://c.example/x")
    assert "Test Digest (ours)" in confirm_html  # the same masthead on every mail
    assert check_templates(settings) == []


def test_check_names_the_upgrade_trap_with_its_line(settings: Settings) -> None:
    """An override copied from an older version reads a name the sample data (the renderer) no
    longer gives: on a branch the sample never takes, and on one it takes."""
    packaged = (PACKAGED / "email/digest.txt.j2").read_text(encoding="utf-8").splitlines()
    lines = [*packaged[:3], "{% if not weekly and false %}{{ unsubscribe_link }}{% endif %}", *packaged[3:]]
    override(settings, "email/digest.txt.j2", "\n".join(lines) + "\n")
    masthead = override(
        settings, "email/_masthead.html.j2", "<tr><td>\n{{ newsletter.logo_url }}</td></tr>\n"
    )
    problems = [str(p) for p in check_templates(settings)]
    digest = settings.templates_path / "email/digest.txt.j2"
    assert f"{digest}:4: uses 'unsubscribe_link', which this template is not given" in problems
    assert any(p.startswith(f"{masthead}:2: UndefinedError") and "logo_url" in p for p in problems)
    assert len(problems) == 2  # the masthead's once, though three mails include it

    proc = run_cli(settings.config_dir / "config.toml", "templates", "check", check=False)
    assert proc.returncode == 2
    assert f"{digest}:4: uses 'unsubscribe_link'" in proc.stderr and f"{masthead}:2:" in proc.stderr


def test_a_syntax_error_and_a_page_override(settings: Settings) -> None:
    broken = override(settings, "email/confirm.txt.j2", "Hello\n\n{{ confirm_url }\n")
    page = override(
        settings,
        "web/archive.html.j2",
        '{% extends "web/base.html.j2" %}{% block main %}\n'
        "<p>{{ issues | length }}</p>\n{{ feed }}{% endblock %}",
    )
    problems = [str(p) for p in check_templates(settings)]
    assert f"{broken}:3: unexpected '}}'" in problems
    assert f"{page}:3: uses 'feed', which this template is not given" in problems


@pytest.mark.parametrize("command", ["build", "run", "preview", "schedule", "serve"])
def test_every_command_that_renders_stops_on_a_broken_override(settings: Settings, command: str) -> None:
    bad = override(settings, "email/digest.html.j2", "<p>\n{{ lead.title }\n</p>\n")
    proc = run_cli(settings.config_dir / "config.toml", "init")
    proc = run_cli(settings.config_dir / "config.toml", command, check=False, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{bad}:2: unexpected '}}'" in proc.stderr
    store = Store(settings.database_url)
    try:
        assert store.issue_counts(limit=5) == []  # nothing built, nothing sent
    finally:
        store.close()


def test_eject_copies_every_template_and_refuses_to_overwrite(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    run_cli(config, "templates", "eject")
    folder = tmp_path / "templates"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.j2")) == packaged_names()
    (folder / "email/_masthead.html.j2").write_text("mine", encoding="utf-8")
    again = run_cli(config, "templates", "eject", check=False)
    assert again.returncode == 2 and "--force" in again.stderr
    assert (folder / "email/_masthead.html.j2").read_text(encoding="utf-8") == "mine"
    run_cli(config, "templates", "eject", "--force")
    assert (folder / "email/_masthead.html.j2").read_bytes() == (
        PACKAGED / "email/_masthead.html.j2"
    ).read_bytes()
    ok = run_cli(config, "templates", "check")
    assert f"{len(packaged_names())} of them the operator's" in ok.stdout


def test_an_overridden_page_is_autoescaped(settings: Settings) -> None:
    override(
        settings,
        "web/archive.html.j2",
        '{% extends "web/base.html.j2" %}{% block main %}<ol>{% for issue in issues %}'
        '<li class="ours">{{ issue.subject }}</li>{% endfor %}</ol>{% endblock %}',
    )
    store = Store(settings.database_url)
    store.migrate()
    issue = store.create_issue(
        date(2026, 11, 25),
        story_ids=[],
        content=lambda i: ("<script>alert(1)</script> & news", "", "<p>x</p>", "t"),
        placeholder_key=None,
        now=datetime(2026, 11, 25, 7, tzinfo=UTC),
    )
    assert issue is not None
    store.start_send(issue.id)
    body = create_app(settings, store=store).test_client().get("/archive").get_data(as_text=True)
    store.close()
    assert '<li class="ours">&lt;script&gt;alert(1)&lt;/script&gt; &amp; news</li>' in body
    assert "<script>" not in body


def test_the_demo_folder_holds_a_masthead_that_checks(env: None) -> None:
    settings = load_settings(ROOT / "config.toml")
    assert settings.templates_path == ROOT / "templates"
    assert (ROOT / "templates/email/_masthead.html.j2").is_file()
    environment.cache_clear()
    assert check_templates(settings) == []
    html = render_issue(sample_digest(), settings, issue_id=1).html
    assert "#7a1f3d" in html
