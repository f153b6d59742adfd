"""What the console shows of a customer: masked identifiers, and the graph of why its rows are
one customer (pure functions of the rows; the views are in identity/console/__init__.py)."""

from __future__ import annotations

import math
from typing import Any

import phonenumbers

from identity.component import oldest_first
from identity.database import Row
from identity.merge import primaries_of
from identity.protection import UNPROTECTED, Protection


def mask_email(email: str) -> str:
    """`dana@example.com` -> `d***@example.com`: enough to tell two apart on the phone, no more."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}"


def mask_phone(phone: str) -> str:
    """`+919876543210` -> `+91 ******3210`: the country code and the last four digits.

    Shorter numbers show fewer digits (two of 4-7, none below 4), so a mask
    never gives away most of a number.
    """
    prefix, digits = "", phone
    if phone.startswith("+"):
        try:
            parsed = phonenumbers.parse(phone, None)
            prefix, digits = f"+{parsed.country_code} ", str(phone[1 + len(str(parsed.country_code)) :])
        except phonenumbers.NumberParseException:
            prefix, digits = "+", phone[1:]
    shown = 4 if len(digits) >= 8 else 2 if len(digits) >= 4 else 0
    return prefix + "*" * (len(digits) - shown) + digits[len(digits) - shown :]


# The link graph: nodes on a circle, primary at the top, the others clockwise
# oldest first. A customer has a handful of rows, for which a circle keeps every
# edge visible and the picture stable between visits; graph libraries were
# weighed (README, docs/console.md): Graphviz needs a system binary and a
# subprocess per page, networkx's layouts need numpy, and SVG writers add
# nothing over an autoescaped template.
GRAPH_NODE_RADIUS = 24
GRAPH_MARGIN = 40
# Edges of different kinds between the same two rows bend apart instead of overlapping.
EDGE_BEND = {"link": 0.0, "email": 0.22, "phone": -0.22}


def link_edges(rows: list[Row], protection: Protection = UNPROTECTED) -> list[dict[str, Any]]:
    """Why the rows are one customer: link (secondary -> the row it points at), shared email, shared phone.

    Rows sharing a value are chained oldest first (n rows, n - 1 edges), which
    is enough to show they are connected without a clique of lines. A blocked value
    connects nothing (SPEC, "Merge protection"), so it draws no edge.
    """
    rows = oldest_first(rows)
    ids = {row["id"] for row in rows}
    edges = [
        {"kind": "link", "source": row["id"], "target": row["linkedId"]}
        for row in rows
        if row["linkedId"] is not None and row["linkedId"] in ids
    ]
    last_with: dict[tuple[str, str], int] = {}
    for row in rows:
        for identifier in protection.identifiers(row):
            if identifier in last_with:
                edges.append({"kind": identifier[0], "source": last_with[identifier], "target": row["id"]})
            last_with[identifier] = row["id"]
    # Links first, then shared emails, then shared phones (the order the page lists them in).
    order = {"link": 0, "email": 1, "phone": 2}
    return sorted(edges, key=lambda edge: order[edge["kind"]])


def link_graph(rows: list[Row], protection: Protection = UNPROTECTED) -> dict[str, Any]:
    """Positions (SVG user units) of every row and the path of every edge, for templates/console/graph.svg.

    Draws the rows it is given: a large customer's page passes one page of rows (and the
    primary), so the picture stays bounded."""
    primary_ids = {row["id"] for row in primaries_of(rows)}
    ordered = sorted(oldest_first(rows), key=lambda row: row["id"] not in primary_ids)
    count = len(ordered)
    # Big enough that neighbouring nodes keep a node's width between them.
    radius = 0.0 if count == 1 else max(110.0, count * 3 * GRAPH_NODE_RADIUS / (2 * math.pi))
    size = 2 * (radius + GRAPH_NODE_RADIUS + GRAPH_MARGIN)
    centre = size / 2
    nodes, where = [], {}
    for index, row in enumerate(ordered):
        angle = -math.pi / 2 + 2 * math.pi * index / count
        x, y = centre + radius * math.cos(angle), centre + radius * math.sin(angle)
        where[row["id"]] = (x, y)
        nodes.append(
            {"id": row["id"], "x": round(x, 1), "y": round(y, 1), "primary": row["id"] in primary_ids}
        )
    edges = []
    for edge in link_edges(rows, protection):
        (x1, y1), (x2, y2) = where[edge["source"]], where[edge["target"]]
        bend = EDGE_BEND[edge["kind"]]
        # Control point: the midpoint pushed sideways by a share of the edge's length.
        cx, cy = (x1 + x2) / 2 - bend * (y2 - y1), (y1 + y2) / 2 + bend * (x2 - x1)
        path = f"M {x1:.1f} {y1:.1f} Q {cx:.1f} {cy:.1f} {x2:.1f} {y2:.1f}"
        edges.append({**edge, "path": path})
    return {"size": round(size, 1), "nodes": nodes, "edges": edges}
