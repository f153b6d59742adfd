"""The FluxKart Identity benchmark (not imported by the service).

Run its scripts as modules from the repository root: `.venv/bin/python -m bench.run` (or
`python3 dev.py bench`), `-m bench.import_bench`, `-m bench.legacy`, `-m bench.history_cost`,
`-m bench.galera_causal`. It shares the tests' harness (tests/harness/: the gunicorn launcher,
throwaway MariaDB and Galera servers, the invariant checker); the tests never import bench/.
"""
