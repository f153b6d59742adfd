"""The app served in this process over real HTTP, and the client the API tests use.

`LiveServer(app)` serves a Flask app on 127.0.0.1 with a threaded werkzeug server (a port
from FLUXKART_TEST_PORTS when set); `Api(url)` sends requests to it and checks every
answer against openapi.json. `LogLines` is the type of conftest's `log_lines` fixture.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import requests
from werkzeug.serving import make_server

from tests.harness.openapi_check import check_app_answer
from tests.harness.processes import free_port, port_range

# The JSON lines the service logged, parsed: log_lines() at any point of a test.
LogLines = Callable[[], list[dict[str, Any]]]


class LiveServer:
    """The app served over real HTTP on 127.0.0.1 by a threaded werkzeug server."""

    def __init__(self, app: Any):
        for attempt in range(3):
            try:
                # Port 0: any port the kernel offers, unless FLUXKART_TEST_PORTS narrows the choice.
                port = free_port() if port_range() else 0
                self.httpd = make_server("127.0.0.1", port, app, threaded=True)
                break
            except OSError:  # taken between free_port() and bind
                if attempt == 2:
                    raise
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        # serve_forever checks for shutdown() every poll_interval (0.5 s by default):
        # a short one keeps each test's teardown from costing half a second.
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Api:
    """requests against the live server: api.post("/identify", json=...)."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        self.session = requests.Session()
        # Every answer the app gives any test must match openapi.json.
        self.session.hooks["response"].append(check_app_answer)

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return self.session.request(method, self.base_url + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def identify(self, email: Any = None, phone: Any = None) -> dict[str, Any]:
        """POST /identify, asserting 200; returns the "contact" object."""
        response = self.post("/identify", json={"email": email, "phoneNumber": phone})
        assert response.status_code == 200, response.text
        return dict(response.json()["contact"])
