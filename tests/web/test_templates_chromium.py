"""SPEC 10 as a new operator meets it: the demo's configuration and feeds in a fresh folder,
`templates eject`, the masthead's colour changed, the demo's commands (`make demo` runs them), and
the preview opened in Debian's Chromium (screenshot)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..support.helpers import ROOT, run_cli
from ..support.web import chromium, needs_chromium, screenshots

PACKAGED_COLOUR = "#0f1b2d"
OURS = "#0a7d3b"  # rgb(10, 125, 59)


@needs_chromium
def test_an_ejected_masthead_with_a_new_colour_shows_in_the_preview(tmp_path: Path) -> None:
    shutil.copy(ROOT / "config.toml", tmp_path / "config.toml")
    shutil.copytree(ROOT / "samples", tmp_path / "samples")
    config = tmp_path / "config.toml"

    run_cli(config, "templates", "eject")
    masthead = tmp_path / "templates/email/_masthead.html.j2"
    text = masthead.read_text(encoding="utf-8")
    assert PACKAGED_COLOUR in text
    masthead.write_text(text.replace(PACKAGED_COLOUR, OURS), encoding="utf-8")
    assert "templates ok" in run_cli(config, "templates", "check").stdout

    for command in (
        ["init"],
        ["subscribers", "import", "samples/subscribers.csv"],
        ["run"],
        ["preview", "--out", "outbox/preview.html"],
    ):
        run_cli(config, *command)
    preview = tmp_path / "outbox/preview.html"
    sent = next((tmp_path / "outbox").rglob("*.eml")).read_text(encoding="utf-8", errors="replace")
    assert OURS in sent.lower()  # every reader's copy, not the preview alone

    shots = screenshots(tmp_path, "screenshots")
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 700, "height": 900})
        page.goto(preview.as_uri())
        colour = page.eval_on_selector(".masthead", "e => getComputedStyle(e).backgroundColor")
        assert colour == "rgb(10, 125, 59)"
        assert "Tech Headlines Daily" in page.inner_text(".masthead")
        page.screenshot(path=str(shots / "masthead.png"))
    assert (shots / "masthead.png").stat().st_size > 10_000
