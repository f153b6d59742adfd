"""FluxKart Identity's parts: everything beside fluxkart.py (the app), one concern per module.

Imports run one way, from the ground up; nothing here imports fluxkart.py:

    errors, settings, sql                  no dependency on the rest
    observability, database                metrics and logs; one connection, both drivers
    pool, transactions                     the app's connections; retried units of work
    normalize, merge, reads                identifiers; the merge protocol; read-only answers
    history, erasure, changes              what changed and why; erasing a customer; the feed
    console                                support staff's pages (a blueprint)
    progress, canonical, split             the commands' shared pieces (split: what a blocked value joined)
    repair, migrate, block, order_file, import_batch, import_orders   the commands
"""
