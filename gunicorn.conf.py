"""gunicorn settings for FluxKart Identity (12-factor: everything from the environment).

gunicorn -c gunicorn.conf.py 'fluxkart:create_app()'
"""

import multiprocessing
import os

# Local by default (SPEC, "Access"): only this machine can reach a started service
# until HOST says otherwise. The Procfile, the production path, binds every interface.
# The platform (or the load balancer's target group) says which port.
bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '3000')}"

# gevent workers, one per core (docs/performance.md, "The worker model"). A gevent worker
# serves each client connection in a greenlet, so idle keep-alive connections and
# clients that send slowly cost a few KiB each instead of a whole worker: with the
# old default (6 sync workers) 8 slow clients stopped the service; with this one
# 1,000 do not (tests/merge/test_slow_clients.py). PyMySQL is pure Python, so once gevent
# has patched the socket module a greenlet waiting for MariaDB lets the others run;
# each request borrows its own connection from the worker's pool
# (FLUXKART_DB_POOL_SIZE), never shared while in use. Throughput and CPU per request
# matched 6 sync workers side by side; more processes than cores only add memory.
# Other models stay one variable away: GUNICORN_WORKER_CLASS=sync WEB_CONCURRENCY=6
# (needs a buffering proxy in front), or GUNICORN_THREADS=8 for gthread.
# (With more than one thread gunicorn runs gthread whatever the class says.)
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count()))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gevent")
threads = int(os.environ.get("GUNICORN_THREADS", "1"))
# Client connections one gevent worker holds open at once (idle, slow or active);
# past it the worker stops accepting and the others take new connections.
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "2000"))

# A request that takes this long is stuck (every database wait is bounded far below it).
timeout = 60
graceful_timeout = 30
# Longer than a typical load balancer's idle timeout (60 s), so the balancer
# closes idle connections first and never sends a request on one we just closed.
keepalive = 75

# gunicorn 27's control socket lives at one path per user (~/.gunicorn), shared
# by every gunicorn on the host; we do not use gunicornc, so leave it off.
control_socket_disable = True

# Logs go to stdout/stderr for the platform to collect.
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")

# Prometheus counts from every worker: each writes to files in a shared folder
# that /metrics sums. A fresh folder per gunicorn run, so counts start at zero.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    import tempfile

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="fluxkart-metrics-")

    def on_exit(server):  # noqa: ANN001, ANN201 (gunicorn's hook signature)
        """Remove the metrics folder this run made."""
        import shutil

        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


def on_starting(server):  # noqa: ANN001, ANN201 (gunicorn's hook signature)
    """Check the configuration before binding the port or forking a worker (SPEC, "Start-up"):
    a wrong setting exits here with one line naming it; the first line logged says which
    backend, host, database, schema and how many contacts this service serves."""
    from identity.startup import check_before_serving

    check_before_serving()


def child_exit(server, worker):  # noqa: ANN001, ANN201 (gunicorn's hook signature)
    """Fold a dead worker's gauges away so /metrics does not report it forever."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
