"""Tests of one layer in one process: no Ray cluster, no gang of ranks (a real redis-server or a child process where the thing under test is one)."""
