"""Durable jobs: the typed spec, the store (interface, SQLite and Redis backends, the
factory that picks one), the in-replica update push, and the runner that takes a job
through the stages."""
