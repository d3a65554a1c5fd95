"""The console's fixtures for the editor's hour: a logged-in operator, and a built issue."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from newsletter.db.models import Issue

from ..support.helpers import Console, log_in, run_cli


@pytest.fixture
def client(console: Console) -> FlaskClient:
    c = console.app.test_client()
    assert log_in(c) == 302
    return c


@pytest.fixture
def built(console: Console) -> Issue:
    console.store.add_subscriber(
        "reader@example.org", "Reader", now=console.app.extensions["newsletter"].now()
    )
    run_cli(console.config, "build")
    issue = console.store.list_issues()[0]
    assert issue.story_count >= 3
    return issue
