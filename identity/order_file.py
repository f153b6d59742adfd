"""An export file of historical orders read as batches of canonical identifiers (the import
command's input): CSV with a header row, or JSON Lines; invalid lines kept for --rejects."""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from identity.errors import ApiError
from identity.normalize import normalize_email, normalize_phone

# A phone cell a spreadsheet wrote as a number: 9876543210.0 (the fraction is
# only zeros). Exponent forms (9.87654E+09) have lost digits and are refused.
SPREADSHEET_WHOLE = re.compile(r"\s*(\d+)\.0+\s*")
SPREADSHEET_EXPONENT = re.compile(r"\s*\d+(\.\d*)?[eE][+-]?\d+\s*")
ORDER_FORMATS = ("auto", "csv", "jsonl")
# A gzip file's first two bytes (0x1f 0x8b) as the surrogateescape reading decodes them.
GZIP_START = "\x1f\udc8b"
# What errors="surrogateescape" decodes a byte that is not UTF-8 to.
NOT_UTF8 = re.compile("[\udc80-\udcff]")
# The longest line read as an order (characters). An order is two short fields; identify
# refuses a body over 64 KiB too. A longer line is rejected by its number and first
# characters, and read past in pieces of this size: memory never holds more of it.
MAX_LINE_CHARS = 64 * 1024
# How much of an oversized line its rejection shows.
OVERSIZED_PREVIEW_CHARS = 60


class ImportRefused(Exception):
    """The file cannot be imported at all (no identifier column): nothing was written."""


@dataclass
class OrderLine:
    """One order of an export file: its canonical identifiers, or why it is rejected."""

    number: int  # the file's line where the record starts (1 is the first line)
    text: str  # the record as read (several lines for a quoted CSV newline), for --rejects
    email: str | None = None
    phone: str | None = None
    reason: str | None = None


class OversizedLine(str):
    """Stands for a line longer than MAX_LINE_CHARS (its value is its first characters):
    rejected by number, never parsed, never copied to --rejects."""

    def reason(self, length: int) -> str:
        return (
            f"longer than {MAX_LINE_CHARS:,} characters ({length:,}): not an order line, and not "
            f"copied to --rejects; it starts {str(self)!r}"
        )


class JsonFraction(str):
    """A JSON number with a fraction or exponent, kept as its text (json.loads parse_float)."""


def utf8_problem(text: str) -> str | None:
    """Why `text` (decoded with surrogateescape) is not valid UTF-8, or None when it is."""
    match = NOT_UTF8.search(text)
    if match is None:
        return None
    return f"not valid UTF-8 (byte 0x{ord(match.group()) - 0xDC00:02X} at character {match.start() + 1})"


def spreadsheet_phone(value: Any) -> Any:
    """A phone cell or JSON value as identify takes it: 9876543210.0 becomes 9876543210.

    A spreadsheet that stored the column as numbers exports a whole number
    with a zero fraction; identify alone would read the '.' as formatting and
    keep the zero. Anything else is passed on unchanged (identify validates it).
    """
    if isinstance(value, JsonFraction):
        match = SPREADSHEET_WHOLE.fullmatch(value)
        return int(match.group(1)) if match else float(value)  # a float: identify's own 400
    if isinstance(value, str):
        if match := SPREADSHEET_WHOLE.fullmatch(value):
            return match.group(1)
        if SPREADSHEET_EXPONENT.fullmatch(value):
            raise ApiError(
                400,
                "invalid_phone_number",
                f"phoneNumber {value.strip()!r} is in scientific notation: the spreadsheet lost its "
                "digits; export the column as text",
            )
    return value


def order_identifiers(email: Any, phone: Any, region: str) -> tuple[str | None, str | None]:
    """The canonical (email, phone) of one order, by identify's own rules; ApiError when invalid."""
    if isinstance(email, JsonFraction):
        email = float(email)  # identify's answer to a JSON number
    canonical_email = normalize_email(email)
    canonical_phone = normalize_phone(spreadsheet_phone(phone), region)
    if canonical_email is None and canonical_phone is None:
        raise ApiError(400, "missing_identifier", "neither an email nor a phoneNumber")
    return canonical_email, canonical_phone


