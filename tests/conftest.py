"""Shared fixtures: tiny presets built once per session, loaded through from_pretrained.

Tests live in layers, each marked after its folder so one layer runs alone
(``pytest -m unit``, ``-m cluster``, ``-m multiprocess``); ``make test`` runs them all.
"""

from __future__ import annotations

from pathlib import Path

import pytest



@pytest.fixture(scope="session")
def preset_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("videoserve-cache")


@pytest.fixture(scope="session")
def tiny_spec(preset_cache):
    from engine.models.model_registry import resolve_model

    return resolve_model("tiny", preset_cache)


@pytest.fixture(scope="session")
def tiny_i2v_spec(preset_cache):
    from engine.models.model_registry import resolve_model

    return resolve_model("tiny-i2v", preset_cache)


class _PresetSpecs(dict):
    """name -> ModelSpec of a built-in preset, built on first use."""

    def __init__(self, cache: Path):
        super().__init__()
        self.cache = cache

    def __missing__(self, name: str):
        from engine.models.model_registry import resolve_model

        self[name] = resolve_model(name, self.cache)
        return self[name]


@pytest.fixture(scope="session")
def preset_specs(preset_cache) -> _PresetSpecs:
    return _PresetSpecs(preset_cache)


class _Pipelines(dict):
    """name -> StagedPipeline of a built-in preset (or a ModelSpec's source), loaded once."""

    def __init__(self, specs: _PresetSpecs):
        super().__init__()
        self.specs = specs

    def __missing__(self, name: str):
        from engine.staged_pipeline import StagedPipeline

        self[name] = StagedPipeline.load(self.specs[name])
        return self[name]


@pytest.fixture(scope="session")
def preset_pipelines(preset_specs) -> _Pipelines:
    return _Pipelines(preset_specs)


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_spec):
    from engine.staged_pipeline import StagedPipeline

    return StagedPipeline.load(tiny_spec)


@pytest.fixture(scope="session")
def tiny_i2v_pipeline(tiny_i2v_spec):
    from engine.staged_pipeline import StagedPipeline

    return StagedPipeline.load(tiny_i2v_spec)


from tests.support.redis_server import redis_server  # noqa: E402,F401  (a real redis-server, once per session)
from tests.support.serving_cluster import ray_cluster, serve_port  # noqa: E402,F401


LAYERS = ("unit", "cluster", "multiprocess")


def pytest_collection_modifyitems(config, items):
    for item in items:
        layer = Path(str(item.fspath)).parent.name
        if layer in LAYERS:
            item.add_marker(getattr(pytest.mark, layer))
