"""The commands: init-db and the other CLI commands, migrate from the legacy table, repair,
import, every named SQL statement, and a service started with a bad configuration."""