class OrderFile:
    """An export file read as a stream of orders: CSV with a header row, or JSON Lines.

    UTF-8 with or without a byte-order mark; bytes that are not UTF-8 reject
    their line only. The file is read one line at a time (memory does not grow
    with it); `bytes_read` follows the position for the progress bar.
    """

    def __init__(self, binary: IO[bytes], fmt: str, region: str):
        self.text = io.TextIOWrapper(binary, encoding="utf-8-sig", errors="surrogateescape", newline="")
        self.region = region
        self.format = fmt
        self.bytes_read = 0
        self.line_number = 0
        self.header = ""  # the CSV header row as read, for --rejects
        self.oversized: dict[int, str] = {}  # line number -> why, for lines over MAX_LINE_CHARS

    def release(self) -> None:
        """Let go of the file without closing it (click closes a file it opened; stdin stays open)."""
        with contextlib.suppress(ValueError):
            self.text.detach()

    def lines(self) -> Iterator[str]:
        """The file's lines, each at most MAX_LINE_CHARS; a longer one as an OversizedLine
        (its first characters), the rest of it read and dropped piece by piece."""
        while line := self.text.readline(MAX_LINE_CHARS + 1):
            self.line_number += 1
            self.bytes_read += len(line.encode("utf-8", "surrogateescape"))
            if len(line) <= MAX_LINE_CHARS or line.endswith(("\n", "\r")):
                yield line
                continue
            length = len(line)
            while (piece := self.text.readline(MAX_LINE_CHARS)) and not piece.endswith(("\n", "\r")):
                length += len(piece)
                self.bytes_read += len(piece.encode("utf-8", "surrogateescape"))
            length += len(piece.rstrip("\r\n"))
            self.bytes_read += len(piece.encode("utf-8", "surrogateescape"))
            big = OversizedLine(line[:OVERSIZED_PREVIEW_CHARS])
            self.oversized[self.line_number] = big.reason(length)
            yield big

    def orders(self) -> Iterator[OrderLine]:
        """Every order line in file order; raises ImportRefused before the first when the CSV
        header names neither identifier column. Blank lines are skipped."""
        lines = self.lines()
        first = ""
        for line in lines:
            if line.strip():
                first = line
                break
        if not first:
            return
        if first.startswith(GZIP_START):
            raise ImportRefused(
                "the file is gzip-compressed: decompress it on the way in, "
                "e.g. zcat FILE | flask --app fluxkart import -"
            )
        if self.format == "auto":
            self.format = "jsonl" if first.lstrip().startswith("{") else "csv"
        remaining = itertools.chain([first], lines)
        if self.format == "jsonl":
            yield from self.json_orders(remaining)
        else:
            yield from self.csv_orders(remaining, self.line_number)

    def json_orders(self, lines: Iterator[str]) -> Iterator[OrderLine]:
        for text in lines:
            if not text.strip():
                continue
            if isinstance(text, OversizedLine):
                yield OrderLine(self.line_number, "", reason=self.oversized.pop(self.line_number))
                continue
            order = OrderLine(self.line_number, text)
            try:
                if problem := utf8_problem(text):
                    raise ApiError(400, "invalid_utf8", problem)
                try:
                    body = json.loads(text, parse_float=JsonFraction)
                except (ValueError, RecursionError) as exc:
                    raise ApiError(400, "invalid_json", "not valid JSON") from exc
                if not isinstance(body, dict):
                    raise ApiError(400, "invalid_body", "not a JSON object")
                order.email, order.phone = order_identifiers(
                    body.get("email"), body.get("phoneNumber"), self.region
                )
            except ApiError as exc:
                order.reason = exc.message
            yield order

    def csv_orders(self, lines: Iterator[str], first_number: int) -> Iterator[OrderLine]:
        pending: list[str] = []  # the lines of the record being read

        def feed() -> Iterator[str]:
            for line in lines:
                pending.append(line)
                # An oversized line reaches the CSV parser as a blank line (skipped); the loop
                # below rejects it by number.
                yield "\n" if isinstance(line, OversizedLine) else line

        reader = csv.reader(feed())
        header = next(reader)
        self.header = "".join(pending)
        columns = [name.strip().lower() for name in header]
        if "email" not in columns and "phonenumber" not in columns:
            separator = next((sep for sep in ";\t|" if len(header) == 1 and sep in header[0]), None)
            hint = f"; its columns look separated by {separator!r}: export with commas" if separator else ""
            raise ImportRefused(
                f"line {first_number}: the header has neither an 'email' nor a 'phoneNumber' column "
                f"(it has: {', '.join(repr(name[:80]) for name in header[:20])}){hint}; nothing was imported"
            )
        for name in ("email", "phonenumber"):
            if columns.count(name) > 1:
                raise ImportRefused(f"line {first_number}: the header has two '{name}' columns")
        email_at = columns.index("email") if "email" in columns else None
        phone_at = columns.index("phonenumber") if "phonenumber" in columns else None
        while True:
            pending.clear()
            try:
                record = next(reader)
                problem = None
            except StopIteration:
                return
            except csv.Error as exc:
                record, problem = None, f"not valid CSV ({exc})"
            first = self.line_number - len(pending) + 1
            big = [first + i for i, line in enumerate(pending) if isinstance(line, OversizedLine)]
            if big:  # the record had a line over MAX_LINE_CHARS: rejected whole, not parsed
                yield OrderLine(big[0], "", reason=self.oversized.pop(big[0]))
                for number in big[1:]:
                    self.oversized.pop(number)
                continue
            text = "".join(pending)
            order = OrderLine(first, text)
            if record == [] or (record is None and not text.strip()):
                continue
            try:
                if (
                    problem is None
                    and (problem := utf8_problem(text)) is None
                    and len(record or []) != len(header)
                ):
                    problem = f"has {len(record or [])} columns, the header has {len(header)}"
                if problem:
                    raise ApiError(400, "invalid_line", problem)
                assert record is not None
                order.email, order.phone = order_identifiers(
                    record[email_at] if email_at is not None else None,
                    record[phone_at] if phone_at is not None else None,
                    self.region,
                )
            except ApiError as exc:
                order.reason = exc.message
            yield order


