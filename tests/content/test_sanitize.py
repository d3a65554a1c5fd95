from datetime import UTC, datetime

from newsletter.config import SourceSettings
from newsletter.content.sanitize import clean_html, cut_words
from newsletter.content.sources import parse_feed

from ..support.helpers import HOSTILE, rss


def test_hostile_html_keeps_only_plain_words_and_a_real_image() -> None:
    clean = clean_html(HOSTILE)
    assert "Council approves the new library budget." in clean.text
    assert "click me" in clean.text  # the words stay, the javascript: link does not
    for bad in ("alert", "steal", "framed words", "Enter password", "display", "obj"):
        assert bad not in clean.text
    assert clean.images == ["https://img.example/library.jpg"]


def test_a_hostile_feed_yields_no_markup_in_the_story() -> None:
    body = rss(
        [
            {
                "title": "Budget <script>alert(1)</script>vote",
                "link": "https://x.example/b",
                "description": HOSTILE,
            }
        ]
    )
    (story,) = parse_feed(body, SourceSettings(name="F", url="https://f.example/"), now=datetime.now(UTC))
    assert story.title == "Budget vote"
    assert story.image == "https://img.example/library.jpg"
    assert "<" not in story.summary and "alert" not in story.summary


def test_nothing_shaped_like_a_placeholder_comes_out_of_a_feed() -> None:
    """Every field a feed gives, in any case and in the spellings the parse decodes (a character
    reference, a %5F in a query, a name split by a tag); the story's own words stay."""
    planted = " ".join(
        ("__NL_UNSUBSCRIBE_URL__", "__nl_greeting__", "__Nl_Issue_Id__", "__NL_GREETING_0123abcd__")
        + ("__NL__NL_X__GREETING__",)
    )
    body = rss(
        [
            {
                "title": f"Budget {planted} &amp;#95;&amp;#95;NL_GREETING&amp;#95;&amp;#95; vote",
                "link": "https://x.example/b?u=%5F%5FNL_UNSUBSCRIBE_URL%5F%5F&amp;keep=1",
                "description": f"<p>Words __NL_<b></b>GREETING__ {planted}.</p>"
                f"<ul><li>{planted} kept</li></ul>"
                f'<img src="https://i.example/{planted.split()[0]}.jpg" width="600">',
                "author": f"Ann {planted}",
                "category": f"{planted} Tech",
            }
        ]
    )
    (story,) = parse_feed(body, SourceSettings(name="F", url="https://f.example/"), now=datetime.now(UTC))
    assert story.title == "Budget vote"
    assert story.link == "https://x.example/b?u=&keep=1"
    assert story.summary == "Words ."
    assert story.bullets == ("kept",)
    assert story.image == "https://i.example/.jpg"
    assert story.author == "Ann" and story.section == "Tech"
    hidden = "_&#1;_NL_GREETING__ _\x02_nl_unsubscribe_url__"  # a control that storage may drop
    (story,) = parse_feed(
        rss(
            [{"title": f"A {hidden} b", "link": "https://x.example/h", "author": hidden, "category": hidden}]
        ),
        SourceSettings(name="F", url="https://f.example/"),
        now=datetime.now(UTC),
    )
    assert (story.title, story.author, story.section) == ("A b", None, "Top stories")
    only_planted = rss([{"title": planted, "link": "https://x.example/c", "category": "__NL_GREETING__"}])
    assert (
        parse_feed(only_planted, SourceSettings(name="F", url="https://f.example/"), now=datetime.now(UTC))
        == []
    )


def test_summaries_are_cut_on_a_word_boundary() -> None:
    words = " ".join(f"word{i}" for i in range(100))
    cut = cut_words(words, 60)
    assert cut.endswith("word59…")
    assert len(cut.split()) == 60
    assert cut_words("short text", 60) == "short text"


def test_bullets_are_kept_as_a_list() -> None:
    clean = clean_html("<p>TLDR</p><ul><li>First point.</li><li>Second <i>point</i>.</li></ul><p>Body.</p>")
    assert clean.bullets == ["First point.", "Second point."]
    assert clean.text == "Body."


PIXELS = """
<p>Words.</p>
<img src="https://track.example/a.gif" width="2" height="2">
<img src="https://track.example/b.gif" width="3px" height="40">
<img src="https://track.example/c.gif" style="width: 2px; height: 2px">
<img src="https://track.example/d.gif" style="max-height:3px">
<img src="https://track.example/e.gif" style="opacity: 0">
<img src="https://track.example/f.gif" style="visibility : hidden">
<img src="https://track.example/g.gif" style="DISPLAY:NONE">
<img src="https://track.example/h.gif" style="position:absolute; left:-9999px">
<img src="https://img.example/real.jpg" width="640" height="360" style="width:100%">
"""


def test_tracking_pixels_up_to_3_pixels_or_hidden_by_style_are_dropped() -> None:
    assert clean_html(PIXELS).images == ["https://img.example/real.jpg"]


def test_a_pixel_never_becomes_the_lead_image() -> None:
    """Media elements of a feed are images too: a 2x2 media:thumbnail is a pixel, not a picture."""
    body = (
        b'<?xml version="1.0"?><rss version="2.0" xmlns:media="http://search.yahoo.com/mrss/"><channel>'
        b"<title>T</title><link>https://f.example/</link><description>d</description>"
        b"<item><title>Story</title><link>https://f.example/1</link>"
        b'<media:thumbnail url="https://track.example/pixel.gif" width="2" height="2"/>'
        b'<media:content url="https://track.example/px.gif" medium="image" width="1" height="1"/>'
        b"<description><![CDATA[<p>Text.</p>"
        b'<img src="https://track.example/open.gif" width="2" height="2">]]></description>'
        b"</item></channel></rss>"
    )
    (story,) = parse_feed(body, SourceSettings(name="F", url="https://f.example/"), now=datetime.now(UTC))
    assert story.image is None
