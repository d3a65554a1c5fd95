"""What a fresh install holds: PostgreSQL's driver is an extra, and an install without it runs
on SQLite and names the extra when asked for PostgreSQL."""

import os
import tomllib
from pathlib import Path

from .support.helpers import ROOT, run_cli, write_config


def _without_psycopg(folder: Path) -> dict[str, str]:
    """An environment in which `import psycopg` fails as it does where the extra is not installed."""
    blocked = folder / "no-psycopg"
    blocked.mkdir()
    missing = "raise ModuleNotFoundError(\"No module named 'psycopg'\", name='psycopg')\n"
    (blocked / "psycopg.py").write_text(missing)
    return {"PYTHONPATH": os.pathsep.join(filter(None, (str(blocked), os.environ.get("PYTHONPATH"))))}


def test_psycopg_is_an_extra_and_make_install_takes_it() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("psycopg")]
    assert project["optional-dependencies"]["postgresql"] == ["psycopg[binary]>=3.1"]
    assert "'.[test,postgresql]'" in (ROOT / "Makefile").read_text()


def test_a_sqlite_install_runs_without_the_driver(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    blocked = _without_psycopg(tmp_path)
    run_cli(config, "init", extra_env=blocked, process=True)
    run_cli(config, "subscribers", "add", "reader@example.com", extra_env=blocked, process=True)
    built = run_cli(config, "build", "--json", extra_env=blocked, process=True)
    assert '"items"' in built.stdout


def test_postgresql_without_the_driver_names_the_extra(tmp_path: Path) -> None:
    config = write_config(tmp_path, database_url="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    proc = run_cli(config, "status", check=False, extra_env=_without_psycopg(tmp_path), process=True)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'newsletter[postgresql]'" in proc.stderr
    assert "Traceback" not in proc.stderr
