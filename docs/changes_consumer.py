"""A consumer of FluxKart Identity's feed of changes (docs/changes.md), standard library only.

Keeps a local copy of the customer partition (contact id -> primary id) and the cursor it has
applied up to. Copy it into your system and replace `Partition` with your own store: apply
each change and save the cursor in the same local transaction, so a crash replays nothing
twice and skips nothing.

    python3 docs/changes_consumer.py http://127.0.0.1:3000 [TOKEN]    # follows until Ctrl-C

TOKEN is the service's FLUXKART_API_TOKEN (without it, the environment's FLUXKART_API_TOKEN;
none for a service without a token). tests/api/test_changes.py runs this very file against
the service.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

USAGE = (
    "usage: python3 docs/changes_consumer.py BASE_URL [TOKEN]\n"
    "  BASE_URL  the service, e.g. http://127.0.0.1:3000\n"
    "  TOKEN     its FLUXKART_API_TOKEN (default: the environment's FLUXKART_API_TOKEN)\n"
    "Follows GET /changes (docs/changes.md) until Ctrl-C."
)
RETRY_S = 5  # how long the command waits before trying again after a failure it can outlast


class Partition:
    """contact id -> the primary id of its customer, as the feed has told it so far."""

    def __init__(self) -> None:
        self.customer_of: dict[int, int] = {}
        self.cursor: int | None = None  # None: not started (resync first)

    def apply(self, change: dict[str, Any]) -> None:
        """One change: its contact rows now belong to its customer, or are gone (erased)."""
        if change["kind"] == "erased":
            for contact_id in change["contactIds"]:
                self.customer_of.pop(contact_id, None)
        elif change["kind"] != "refused":  # a refusal moves nothing
            for contact_id in change["contactIds"]:
                self.customer_of[contact_id] = change["customerId"]


def get_json(url: str, token: str | None, timeout: float = 60) -> Any:
    """GET a JSON answer; raises urllib.error.HTTPError for a status other than 2xx."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def resync(base: str, token: str | None, partition: Partition) -> None:
    """Start over from the table: note the feed's head, copy every row, then follow from the head.

    Changes committed while the copy runs come again from the feed; applying one twice, or
    after a copy that already shows it, leaves the same partition.
    """
    head = get_json(f"{base}/changes", token)["cursor"]
    partition.customer_of.clear()
    after = 0
    while True:
        rows = get_json(f"{base}/contacts?limit=1000&after={after}", token)
        for row in rows:
            partition.customer_of[row["id"]] = row["linkedId"] or row["id"]
        if len(rows) < 1000:
            break
        after = rows[-1]["id"]
    partition.cursor = head


def poll(
    base: str,
    token: str | None,
    partition: Partition,
    wait: int = 20,
    limit: int = 1000,
    on_resync: Callable[[str], None] | None = None,
) -> int:
    """One read of the feed, applied; returns how many changes it held. Resyncs on 410.
    `on_resync(why)`, when given, is called after each resync (e.g. to log it)."""
    if partition.cursor is None:
        resync(base, token, partition)
        if on_resync:
            on_resync("start")
    query = urllib.parse.urlencode({"after": partition.cursor, "limit": limit, "wait": wait})
    try:
        page = get_json(f"{base}/changes?{query}", token, timeout=wait + 30)
    except urllib.error.HTTPError as error:
        if error.code != 410:  # anything else: let the caller back off and retry
            raise
        resync(base, token, partition)
        if on_resync:
            on_resync("410 cursor_expired")
        return 0
    for change in page["changes"]:
        partition.apply(change)
    partition.cursor = page["cursor"]  # after applying: a crash in between replays the page
    return len(page["changes"])


def start_from_beginning(partition: Partition) -> None:
    """Follow from the feed's first change instead of resyncing (a new, empty service)."""
    partition.cursor = 0


def main(argv: list[str]) -> int:
    """The command: follow the feed from BASE_URL until Ctrl-C, one line per page; exit status."""
    if len(argv) not in (2, 3) or argv[1] in ("-h", "--help"):
        print(USAGE, file=sys.stderr)
        return 0 if argv[1:2] in (["-h"], ["--help"]) else 2
    service = argv[1].rstrip("/")
    api_token = (argv[2] if len(argv) > 2 else "") or os.environ.get("FLUXKART_API_TOKEN") or None
    local = Partition()

    def synced(why: str) -> None:
        print(
            f"synced ({why}): {len(local.customer_of)} contacts copied from /contacts; "
            f"following the feed from cursor {local.cursor}",
            flush=True,
        )

    try:
        while True:
            try:
                if poll(service, api_token, local, on_resync=synced):
                    print(f"cursor {local.cursor}: {len(local.customer_of)} contacts", flush=True)
            except urllib.error.HTTPError as error:
                if error.code in (401, 403):
                    given = "was refused" if api_token else "is missing"
                    print(
                        f"{service}: HTTP {error.code}: the token {given}; pass the service's "
                        "FLUXKART_API_TOKEN as the second argument (or set FLUXKART_API_TOKEN)",
                        file=sys.stderr,
                    )
                    return 1
                print(
                    f"{service}: HTTP {error.code}; trying again in {RETRY_S} s", file=sys.stderr, flush=True
                )
                time.sleep(RETRY_S)
            except (urllib.error.URLError, OSError) as error:
                why = getattr(error, "reason", error)
                print(f"{service}: {why}; trying again in {RETRY_S} s", file=sys.stderr, flush=True)
                time.sleep(RETRY_S)
    except KeyboardInterrupt:
        print(f"stopped at cursor {local.cursor}", flush=True)
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
