"""The HTTP ceiling: Flask under the service's own gunicorn settings, answering a constant JSON.

    gunicorn -c gunicorn.conf.py 'bench.trivial_app:create_app()'

It reads the request body (as identify does) and answers a body of the same shape and
about the same size as a small identify answer, with no database and no logic: what
gunicorn + Flask alone cost per request on this machine.
"""

from __future__ import annotations

from flask import Flask, Response, jsonify, request

ANSWER = {
    "contact": {
        "primaryContactId": 12345,
        "primaryContatctId": 12345,
        "emails": ["ana.shah12345@example.com"],
        "phoneNumbers": ["9123456789"],
        "secondaryContactIds": [],
    }
}


def create_app() -> Flask:
    """A Flask app with POST /identify (constant answer) and GET /health/live."""
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]

    @app.post("/identify")
    def identify() -> Response:
        """Read the body, answer the constant."""
        request.get_data(cache=False)
        return jsonify(ANSWER)

    @app.get("/health/live")
    def live() -> Response:
        """What the benchmark polls to know the workers are up."""
        return jsonify(status="ok")

    return app
