"""The service on a three-node MariaDB Galera cluster."""
