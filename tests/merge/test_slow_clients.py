"""Idle and slow clients do not stop the service from answering others (issue 12).

The service is started as the Procfile starts it (`gunicorn -c gunicorn.conf.py
'fluxkart:create_app()'`, tests/harness/gunicorn.py), with gunicorn.conf.py's defaults
(no WEB_CONCURRENCY or GUNICORN_* from the environment), on 127.0.0.1. A thousand
connections are opened and held: idle ones, ones that send their headers a line at
a time, ones that send part of a body. While they are held, a fresh client's health
checks and identify requests must be answered, and afterwards the held connections
must still be served (so they really were held open, not dropped). With the old
default of 6 sync workers the fresh client's first request never got an answer (a
worker per slow connection); here a request that is not answered fails the test
when its socket times out, which bounds the test's run time. Nothing is timed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests

from tests.harness.gunicorn import Gunicorn
from tests.harness.slow_clients import SlowClients, raise_open_files_limit

HELD = 1000  # connections held open while other clients are served (fewer if the open-files limit is low)
FINISHED = 5  # held connections of each kind completed at the end


def test_other_clients_are_answered_while_many_connections_are_idle_or_slow(
    settings: dict[str, Any], tmp_path: Path
) -> None:
    """health and identify answer a fresh client while 1,000 idle/slow connections are held."""
    # This process holds one end of each connection, a gunicorn worker the other.
    limit = raise_open_files_limit(4 * HELD)
    count = min(HELD, limit - 200)
    # 6 sync workers were stopped by 8 slow clients: a few hundred still tells the models apart.
    assert count >= 200, f"open files limit {limit} is too low for this test (ulimit -n)"
    server = Gunicorn(settings, tmp_path, log_path=tmp_path / "gunicorn.log")
    # gunicorn.conf.py's own defaults, whatever this shell sets (as a Procfile runner starts it).
    for name in [n for n in server.env if n == "WEB_CONCURRENCY" or n.startswith("GUNICORN_")]:
        del server.env[name]
    server.start()
    held = SlowClients(server.port, count)
    try:
        held.open()
        base = f"http://127.0.0.1:{server.port}"
        with requests.Session() as fast:
            for round_ in range(3):
                held.trickle()
                assert fast.get(f"{base}/health/live", timeout=30).status_code == 200
                assert fast.get(f"{base}/health/ready", timeout=30).status_code == 200
                body = {"email": f"fast{round_}@example.com", "phoneNumber": f"55512{round_}"}
                first = fast.post(f"{base}/identify", json=body, timeout=30)
                again = fast.post(f"{base}/identify", json=body, timeout=30)
                assert first.status_code == again.status_code == 200, first.text
                assert first.json() == again.json()
                assert first.json()["contact"]["emails"] == [body["email"]]
        # A fresh connection per request too (a load balancer's health checks do that).
        assert requests.get(f"{base}/health/live", timeout=30).status_code == 200
        # The held connections were being held, not dropped: they are served when they finish.
        assert held.finish("slow body", FINISHED) == [200] * FINISHED
        assert held.finish("slow headers", FINISHED) == [200] * FINISHED
        assert held.finish("idle", FINISHED) == [200] * FINISHED
    finally:
        held.close()
        server.stop()
    log = (tmp_path / "gunicorn.log").read_text()
    assert "Traceback" not in log, log[-3000:]
