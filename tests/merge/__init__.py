"""The merge under concurrency and faults: bursts against gunicorn workers, transactions and
lock waits, the database stopped and workers killed mid-write, slow clients, and the checker
that judges what they leave behind."""
