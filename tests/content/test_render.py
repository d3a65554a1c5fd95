import re
from datetime import date

from newsletter.config import Settings
from newsletter.content.digest import Digest, DigestStory, Section
from newsletter.content.render import FIXED_PLACEHOLDERS, Placeholders, fill, inline_css, render_issue
from newsletter.content.templates import SAMPLE_NOW, sample_story

NOW = SAMPLE_NOW


def story(i: int, **kw: object) -> DigestStory:
    return sample_story(i, **kw)  # the sample data `templates check` renders


def digest() -> Digest:
    lead = story(1, image="https://img.example/lead.jpg", bullets=("Point one.", "Point two."))
    return Digest(
        issue_date=date(2026, 11, 25),
        lead=lead,
        sections=(Section("Tech News", (story(2), story(3))), Section("Reviews", (story(4),))),
    )


def test_placeholders_survive_premailer() -> None:
    names = Placeholders.new()
    GREETING, UNSUBSCRIBE_URL = names.greeting, names.unsubscribe_url  # noqa: N806
    raw = (
        f"<html><head><style>a {{ color: red }}</style></head><body><p>{GREETING}</p>"
        f'<a href="{UNSUBSCRIBE_URL}">u</a></body></html>'
    )
    inlined = inline_css(raw)
    assert GREETING in inlined and f'href="{UNSUBSCRIBE_URL}"' in inlined
    assert 'style="color:red"' in inlined.replace(" ", "")
    filled = fill(
        inlined, names, greeting="Hi <Bob> & co", unsubscribe_url="https://n.example/u/a&b", for_html=True
    )
    assert "Hi &lt;Bob&gt; &amp; co" in filled and 'href="https://n.example/u/a&amp;b"' in filled


def test_issue_html_is_inlined_with_only_media_queries_left(settings: Settings) -> None:
    r = render_issue(digest(), settings, issue_id=7)
    styles = re.findall(r"<style[^>]*>(.*?)</style>", r.html, re.S)
    leftover = re.sub(r"@media[^{]*\{(?:[^{}]*\{[^{}]*\})*[^{}]*\}", "", "".join(styles)).strip()
    assert leftover == "", leftover  # every rule outside a media query went into style attributes
    assert "prefers-color-scheme: dark" in "".join(styles)
    assert 'class="container"' in r.html and "width:600px" in r.html.replace(" ", "")
    assert 'class="preheader"' in r.html and "display:none" in r.html.replace(" ", "")
    assert 'alt="Headline 1 &amp; more"' in r.html
    for i in range(1, 5):
        assert f'href="https://x.example/{i}"' in r.html
        assert f"https://x.example/{i}" in r.text
    assert "https://news.example.com/archive/7" in r.html and "1 Test Street" in r.html
    names = r.placeholders
    assert names.key and names.greeting in r.html and names.unsubscribe_url in r.html
    assert names.greeting in r.text and names.unsubscribe_url in r.text
    assert "<li>Point one.</li>" in r.html.replace("\n", "") or "Point one." in r.html
    assert r.subject == "25 Nov 2026: Headline 1 & more"
    early = render_issue(digest(), settings, issue_id=None)  # rendered before the issue has its id
    subject, _, html, text = early.for_issue(7)
    assert early.placeholders.key != names.key  # each rendering its own: nobody can know it before
    for late, mine in ((html, r.html), (text, r.text)):
        assert fill(late, early.placeholders, greeting="G", unsubscribe_url="U", for_html=False) == fill(
            mine, names, greeting="G", unsubscribe_url="U", for_html=False
        )
    assert subject == r.subject and early.placeholders.issue_id not in html + text


def test_a_story_that_spells_placeholders_renders_them_as_text(settings: Settings) -> None:
    """A story stored before feeds were cleaned of them: the fixed names, and names of the same
    shape with another key, stay words in the rendered issue; only its own names are filled."""
    fixed = FIXED_PLACEHOLDERS
    planted = [fixed.greeting, fixed.unsubscribe_url, fixed.issue_id, Placeholders.new().unsubscribe_url]
    lead = story(1, title=" ".join(planted), image=f"https://i.example/{planted[1]}.jpg", author=planted[0])
    r = render_issue(Digest(date(2026, 11, 25), lead=lead, sections=()), settings, issue_id=None)
    _, _, html, text = r.for_issue(7)
    for part in (html, text):
        filled = fill(part, r.placeholders, greeting="[hello]", unsubscribe_url="[link]", for_html=False)
        assert all(name in filled for name in planted)
        assert filled.count("[hello]") == 1 and filled.count("[link]") == 1 and "/archive/7" in filled


def test_text_part_is_its_own_template(settings: Settings) -> None:
    r = render_issue(digest(), settings, issue_id=7)
    assert "<" not in r.text.replace("<https", "")
    assert "* Point one." in r.text
    assert "== TECH NEWS ==" in r.text and "== REVIEWS ==" in r.text
    assert "Headline 1 & more" in r.text  # not HTML-escaped in the text part


def test_a_cluster_names_every_other_source_linked_to_its_own_story(settings: Settings) -> None:
    """SPEC 7: 'Also covered by' under the story shown, each source linked, in both parts; a
    story told once has no such line."""
    others = (
        story(5, source="Harbor <Wire>", link="https://h.example/a?x=1&y=2"),
        story(6, source="Daily Post"),
    )
    d = Digest(
        issue_date=date(2026, 11, 25),
        lead=story(1, image="https://img.example/lead.jpg", also=others),
        sections=(Section("Tech News", (story(2), story(3, also=(story(7, source="Valley Radio"),)))),),
    )
    r = render_issue(d, settings, issue_id=7)
    assert r.html.count("Also covered by") == 2
    assert '<a href="https://h.example/a?x=1&amp;y=2"' in r.html and ">Harbor &lt;Wire&gt;</a>" in r.html
    assert '<a href="https://x.example/6"' in r.html and ">Daily Post</a>" in r.html
    assert '<a href="https://x.example/7"' in r.html and ">Valley Radio</a>" in r.html
    text = r.text
    assert text.count("Also covered by:") == 2
    assert (
        "  Harbor <Wire>: https://h.example/a?x=1&y=2" in text and "  Daily Post: https://x.example/6" in text
    )
    assert "  Valley Radio: https://x.example/7" in text
    story_2 = text[text.index("Headline 2") : text.index("Headline 3")]
    assert "Also covered by" not in story_2
