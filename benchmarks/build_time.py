"""`newsletter build` on a normal day (config.toml and the sample feeds, as `make demo` has them),
before clustering and now: the commit before the first one that touched content/cluster.py is
unpacked from git into a temporary folder and run by this same interpreter (the dependencies did
not change), each build in a fresh process on a fresh database, the two alternated so that the
machine's load falls on both alike. The figure is the median CPU time of the build process (its
wall time beside it): on a machine shared with other work, CPU time is the steadier of the two."""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRST_CLUSTERING_FILE = "newsletter/content/cluster.py"


def before_clustering() -> str | None:
    """The commit before clustering, or None outside a git checkout with its history."""
    try:
        found = subprocess.run(
            ["git", "rev-list", "--reverse", "HEAD", "--", FIRST_CLUSTERING_FILE],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if not found:
            return None
        parent = subprocess.run(
            ["git", "rev-parse", f"{found[0]}^"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        return parent.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def unpack(commit: str, into: Path) -> None:
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")


def build_once(code: Path) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one `newsletter build` of the sample day with the code in
    `code`, on a database that `newsletter init` has just made."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shutil.copy(code / "config.toml", folder / "config.toml")
        shutil.copytree(code / "samples", folder / "samples")
        env = dict(
            os.environ, PYTHONPATH=str(code), NEWSLETTER_SECRET_KEY="bench-secret-key-0123456789abcdef"
        )
        env.pop("NEWSLETTER_DATABASE_URL", None)
        command = [sys.executable, "-m", "newsletter.cli", "--config", str(folder / "config.toml")]
        subprocess.run([*command, "init"], env=env, check=True, capture_output=True, cwd=folder)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run([*command, "build"], env=env, check=True, capture_output=True, cwd=folder)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return cpu, wall


def measure(runs: int = 9) -> tuple[list[tuple[str, str, str, str]], float | None]:
    """The table's row, and the change in CPU time against the commit before clustering."""
    commit = before_clustering()
    if commit is None:
        return [
            ("newsletter build, a normal day", "-", "", "needs git and the commit before clustering")
        ], None
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp)
        unpack(commit, old)
        times: dict[str, list[tuple[float, float]]] = {"before": [], "now": []}
        build_once(ROOT)  # the first run of a process pays for cold caches: not counted
        for _ in range(runs):
            times["before"].append(build_once(old))
            times["now"].append(build_once(ROOT))
    cpu = {k: statistics.median(c for c, _ in v) for k, v in times.items()}
    wall = {k: statistics.median(w for _, w in v) for k, v in times.items()}
    change = cpu["now"] / cpu["before"] - 1
    return [
        (
            "newsletter build, a normal day (sample feeds, make demo's config)",
            f"{cpu['now']:.2f} s CPU",
            "",
            f"before clustering ({commit[:7]}): {cpu['before']:.2f} s, {change:+.0%} (target <= +10 %); "
            f"wall {wall['now']:.2f} s / {wall['before']:.2f} s; median of {runs}",
        )
    ], change


if __name__ == "__main__":
    for row in measure()[0]:
        print(" | ".join(row))
