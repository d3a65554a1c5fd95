import re
from pathlib import Path

import pytest

from newsletter.config import DigestSettings, load_settings
from newsletter.errors import ConfigError

from .support.helpers import ROOT, run_cli, write_config


def test_the_shipped_config_loads_with_every_section() -> None:
    s = load_settings(ROOT / "config.toml")
    assert s.newsletter.name == "Tech Headlines Daily"
    assert [src.section for src in s.sources] == ["Tech News", "In-Depth Tech Stories", "Expert Reviews"]
    assert s.delivery.transport == "outbox"
    assert s.smtp.security == "starttls" and s.smtp.connections == 4
    assert s.database_url == f"sqlite:///{ROOT / 'subscribers.db'}"  # relative to the config's folder


def test_the_shipped_config_documents_clustering_with_the_measured_default() -> None:
    """SPEC 7: config.toml has [digest] cluster and cluster_threshold, each with a comment that
    says what it means, and the threshold shipped is the default (the best measured)."""
    text = (ROOT / "config.toml").read_text()
    digest = text[text.index("[digest]") :]
    lines = digest[: digest.index("\n[", 1)].splitlines()
    for key, value in (("cluster", "true"), ("cluster_threshold", str(DigestSettings.cluster_threshold))):
        line = next(line for line in lines if line.split("=")[0].strip() == key)
        setting, comment = line.split("#", 1)
        assert setting.split("=")[1].strip() == value and len(comment.split()) >= 8, line
    assert "higher merges less" in digest
    settings = load_settings(ROOT / "config.toml")
    assert settings.digest.cluster and settings.digest.cluster_threshold == DigestSettings.cluster_threshold


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ('[delivery]\ntransport = "outbox"\nspeed = 3\n', "delivery.speed"),
        ('[smtpp]\nhost = "x"\n', "smtpp"),
        ('[smtp]\nport = "25"\n', "smtp.port"),
        ('[smtp]\nsecurity = "ssl"\n', "smtp.security"),
        ("[digest]\nmax_stories = true\n", "digest.max_stories"),
        ("[digest]\nmin_stories = 20\nmax_stories = 5\n", "digest.min_stories"),
        ("[digest]\ncluster_threshold = 1.5\n", "digest.cluster_threshold"),
        ('[digest]\ncluster = "yes"\n', "digest.cluster"),
        ('[newsletter]\ntimezone = "Mars/Olympus"\n', "newsletter.timezone"),
        ('[web]\ntrusted_proxies = "10.0.0.1"\n', "web.trusted_proxies"),
        ('[web]\ntrusted_proxies = ["10.0.0.1", "proxy.local"]\n', "web.trusted_proxies[1]"),
        ("[web]\ntrusted_proxies = [3]\n", "web.trusted_proxies[0]"),
        ('[subscribers]\nremind_after_hours = "48"\n', "subscribers.remind_after_hours"),
        ("[subscribers]\nremind_after_hours = nan\n", "subscribers.remind_after_hours"),
        ("[subscribers]\nprune_pending_after_hours = inf\n", "subscribers.prune_pending_after_hours"),
        ("[subscribers]\nprune_pending_after_hours = -1\n", "subscribers.prune_pending_after_hours"),
        ('[subscribers]\nwelcome = "yes"\n', "subscribers.welcome"),
    ],
)
def test_a_bad_key_is_refused_by_name(tmp_path: Path, extra: str, named: str) -> None:
    base = write_config(tmp_path).read_text()
    # put the bad table's keys in place of (or beside) the good ones
    if extra.startswith("[newsletter]"):
        base = base.replace('timezone = "UTC"', extra.split("\n", 1)[1].strip())
    elif extra.startswith("[delivery]"):
        base = base.replace('[delivery]\ntransport = "outbox"', extra.strip())
    else:
        base += "\n" + extra
    path = tmp_path / "config.toml"
    path.write_text(base)
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_settings(path)


def test_the_tidy_hours_take_fractions_and_zero(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, extra="[subscribers]\nremind_after_hours = 0.5\nprune_pending_after_hours = 0\n"
    )
    subscribers = load_settings(path).subscribers
    assert subscribers.remind_after_hours == 0.5 and subscribers.prune_pending_after_hours == 0
    assert subscribers.welcome


def test_missing_required_key_is_named(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace('postal_address = "1 Test Street, Testville"\n', ""))
    with pytest.raises(ConfigError, match=r"missing required configuration key 'newsletter\.postal_address'"):
        load_settings(path)


def test_unknown_key_exits_2_with_one_sentence(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    path.write_text(path.read_text() + '\n[web]\nhots = "0.0.0.0"\n')
    proc = run_cli(path, "status", check=False)
    assert proc.returncode == 2
    assert "unknown configuration key 'web.hots'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_relative_paths_follow_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEWSLETTER_DATABASE_URL", raising=False)
    folder = tmp_path / "etc"
    folder.mkdir()
    s = load_settings(write_config(folder))
    assert s.database_url == f"sqlite:///{folder / 'subscribers.db'}"
    assert s.path(s.delivery.outbox_dir) == folder / "outbox"
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", "postgresql+psycopg://u@h/db")
    assert load_settings(folder / "config.toml").database_url == "postgresql+psycopg://u@h/db"


def test_not_toml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[newsletter\nname=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(path)
