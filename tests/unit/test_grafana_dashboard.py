"""The Grafana dashboard queries only metrics the code exports, and shows every one it should.

The metric names are pulled out of each PromQL expression with a small tokenizer (strings,
label matchers, range durations, functions, aggregations, keywords and ``by (...)`` label
lists are skipped), then checked against ``serve.metrics.METRICS``.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator

import pytest

from serve.metrics import METRICS
from tests.support.repo import REPO_ROOT

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "videoserve-dashboard.json"

# Metrics in METRICS that the dashboard deliberately does not chart (name -> why). Empty:
# everything the code exports is on the dashboard.
NOT_CHARTED: dict[str, str] = {}

REQUIRED_PANELS = (
    "Request rate",
    "End-to-end job latency",
    "Stage latency",
    "Queue depth",
    "In-flight calls by stage",
    "Replicas per stage",
    "Denoise batch size",
    "Denoise step time",
    "Cache hit ratio",
    "Jobs by state",
    "Stage failures",
    "Job retries",
    "Webhook deliveries",
)

_TOKEN = re.compile(
    r"""
    (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<variable>\$\{[^}]*\}|\$\w+|\[\[\w+\]\])
  | (?P<duration>\d+(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*\b)
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<identifier>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<symbol>\S)
    """,
    re.VERBOSE,
)
_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
                 "topk", "quantile", "limitk", "limit_ratio"}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
# Each of these is followed by a parenthesised list of label names, not of expressions.
_LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
# Grafana's templating functions: label_values(<PromQL selector>, <label>) and friends.
_LABEL_VALUES = re.compile(r"^\s*label_values\s*\((?P<selector>.*),\s*[A-Za-z_]\w*\s*\)\s*$", re.DOTALL)
_QUERY_RESULT = re.compile(r"^\s*query_result\s*\((?P<selector>.*)\)\s*$", re.DOTALL)


def _tokens(expr: str) -> list[tuple[str, str]]:
    return [(match.lastgroup, match.group()) for match in _TOKEN.finditer(expr)]


def _skip_parenthesised(tokens: list[tuple[str, str]], start: int) -> int:
    """Index just past the ``(...)`` group that opens at ``start``."""
    depth = 0
    for index in range(start, len(tokens)):
        depth += {"(": 1, ")": -1}.get(tokens[index][1], 0)
        if depth == 0:
            return index + 1
    raise ValueError(f"unbalanced parentheses in {''.join(text for _, text in tokens)!r}")


def metric_names(expr: str) -> set[str]:
    """Every metric name a PromQL expression selects."""
    tokens = _tokens(expr)
    names: set[str] = set()
    braces = brackets = 0
    index = 0
    while index < len(tokens):
        kind, text = tokens[index]
        following = tokens[index + 1][1] if index + 1 < len(tokens) else ""
        if text in "{}[]" and kind == "symbol":
            braces += {"{": 1, "}": -1}.get(text, 0)
            brackets += {"[": 1, "]": -1}.get(text, 0)
        elif kind == "identifier" and braces == 0 and brackets == 0:
            word = text.lower()
            if word in _LABEL_LIST_KEYWORDS:
                if following == "(":
                    index = _skip_parenthesised(tokens, index + 1)
                    continue
            elif word in _AGGREGATIONS or word in _KEYWORDS or following == "(":
                pass  # an aggregation, a keyword or a function call
            else:
                names.add(text)
        index += 1
    return names


def templating_metric_names(query: str) -> set[str]:
    for pattern in (_LABEL_VALUES, _QUERY_RESULT):
        found = pattern.match(query)
        if found:
            return metric_names(found["selector"])
    if re.match(r"^\s*label_values\s*\(\s*[A-Za-z_]\w*\s*\)\s*$", query):
        return set()  # label_values(label): every series, no metric named
    return metric_names(query)


def exported_series() -> dict[str, str]:
    """Series name Prometheus stores -> the METRICS entry that exports it."""
    series = {}
    for name, (kind, _) in METRICS.items():
        if kind == "histogram":
            series.update({f"{name}{suffix}": name for suffix in ("_bucket", "_sum", "_count")})
        else:
            series[name] = name  # gauges as named; counters under their exported _total name
    return series


def all_panels(dashboard: dict) -> Iterator[dict]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # panels inside a collapsed row


def queries(dashboard: dict) -> Iterator[tuple[str, str, set[str]]]:
    """(where, query, metric names) for every target and every templating query."""
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            if "expr" in target:
                yield f"panel {panel['title']!r} target {target['refId']}", target["expr"], metric_names(target["expr"])
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            yield f"variable {variable['name']!r}", text, templating_metric_names(text)


def unknown_metrics(dashboard: dict) -> list[str]:
    known = exported_series()
    return [f"{where}: {name}" for where, _, names in queries(dashboard) for name in sorted(names) if name not in known]


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


@pytest.mark.parametrize(
    "expr,expected",
    [
        ('sum by (route, status) (rate(videoserve_http_requests_total{job=~"$job"}[$__rate_interval]))',
         {"videoserve_http_requests_total"}),
        ("histogram_quantile(0.95, sum by (le, stage) (rate(a_seconds_bucket[5m])))", {"a_seconds_bucket"}),
        ("sum(rate(x_total[1h30m] offset 5m)) without (instance) / on(job) group_left(stage) y", {"x_total", "y"}),
        ('max(z{route="looks_like_a_metric", le="1e3"}) > bool 1e3 and w unless inf', {"z", "w"}),
        ("topk(3, count_values(\"v\", q)) or atan2(p, 2)", {"q", "p"}),
        ("sum(rate(a_total[5m])) by (cache) / ignoring(cache) b:recorded:rate5m", {"a_total", "b:recorded:rate5m"}),
    ],
)
def test_the_extractor_finds_exactly_the_metric_names(expr, expected):
    assert metric_names(expr) == expected


def test_the_extractor_reads_grafana_templating_functions():
    assert templating_metric_names('label_values(videoserve_jobs{namespace=~"$namespace"}, job)') == {"videoserve_jobs"}
    assert templating_metric_names("label_values(namespace)") == set()
    assert templating_metric_names("query_result(sum by (job) (m_total))") == {"m_total"}


def test_every_queried_metric_is_exported_by_the_code(dashboard):
    found = {name for _, _, names in queries(dashboard) for name in names}
    assert found, "no metric names were extracted from the dashboard"
    assert unknown_metrics(dashboard) == []


def test_an_unknown_metric_would_be_caught(dashboard):
    broken = copy.deepcopy(dashboard)
    target = next(panel for panel in all_panels(broken) if panel.get("targets"))["targets"][0]
    target["expr"] = 'sum(rate(videoserve_no_such_metric_total{job=~"$job"}[5m])) / sum(videoserve_jobs)'
    assert [problem.rsplit(": ", 1)[1] for problem in unknown_metrics(broken)] == ["videoserve_no_such_metric_total"]
    # A histogram's bare name and a counter's name without _total are not series Prometheus stores.
    target["expr"] = "rate(videoserve_job_duration_seconds[5m]) + rate(videoserve_http_requests[5m])"
    assert len(unknown_metrics(broken)) == 2


def test_every_exported_metric_is_charted_unless_listed(dashboard):
    series = exported_series()
    charted = {series[name] for _, _, names in queries(dashboard) for name in names if name in series}
    assert set(METRICS) - charted == set(NOT_CHARTED)
    assert set(NOT_CHARTED) <= set(METRICS)


def test_the_required_panels_exist_and_query_something(dashboard):
    panels = {panel["title"]: panel for panel in all_panels(dashboard)}
    for title in REQUIRED_PANELS:
        assert title in panels, title
        targets = panels[title]["targets"]
        assert targets and all(metric_names(target["expr"]) for target in targets), title


def test_the_dashboard_is_importable_without_inputs(dashboard):
    assert "__inputs" not in dashboard and dashboard["uid"] == "videoserve" and dashboard["schemaVersion"] >= 36
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in all_panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in all_panels(dashboard):
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert [target["refId"] for target in panel["targets"]] == [chr(ord("A") + i) for i in range(len(panel["targets"]))]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    # Every $variable an expression uses is defined (or is one of Grafana's own).
    used = {name for _, query, _ in queries(dashboard) for name in re.findall(r"\$(\w+)", query)}
    assert used - {"__rate_interval", "__interval", "__range"} <= set(variables)
