"""FluxKart Identity's parts: everything beside fluxkart.py (the app), one concern per module.

Imports run one way, from the ground up; nothing here imports fluxkart.py:

    errors, settings, sql             no dependency on the rest
    observability, database           metrics and logs; one connection, both drivers
    startup                           the check before serving (settings, database, schema)
    protection                        merge protection's rules: blocked values, the limit (pure)
    pool, protection_in_force         the app's connections; the protection in force, from the database
    transactions, scrub               retried units of work; SQLite's erased bytes made gone
    normalize, component, merge       identifiers; a customer's rows (bounded); the merge protocol
    reads, history, erasure, changes  answers; what changed and why; erasing a customer; the feed
    http, sessions, console           reading a request; console sessions; support staff's pages
    progress, canonical, split        the commands' shared pieces (split: what a blocked value joined)
    repair, migrate, block, order_file, import_batch, import_orders   the commands
"""
