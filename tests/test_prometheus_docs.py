"""docs/prometheus: the fleet's scrape config, alert rules (checked and unit-tested with promtool) and
Grafana dashboard, whose every query must name only metrics a real bin exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from recyclex_edge.daemon import Daemon
from tests.mqtt.support import Mosquitto
from tests.test_daemon import bin_config, broker_settings, photo_folder, run_daemon  # noqa: F401
from tests.test_daemon_metrics import promtool, scrape

DOCS = Path(__file__).resolve().parents[1] / "docs" / "prometheus"
RULES = DOCS / "recyclex.rules.yml"
DASHBOARD = DOCS / "grafana-fleet-dashboard.json"
# Series Prometheus makes itself for every target.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS |= {"offset", "bool", "inf", "nan"}
# Aggregations may be followed by `by (...)` before their parenthesis.
_KEYWORDS |= {"sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "topk", "bottomk"}
_KEYWORDS |= {"quantile", "count_values"}


def run_promtool(*args: str, cwd: Path) -> None:
    result = subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels, keywords or durations)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    names = set()
    for match in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", expr):
        name, call = match.group(1), match.group(2)
        if call is None and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def rule_expressions() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            exprs.append(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", query["query"]))
    return exprs


def test_the_expression_parser_finds_metric_names_only() -> None:
    expr = (
        'histogram_quantile(0.9, sum by (instance, le) (rate(a_seconds_bucket{x=~"$site"}[30m])))'
        " > 1.5 * avg_over_time(b_ratio[7d] offset 1h) and up == 0 or c_total unless on(job) d"
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_ratio", "up", "c_total", "d"}


def test_the_rules_pass_promtool_check_and_their_unit_tests() -> None:
    run_promtool("check", "rules", RULES.name, cwd=DOCS)
    run_promtool("test", "rules", "recyclex.rules.test.yml", cwd=DOCS)


def test_the_scrape_config_passes_promtool(tmp_path: Path) -> None:
    # promtool also checks that the files it names exist: a copy, with a token file of its own.
    config = tmp_path / "prometheus"
    shutil.copytree(DOCS, config)
    (config / "recyclex-admin-token").write_text("a-token-for-promtool-only\n")
    run_promtool("check", "config", "prometheus.yml", cwd=config)
    jobs = yaml.safe_load((config / "prometheus.yml").read_text())["scrape_configs"]
    assert [job["job_name"] for job in jobs] == ["recyclex-bins"], "the rules and dashboard select this job"


async def test_every_query_names_only_metrics_a_bin_exports(
    tmp_path: Path,
    broker: Mosquitto,
    run_daemon: Any,  # noqa: F811
) -> None:
    photos = photo_folder(tmp_path, ["glass"])
    config = bin_config(
        tmp_path,
        photos,
        *broker_settings(broker.port, "bin-fleet"),
        "sorter.bins.glass.fill_sensor.trigger_pin=23",
        "sorter.bins.glass.fill_sensor.echo_pin=24",
        "sorter.bins.glass.fill_sensor.empty_distance_m=1.0",
        "sorter.bins.glass.fill_sensor.full_distance_m=0.2",
    )
    daemon: Daemon = await run_daemon(config)
    text, _ = await scrape(daemon)
    exported = set(SYNTHETIC)
    for family in text_string_to_metric_families(text):
        exported.add(family.name)
        exported.update(sample.name for sample in family.samples)
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "info": ["_info"]}
        exported.update(family.name + suffix for suffix in suffixes.get(family.type, []))

    used = {name for expr in rule_expressions() + dashboard_expressions() for name in metric_names(expr)}
    assert used - exported == set(), "queries name metrics no bin exports"
    own = {name for name in exported if name.startswith("recyclex_")}
    assert len(used & own) >= 20, "the dashboard and the rules cover the bin's own metrics"
