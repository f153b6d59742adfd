"""gunicorn settings for FluxKart Identity (12-factor: everything from the environment).

    gunicorn -c gunicorn.conf.py 'fluxkart:create_app()'
"""

import multiprocessing
import os

# The platform (or the load balancer's target group) says which port.
bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '3000')}"

# One process per core keeps both cores busy on Python work; threads overlap
# each request's database round trips. Override per host with WEB_CONCURRENCY
# and GUNICORN_THREADS.
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count()))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
threads = int(os.environ.get("GUNICORN_THREADS", "8"))

# A request that takes this long is stuck (every database wait is bounded far below it).
timeout = 60
graceful_timeout = 30
# Longer than a typical load balancer's idle timeout (60 s), so the balancer
# closes idle connections first and never sends a request on one we just closed.
keepalive = 75

# Logs go to stdout/stderr for the platform to collect.
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
