"""The feed of changes' test helpers (tests/api/test_changes.py, tests/cluster/test_galera_changes.py).

`consumer` is docs/changes_consumer.py itself, the consumer the docs show; `Recording` is its
partition keeping every change applied and the merges that came before their customers;
`drain` reads the feed to its head; `check_replay` judges a run; `order` makes identify
traffic over a small alphabet; `flask_command` runs a command in another process.
"""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

from tests.harness.gunicorn import gunicorn_env
from tests.harness.processes import SERVICE_DIR
from tests.harness.servers import Api

CONSUMER_PATH = SERVICE_DIR / "docs" / "changes_consumer.py"


def load_consumer() -> ModuleType:
    """docs/changes_consumer.py, the consumer the docs show, as a module."""
    spec = importlib.util.spec_from_file_location("changes_consumer", CONSUMER_PATH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


consumer = load_consumer()


class Recording(consumer.Partition):  # type: ignore[name-defined,misc]
    """The docs' partition, keeping every change it applied and the ids made before each merge."""

    def __init__(self) -> None:
        super().__init__()
        self.changes: list[dict[str, Any]] = []
        self.introduced: set[int] = set()  # ids some earlier change created or moved
        self.early_merges: list[dict[str, Any]] = []  # merges naming an id not introduced yet

    def apply(self, change: dict[str, Any]) -> None:
        self.changes.append(change)
        if change["kind"] == "merged":
            named = {change["customerId"], change["demotedPrimaryId"], *change["contactIds"]}
            if not named <= self.introduced:
                self.early_merges.append(change)
        if change["kind"] not in ("erased", "refused"):
            self.introduced.update(change["contactIds"], [change["customerId"]])
        super().apply(change)


def partition_of(rows: list[dict[str, Any]]) -> dict[int, int]:
    """contact id -> primary id of every live row of these Contact rows."""
    return {row["id"]: row["linkedId"] or row["id"] for row in rows if row["deletedAt"] is None}


def drain(api: Api, partition: Any, token: str | None) -> None:
    """Read the feed until the consumer's cursor is the head and nothing waits to be numbered."""
    for _ in range(1000):
        consumer.poll(api.base_url, token, partition, wait=0)
        page = api.get("/changes", params={"after": partition.cursor}).json()
        if not page["changes"] and page["cursor"] == page["head"] == partition.cursor:
            return
    raise AssertionError("the feed never ended")


def check_replay(partition: Recording, live: dict[int, int]) -> None:
    """Every change once, in order; no merge before its customers; the copy equals the table's
    partition `live`."""
    seqs = [change["seq"] for change in partition.changes]
    assert seqs == sorted(set(seqs)), "a change came twice or out of order"
    early = [c for c in partition.early_merges if {c["customerId"], c["demotedPrimaryId"]} & set(live)]
    assert not early, early[:3]
    assert partition.customer_of == live
    # Control: the same changes without the erasures do not rebuild the table.
    if any(change["kind"] == "erased" for change in partition.changes):
        without = consumer.Partition()
        for change in partition.changes:
            if change["kind"] != "erased":
                without.apply(change)
        assert without.customer_of != live


def order(rng: random.Random, alphabet: int) -> tuple[str | None, str | None]:
    """An order over a small alphabet, so customers link and merge."""
    email = f"p{rng.randrange(alphabet)}@feed.test" if rng.random() < 0.85 else None
    phone = f"77{rng.randrange(alphabet):04d}" if email is None or rng.random() < 0.6 else None
    return email, phone


def flask_command(settings: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    """`flask --app fluxkart ARGS` in another process on the settings' database."""
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "fluxkart", *args],
        cwd=SERVICE_DIR,
        env={**gunicorn_env(settings), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


# Every kind of change the concurrent replay tests must see at least once.
FEED_KINDS = {"created", "linked", "merged", "imported", "split", "erased"}


def run_beside_the_consumer(
    follow: Callable[[], None], stop: threading.Event, workers: list[threading.Thread]
) -> None:
    """Start the consumer (`follow`, which returns once `stop` is set), run every worker to
    its end, then stop the consumer and wait for it."""
    follower = threading.Thread(target=follow)
    follower.start()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    stop.set()
    follower.join()


def check_commands(outcomes: dict[str, subprocess.CompletedProcess[str]]) -> None:
    """Every command the traffic ran (import, block, repair) exited 0."""
    for name, outcome in outcomes.items():
        assert outcome.returncode == 0, (name, outcome.stdout[-2000:], outcome.stderr[-2000:])