class Rejects:
    """The rejected lines, verbatim, in a file that imports like the original once fixed:
    a CSV file's rejects come after its header row (`header`, "" for JSON Lines)."""

    def __init__(self, path: str | None):
        self.file = open(path, "wb") if path else None  # noqa: SIM115 (closed by close())
        self.header = ""
        self.header_written = False

    def add(self, order: OrderLine) -> None:
        if self.file is None or not order.text:  # an oversized line is not copied (its reason says so)
            return
        if self.header and not self.header_written:
            self.write(self.header)
            self.header_written = True
        self.write(order.text)

    def write(self, text: str) -> None:
        assert self.file is not None
        if not text.endswith(("\n", "\r")):
            text += "\n"
        self.file.write(text.encode("utf-8", "surrogateescape"))

    def close(self) -> None:
        if self.file is None:
            return
        if self.header and not self.header_written:
            self.write(self.header)  # no rejects: still a valid (empty) import file
        self.file.close()


@dataclass
class OrderBatch:
    """What one import transaction applies: up to --batch-size valid orders in file order
    (with their text: an order whose identifiers are all blocked is rejected by the
    transaction), the invalid lines read before the last of them, and the settled read made
    ahead."""

    orders: list[tuple[int, str | None, str | None]] = field(default_factory=list)  # (line, email, phone)
    texts: list[str] = field(default_factory=list)  # each order's record as read, for --rejects
    rejected: list[OrderLine] = field(default_factory=list)
    lines: int = 0  # order lines read for this batch, valid and rejected
    bytes_read: int = 0  # the file's position after it, for the progress bar
    header: str = ""  # the CSV header row as read ("" for JSON Lines), for --rejects
    settled: tuple[int, list[bool]] | None = None  # settled_read, made by ReadAhead

    def pairs(self) -> list[tuple[str | None, str | None]]:
        """The orders' canonical (email, phone), in file order."""
        return [(email, phone) for _, email, phone in self.orders]

    def take_settled_read(self) -> tuple[int, list[bool]] | None:
        """The settled read made ahead, once: a retried transaction reads again."""
        settled, self.settled = self.settled, None
        return settled


def order_batches(orders: OrderFile, size: int) -> Iterator[OrderBatch]:
    """The file in batches of `size` valid orders; a batch also ends at `size` rejected lines
    (memory never holds more), and the last may have fewer of either."""
    batch = OrderBatch()
    for order in orders.orders():
        batch.lines += 1
        if order.reason is None:
            batch.orders.append((order.number, order.email, order.phone))
            batch.texts.append(order.text)
        else:
            batch.rejected.append(order)
        if len(batch.orders) >= size or len(batch.rejected) >= size:
            batch.bytes_read, batch.header = orders.bytes_read, orders.header
            yield batch
            batch = OrderBatch()
    if batch.lines:
        batch.bytes_read, batch.header = orders.bytes_read, orders.header
        yield batch
