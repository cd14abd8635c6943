"""Rendering and linting the videoserve Helm chart from Python (Helm's Go SDK via helm_python).

Values compose the way ``helm template -f a.yaml -f b.yaml --set ...`` composes them: the
files deep-merge in order, ``set_values`` last, and the chart's own values.yaml under
all of them (Helm coalesces that part itself, schema check included).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import helm_python
import yaml

from serve.deployment_defaults import merge_options

CHART_DIR = Path(__file__).resolve().parent.parent / "helm" / "videoserve"


class ChartRenderError(RuntimeError):
    """Helm refused the values or a template failed; the message is Helm's own."""


def user_values(values_files: Iterable[Path] = (), set_values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The user-supplied values: files merged in order, then ``set_values``.

    ``set_values`` is nested values, or ``--set``-style dotted paths at the top level
    (``{"serve.args.model": "tiny"}``); values are taken as given (no string parsing).
    """
    merged: dict[str, Any] = {}
    for path in values_files:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ChartRenderError(f"{path}: a values file must hold a mapping, not {type(loaded).__name__}")
        merged = merge_options(merged, loaded)
    for key, value in (set_values or {}).items():
        merged = merge_options(merged, _nested(key.split("."), value))
    return merged


def render_manifests(
    values_files: Iterable[Path] = (),
    set_values: Mapping[str, Any] | None = None,
    release: str = "videoserve",
    namespace: str = "default",
    chart_dir: Path = CHART_DIR,
) -> list[dict[str, Any]]:
    """Every object the chart renders for these values, parsed, in template order."""
    values = user_values(values_files, set_values)
    try:
        helm_python.validate_release_name(release)
        with helm_python.Chart.load(str(chart_dir)) as chart:
            rendered = chart.render(values, name=release, namespace=namespace, is_install=True)
    except helm_python.HelmError as error:
        raise ChartRenderError(str(error)) from error
    manifests: list[dict[str, Any]] = []
    for template in sorted(rendered):
        if template.endswith("NOTES.txt"):
            continue
        manifests.extend(document for document in yaml.safe_load_all(rendered[template]) if document)
    return manifests


def lint_chart(
    values_files: Iterable[Path] = (),
    set_values: Mapping[str, Any] | None = None,
    namespace: str = "default",
    chart_dir: Path = CHART_DIR,
    strict: bool = True,
) -> list[str]:
    """``helm lint [--strict]``: the findings that fail it (errors, and warnings when strict); empty when clean."""
    values = user_values(values_files, set_values)
    try:
        report = helm_python.lint(str(chart_dir), values, strict=strict, namespace=namespace)
    except helm_python.HelmError as error:
        raise ChartRenderError(str(error)) from error
    failing = 2 if strict else 3  # severities: 1 info, 2 warning, 3 error
    return [f"[{message['path']}] {message['error'].strip()}" for message in report["messages"]
            if message["severity"] >= failing]


def rayservice_of(manifests: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The one RayService among rendered manifests."""
    found = [dict(manifest) for manifest in manifests if manifest.get("kind") == "RayService"]
    if len(found) != 1:
        raise ChartRenderError(f"expected exactly one RayService in the rendered chart, found {len(found)}")
    return found[0]


def _nested(path: list[str], value: Any) -> dict[str, Any]:
    for key in reversed(path[1:]):
        value = {key: value}
    return {path[0]: value}


