"""Observability: Prometheus metrics, JSON log lines, and each request's id and access line."""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import sys
import time
from datetime import UTC, datetime
from typing import Any

import prometheus_client
import prometheus_client.multiprocess as prometheus_multiprocess
from flask import Flask, Response, g, has_request_context, request
from werkzeug.exceptions import MethodNotAllowed

access_log = logging.getLogger("fluxkart.access")

# Under gunicorn, gunicorn.conf.py points PROMETHEUS_MULTIPROC_DIR at a shared
# folder, so every worker's counts reach /metrics whichever worker serves it.
HTTP_REQUESTS = prometheus_client.Counter(
    "fluxkart_http_requests", "HTTP requests answered", ["method", "route", "status"]
)
HTTP_LATENCY = prometheus_client.Histogram(
    "fluxkart_http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)
IDENTIFY_OUTCOMES = prometheus_client.Counter(
    "fluxkart_identify_outcomes", "identify results: created, linked, merged, unchanged", ["outcome"]
)
TRANSACTION_RETRIES = prometheus_client.Counter(
    "fluxkart_transaction_retries",
    "transactions started over, by reason and unit of work",
    ["reason", "unit"],
)
# Merge protection (SPEC): identifiers left out of requests, and answers about customers
# past the limit (each one a customer an operator should split: docs/merge-protection.md).
IGNORED_IDENTIFIERS = prometheus_client.Counter(
    "fluxkart_ignored_identifiers", "request identifiers left out by merge protection", ["field", "reason"]
)
PAST_LIMIT_ANSWERS = prometheus_client.Counter(
    "fluxkart_past_limit_answers", "answers about a customer past the identifier limit (partial)"
)
# (method, route, status) -> its two series: a fixed set (KNOWN_METHODS, routes, statuses).
request_series: dict[tuple[str, str, int], tuple[Any, Any]] = {}
REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
# Label values come from this fixed set, never from the client: an invented method counts
# as "other" and a path that matches no route as "unmatched", so no request can add a series
# (each one lives in every worker's file of the multiprocess folder and in every scrape).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the current request's id when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if has_request_context() and "request_id" in g:
            entry["request_id"] = g.request_id
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging() -> None:
    """Send the service's logs to stdout as JSON lines (once per process)."""
    logger = logging.getLogger("fluxkart")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        logger.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())
        logger.propagate = False


def start_request() -> None:
    """Make this request's id (the one history and audit lines record: SPEC, "History and
    erasure"); keep a sane X-Request-ID the client sent beside it, for correlation only."""
    g.request_id = secrets.token_hex(16)  # 32 hex digits, as uuid4().hex, for less work
    given = request.headers.get("X-Request-ID", "")
    if REQUEST_ID.fullmatch(given):
        g.client_request_id = given
    g.started = time.perf_counter()


def method_label() -> str:
    """The request's method as a metric label: one of KNOWN_METHODS, else "other"."""
    return request.method if request.method in KNOWN_METHODS else "other"


def finish_request(response: Response) -> Response:
    """Answer the request id (and the client's beside it), count the request, and write its
    access log line.

    The query string and body are never logged, nor the path of a request that
    matched no route: they can carry customers' emails and phone numbers.
    """
    elapsed = time.perf_counter() - g.get("started", time.perf_counter())
    route = request.url_rule.rule if request.url_rule else "unmatched"
    response.headers["X-Request-ID"] = g.get("request_id", "")
    client_id = g.get("client_request_id")
    if client_id is not None:
        response.headers["X-Client-Request-ID"] = client_id
    method = method_label()
    counted = (method, route, response.status_code)
    if counted not in request_series:  # labels() validates and locks: once per series
        request_series[counted] = (HTTP_REQUESTS.labels(*counted), HTTP_LATENCY.labels(method, route))
    requests_counter, latency = request_series[counted]
    requests_counter.inc()
    latency.observe(elapsed)
    fields = {
        "method": method,
        "route": route,
        "path": request.path if path_is_known() else None,
        "status": response.status_code,
        "duration_ms": round(elapsed * 1000, 2),
    }
    if client_id is not None:
        fields["client_request_id"] = client_id
    if "identify_outcome" in g:
        IDENTIFY_OUTCOMES.labels(g.identify_outcome).inc()
        fields["outcome"] = g.identify_outcome
    fields.update(g.get("log_fields", {}))  # a view's own figures (erasure counts), never identifiers
    if access_log.isEnabledFor(logging.INFO):
        # makeRecord + handle: Logger.info would also walk the stack for a
        # caller we never print, on every request.
        access_log.handle(
            access_log.makeRecord(
                access_log.name, logging.INFO, "", 0, "request", (), None, extra={"fields": fields}
            )
        )
    return response


def path_is_known() -> bool:
    """True when the path is one of our routes (maybe with another method), so it holds no identifier."""
    return request.url_rule is not None or isinstance(request.routing_exception, MethodNotAllowed)


def metrics_page() -> Response:
    """Prometheus text format, summed over every gunicorn worker when multiprocess."""
    registry: Any = prometheus_client.REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = prometheus_client.CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return Response(
        prometheus_client.generate_latest(registry), content_type=prometheus_client.CONTENT_TYPE_LATEST
    )


def init_app(app: Flask) -> None:
    """Log as JSON lines; give every request an id, and count and log it when it ends."""
    configure_logging()
    app.before_request(start_request)
    app.after_request(finish_request)
