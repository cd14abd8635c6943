"""Tests on the session's real local Ray cluster: served apps, deployments, the cache actor."""
