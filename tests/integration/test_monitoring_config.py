"""Monitoring configuration, checked with the real tools: promtool (Prometheus config, rules and
their unit tests in prometheus/alert_rules_test.yml), amtool and a real Alertmanager (config,
routes, inhibition, the webhook's bearer token from a file), the Grafana dashboard's queries
against the receiver's metric names, and the compose services that run all three.

A missing tool skips its tests locally and fails them in CI (`CI=true`; .ci/run installs the
Debian packages prometheus and prometheus-alertmanager)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
import yaml
from compose_env import dummy, example_values
from receiver import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_CONFIG = ROOT / "prometheus" / "prometheus.yml"
RULES = ROOT / "prometheus" / "alert_rules.yml"
RULES_TEST = ROOT / "prometheus" / "alert_rules_test.yml"
ALERTMANAGER_CONFIG = ROOT / "alertmanager" / "alertmanager.yml"
DASHBOARD = ROOT / "grafana" / "dashboards" / "holysheep.json"
DATASOURCE = ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDER = ROOT / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
COMPOSE_FILE = ROOT / "docker-compose.yml"

# What the receiver can expose (ingest/metrics.py), plus Prometheus's own `up`; some only when
# configured: the shipping gauges with a sink, the relay quota with INGEST_RELAY_USAGE_URL.
# test_known_metrics_are_what_the_receiver_can_expose holds this list to the code.
KNOWN_METRICS = {
    "holysheep_relay_requests_total": "counter",
    "holysheep_relay_latency_seconds": "histogram",
    "holysheep_relay_tokens_total": "counter",
    "holysheep_relay_cost_usd_total": "counter",
    "ingest_webhooks_total": "counter",
    "ingest_store_events": "gauge",
    "ingest_store_unindexed_events": "gauge",
    "ingest_shipping_lag_seconds": "gauge",
    "ingest_bulk_items_total": "counter",
    "ingest_bulk_duration_seconds": "histogram",
    "ingest_bulk_failures_total": "counter",
    "ingest_sink_up": "gauge",
    "ingest_unpriced_events_total": "counter",
    "ingest_http_connections": "gauge",
    "ingest_http_connections_closed_total": "counter",
    "ingest_http_connections_refused_total": "counter",
    "holysheep_relay_quota_remaining": "gauge",
    "holysheep_relay_quota_limit": "gauge",
    "holysheep_relay_usage_last_success_timestamp_seconds": "gauge",
    "holysheep_relay_usage_poll_failures_total": "counter",
    "up": "gauge",
}
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")

ALERTS = {
    "HolySheepRelayLatencyP95High": "warning",
    "HolySheepRelay5xxRatioHigh": "critical",
    "HolySheepRelayRateLimited": "warning",
    "HolySheepIngestDown": "critical",
    "HolySheepShippingLagHigh": "critical",
    "HolySheepDeadLettersGrowing": "critical",
    "HolySheepSearchTablesBehind": "warning",
    "HolySheepDailySpendNearBudget": "warning",
    "HolySheepDailySpendOverBudget": "critical",
    "HolySheepRelayQuotaLow": "warning",
    "HolySheepRelayQuotaNearlyExhausted": "critical",
    "HolySheepRelayUsageStale": "warning",
}
# Warning and critical of one concern: they share an alert_group, so the critical inhibits the
# warning. Every other alert_group holds one alert.
PAIRS = (("HolySheepDailySpendNearBudget", "HolySheepDailySpendOverBudget"),
         ("HolySheepRelayQuotaLow", "HolySheepRelayQuotaNearlyExhausted"))
BUDGET_RULE = "holysheep:daily_spend_budget_usd"
TOKEN_PATH = "/run/secrets/alertmanager_webhook_token"
WEBHOOK_URL = "https://alert-webhook.invalid/holysheep-ingest"
MONITORING = ("prometheus", "alertmanager", "grafana")
NEW_SECRETS = ("GRAFANA_ADMIN_PASSWORD", "ALERTMANAGER_WEBHOOK_TOKEN_FILE")
PACKAGES = {"promtool": "prometheus", "amtool": "prometheus-alertmanager",
            "prometheus-alertmanager": "prometheus-alertmanager",
            "docker-compose": "docker-compose"}


def tool(*names: str) -> str:
    """The first of `names` on PATH; else fail in CI, skip elsewhere."""
    for name in names:
        found = shutil.which(name)
        if found is not None:
            return found
    package = PACKAGES[names[0]]
    if os.environ.get("CI") == "true":
        pytest.fail(f"{names[0]} is missing: .ci/run installs it (apt-get install {package})")
    pytest.skip(f"{names[0]} not installed (apt-get install {package}); CI installs it")


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)


def assert_ok(done: subprocess.CompletedProcess[str]) -> str:
    command = " ".join(str(part) for part in done.args)
    assert done.returncode == 0, (f"`{command}` exited {done.returncode}\n"
                                  f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}")
    return done.stdout + done.stderr


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# --- PromQL metric names ----------------------------------------------------------------------

FUNCTIONS = {
    # aggregations
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
    "topk", "quantile",
    # functions
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
    "day_of_month", "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp",
    "floor", "histogram_quantile", "holt_winters", "hour", "idelta", "increase", "irate",
    "label_join", "label_replace", "ln", "log2", "log10", "minute", "month", "predict_linear",
    "rate", "resets", "round", "scalar", "sgn", "sort", "sort_desc", "sqrt", "time",
    "timestamp", "vector", "year", "avg_over_time", "min_over_time", "max_over_time",
    "sum_over_time", "count_over_time", "quantile_over_time", "stddev_over_time",
    "stdvar_over_time", "last_over_time", "present_over_time",
}
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
            "group_right", "bool", "offset", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: every identifier that is not a function call, a
    keyword, a label (inside `{}` or a `by (...)`-style list), a duration or a string."""
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^}]*\}", "{}", text)
    text = re.sub(r"\[[^\]]*\]", "[]", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w:$.])[A-Za-z_:][\w:]*", text):
        word = match.group(0)
        if word.lower() in KEYWORDS:
            continue
        if text[match.end():].lstrip().startswith("("):
            assert word in FUNCTIONS, f"unknown PromQL function {word!r} in {expr!r}"
        else:
            names.add(word)
    return names


def unknown_metrics(expr: str, also: frozenset[str] = frozenset()) -> set[str]:
    unknown = set()
    for name in metric_names(expr):
        if name in KNOWN_METRICS or name in also:
            continue
        base = next((name[:-len(suffix)] for suffix in HISTOGRAM_SERIES
                     if name.endswith(suffix)), None)
        if base is not None and KNOWN_METRICS.get(base) == "histogram":
            continue
        unknown.add(name)
    return unknown


@pytest.mark.parametrize(("expr", "expected"), [
    ('sum by (le, model) (rate(holysheep_relay_latency_seconds_bucket{model=~"$model"}'
     "[$__rate_interval]))", {"holysheep_relay_latency_seconds_bucket"}),
    ('a_total{x="by (y)"} / on (instance) group_left (z) b offset 5m > bool 0.95e3',
     {"a_total", "b"}),
    ("sum(increase(c[24h])) / on () holysheep:budget >= 0.8 and up == 1 or vector(1)",
     {"c", "holysheep:budget", "up"}),
])
def test_metric_name_extraction(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


def test_known_metrics_are_what_the_receiver_can_expose() -> None:
    """KNOWN_METRICS against ingest/metrics.py with every optional part on (the store gauges
    with a sink, the relay quota once polled): panels and rules may only read those."""
    from ingest.metrics import Metrics
    from ingest.relay_usage import REASONS

    metrics = Metrics()
    metrics.watch_store(lambda: {"pending": 1, "shipped": 1, "dead": 0, "unindexed": 0,
                                 "lag_seconds": 0.0})
    metrics.watch_relay_quota(REASONS).succeeded(1.0, 2.0, 3.0)
    exposed = {f"{f.name}_total" if f.type == "counter" else f.name: f.type
               for f in metrics.registry.collect()}
    assert exposed == {k: v for k, v in KNOWN_METRICS.items() if k != "up"}


def test_unknown_metric_names_are_found() -> None:
    assert unknown_metrics("rate(holysheep_relay_latency_seconds_count[5m])") == set()
    assert unknown_metrics("rate(ingest_webhooks_total_bucket[5m])") == {
        "ingest_webhooks_total_bucket"}  # not a histogram
    assert unknown_metrics("holysheep_requests_total") == {"holysheep_requests_total"}


# --- Prometheus -------------------------------------------------------------------------------


def test_promtool_check_config() -> None:
    output = assert_ok(run(tool("promtool"), "check", "config", str(PROMETHEUS_CONFIG)))
    assert "alert_rules.yml" in output  # the rule files were checked too


def test_promtool_check_rules() -> None:
    assert_ok(run(tool("promtool"), "check", "rules", str(RULES)))


def test_promtool_test_rules() -> None:
    assert_ok(run(tool("promtool"), "test", "rules", str(RULES_TEST)))


def test_prometheus_config_scrapes_the_receiver_and_alerts_to_alertmanager() -> None:
    config = load(PROMETHEUS_CONFIG)
    assert config["rule_files"] == ["alert_rules.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    receiver = jobs["holysheep-ingest"]
    assert receiver["static_configs"] == [{"targets": ["receiver:8080"]}]
    assert receiver.get("scrape_interval", config["global"]["scrape_interval"]) == "15s"
    assert receiver.get("metrics_path", "/metrics") == "/metrics"
    assert "prometheus" in jobs
    targets = [target for manager in config["alerting"]["alertmanagers"]
               for static in manager["static_configs"] for target in static["targets"]]
    assert targets == ["alertmanager:9093"]


def rules() -> list[dict[str, Any]]:
    return [rule for group in load(RULES)["groups"] for rule in group["rules"]]


def test_the_budget_is_set_in_one_place() -> None:
    budget = [rule for rule in rules() if rule.get("record") == BUDGET_RULE]
    assert len(budget) == 1
    value = re.fullmatch(r"vector\(\s*([0-9.]+)\s*\)", budget[0]["expr"].strip())
    assert value and float(value.group(1)) > 0, budget[0]["expr"]
    spend = [rule for rule in rules() if rule.get("alert", "").startswith("HolySheepDailySpend")]
    assert len(spend) == 2
    for rule in spend:
        assert BUDGET_RULE in rule["expr"]
        assert 'holysheep_relay_cost_usd_total{source="computed"}[24h]' in rule["expr"]
        # No amount between the spend and the budget series (such as `/ (0.8 * 100)`).
        expr = rule["expr"]
        between = expr[expr.index("[24h]") + len("[24h]"):expr.index(BUDGET_RULE)]
        assert not re.search(r"\d", between), expr


def test_every_alert_has_severity_group_and_annotations() -> None:
    alerts = {rule["alert"]: rule for rule in rules() if "alert" in rule}
    assert set(alerts) == set(ALERTS)
    for name, rule in alerts.items():
        labels = rule["labels"]
        assert labels["severity"] == ALERTS[name], name
        assert re.fullmatch(r"[a-z_]+", labels["alert_group"]), name
        assert rule["annotations"]["summary"].strip(), name
        assert rule["annotations"]["description"].strip(), name
    group = {name: rule["labels"]["alert_group"] for name, rule in alerts.items()}
    for warning, critical in PAIRS:
        assert (ALERTS[warning], ALERTS[critical]) == ("warning", "critical")
        assert group[warning] == group[critical], (warning, critical)
    # Every other alert_group holds one alert: no accidental inhibition across concerns.
    groups = [group[name] for name in alerts if name not in {c for _, c in PAIRS}]
    assert len(set(groups)) == len(groups), groups


def test_every_alert_is_tested_firing_and_quiet() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in load(RULES_TEST)["tests"]:
        for check in case.get("alert_rule_test", []):
            if check.get("exp_alerts"):
                fires.add(check["alertname"])
                for alert in check["exp_alerts"]:
                    assert alert["exp_labels"]["severity"] == ALERTS[check["alertname"]]
                    assert set(alert["exp_annotations"]) >= {"summary", "description"}
            else:
                quiet.add(check["alertname"])
    assert fires == set(ALERTS), f"never tested firing: {set(ALERTS) - fires}"
    assert quiet == set(ALERTS), f"never tested quiet: {set(ALERTS) - quiet}"


def test_rule_expressions_use_known_metrics() -> None:
    recorded = frozenset(rule["record"] for rule in rules() if "record" in rule)
    for rule in rules():
        name = rule.get("record") or rule["alert"]
        assert unknown_metrics(rule["expr"], recorded) == set(), name


# --- Alertmanager -----------------------------------------------------------------------------


def test_amtool_check_config() -> None:
    assert_ok(run(tool("amtool"), "check-config", str(ALERTMANAGER_CONFIG)))


@pytest.mark.parametrize(("labels", "receiver"), [
    (["severity=critical", "alertname=HolySheepIngestDown", "alert_group=ingest_down"],
     "holysheep-critical"),
    (["severity=warning", "alertname=HolySheepRelayRateLimited",
      "alert_group=relay_rate_limit"], "holysheep-warning"),
    (["alertname=SomethingElse"], "holysheep-warning"),
])
def test_amtool_routes(labels: list[str], receiver: str) -> None:
    assert_ok(run(tool("amtool"), "config", "routes", "test",
                  f"--config.file={ALERTMANAGER_CONFIG}", f"--verify.receivers={receiver}",
                  *labels))


def test_alertmanager_routing_tree() -> None:
    config = load(ALERTMANAGER_CONFIG)
    route = config["route"]
    critical, warning = route["routes"][:2]
    assert critical["matchers"] == ['severity="critical"']
    assert critical["group_wait"] == "0s"
    assert pd(critical["repeat_interval"]) < pd(warning["repeat_interval"])
    assert warning["matchers"] == ['severity="warning"']
    assert warning["group_wait"] == "30s"
    assert set(warning["group_by"]) >= {"alertname", "alert_group"}
    assert config["inhibit_rules"] == [{"source_matchers": ['severity="critical"'],
                                        "target_matchers": ['severity="warning"'],
                                        "equal": ["alert_group"]}]


def pd(duration: str) -> int:
    """Prometheus duration -> seconds (the units used here)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smhd])", duration))


def test_alertmanager_config_holds_no_secret() -> None:
    config = load(ALERTMANAGER_CONFIG)
    text = ALERTMANAGER_CONFIG.read_text()
    assert not re.search(r"^\s*(credentials|password|bearer_token|api_key|token)\s*:", text,
                         re.MULTILINE | re.IGNORECASE)
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            assert hook["url"] == WEBHOOK_URL  # no userinfo, no token in a query string
            assert hook["http_config"]["authorization"] == {"type": "Bearer",
                                                            "credentials_file": TOKEN_PATH}


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, dict[str, Any]]]]  # set per server by the fixture

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.received.append((self.headers.get("Authorization", ""), body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[tuple[str, dict[str, Any]]]]]:
    received: list[tuple[str, dict[str, Any]]] = []
    handler = type("Hook", (_Hook,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def alertmanager(tmp_path: Path, webhook: tuple[str, list[Any]]) -> Iterator[str]:
    """The real Alertmanager on this very config, with only the URL and token path pointed at
    a local webhook and a temporary token file."""
    binary = tool("prometheus-alertmanager", "alertmanager")
    text = ALERTMANAGER_CONFIG.read_text()
    assert WEBHOOK_URL in text and TOKEN_PATH in text
    token = tmp_path / "token"
    token.write_text("test-token-0123\n")
    config = tmp_path / "alertmanager.yml"
    config.write_text(text.replace(WEBHOOK_URL, webhook[0]).replace(TOKEN_PATH, str(token)))
    port = free_port()
    log = (tmp_path / "alertmanager.log").open("w")
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (tmp_path / "alertmanager.log").read_text()
            try:
                if httpx.get(f"{url}/-/ready", timeout=1, trust_env=False).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "Alertmanager did not become ready"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_alertmanager_inhibits_the_warning_and_sends_the_critical_with_the_token(
        alertmanager: str, webhook: tuple[str, list[tuple[str, dict[str, Any]]]]) -> None:
    def alert(name: str, severity: str, group: str) -> dict[str, Any]:
        return {"labels": {"alertname": name, "severity": severity, "alert_group": group},
                "annotations": {"summary": name}}

    with httpx.Client(base_url=alertmanager, timeout=5, trust_env=False) as client:
        posted = client.post("/api/v2/alerts", json=[
            alert("HolySheepDailySpendOverBudget", "critical", "spend_budget"),
            alert("HolySheepDailySpendNearBudget", "warning", "spend_budget"),
            alert("HolySheepRelayRateLimited", "warning", "relay_rate_limit"),
        ])
        assert posted.status_code == 200, posted.text
        deadline = time.monotonic() + 20
        while True:
            listed = client.get("/api/v2/alerts").json()
            state = {a["labels"]["alertname"]: a["status"] for a in listed}
            if len(state) == 3 and webhook[1]:
                break
            assert time.monotonic() < deadline, f"alerts {state}, notifications {webhook[1]}"
            time.sleep(0.2)
    assert state["HolySheepDailySpendNearBudget"]["state"] == "suppressed"
    assert state["HolySheepDailySpendNearBudget"]["inhibitedBy"]
    assert state["HolySheepDailySpendOverBudget"]["state"] == "active"
    assert state["HolySheepRelayRateLimited"]["state"] == "active"  # another concern

    # group_wait 0s: the critical is delivered at once, authenticated by the token file.
    authorization, body = webhook[1][0]
    assert authorization == "Bearer test-token-0123"
    assert body["receiver"] == "holysheep-critical"
    assert [a["labels"]["alertname"] for a in body["alerts"]] == ["HolySheepDailySpendOverBudget"]
    delivered = {a["labels"]["alertname"] for _, sent in webhook[1] for a in sent["alerts"]}
    assert "HolySheepDailySpendNearBudget" not in delivered


# --- Grafana ----------------------------------------------------------------------------------


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # inside collapsed rows


def test_dashboard_panels_query_known_metrics_only() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    found = list(panels(dashboard))
    assert len(found) >= 10
    used: set[str] = set()
    for panel in found:
        title = panel["title"]
        assert panel.get("targets"), f"panel {title!r} has no target"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "prometheus", title
            expr = target["expr"]
            assert expr.strip(), title
            assert unknown_metrics(expr) == set(), f"panel {title!r}: {expr}"
            used |= metric_names(expr)
    ids = [panel["id"] for panel in found]
    assert len(ids) == len(set(ids))
    # The panels the brief asks for, by the series they read.
    for name in ("holysheep_relay_requests_total", "holysheep_relay_latency_seconds_bucket",
                 "holysheep_relay_tokens_total", "holysheep_relay_cost_usd_total",
                 "ingest_shipping_lag_seconds", "ingest_bulk_items_total",
                 "ingest_store_events", "ingest_webhooks_total",
                 "holysheep_relay_quota_remaining", "holysheep_relay_quota_limit"):
        assert name in used, name


def test_grafana_provisioning() -> None:
    sources = load(DATASOURCE)["datasources"]
    assert [(s["uid"], s["type"], s["url"]) for s in sources] == [
        ("prometheus", "prometheus", "http://prometheus:9090")]
    providers = load(DASHBOARD_PROVIDER)["providers"]
    assert [p["type"] for p in providers] == ["file"]
    mount = f"./grafana/dashboards:{providers[0]['options']['path']}:ro"
    assert mount in COMPOSE_FILE.read_text()


# --- docker-compose ---------------------------------------------------------------------------




def write_env(path: Path, **overrides: str) -> Path:
    """.env.example with every empty value filled with a dummy, then `overrides` on top."""
    values = {k: v or dummy(k) for k, v in example_values().items()}
    values.update(overrides)
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def compose_config(env_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` against `env_file` only (shell exports would override it)."""
    keys = set(example_values())
    env = {k: v for k, v in os.environ.items() if k not in keys and not k.startswith("COMPOSE_")}
    return subprocess.run(
        [tool("docker-compose"), "-f", str(COMPOSE_FILE), "--env-file", str(env_file), "config",
         *args], capture_output=True, text=True, env=env, timeout=60, check=False)


def test_compose_config_is_valid_with_the_monitoring_services(tmp_path: Path) -> None:
    env_file = write_env(tmp_path / "env")
    assert_ok(compose_config(env_file, "-q"))
    rendered = yaml.safe_load(assert_ok(compose_config(env_file)))
    services = rendered["services"]
    assert {"elasticsearch", "setup", "kibana", "logstash", "receiver", *MONITORING} <= set(
        services)
    for name in MONITORING:
        service = services[name]
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", service["image"]), name  # pinned
        check = service["healthcheck"]
        assert check["test"] and not check.get("disable"), name
        for port in service["ports"]:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port}"
    assert "/-/healthy" in " ".join(services["prometheus"]["healthcheck"]["test"])
    assert "/-/healthy" in " ".join(services["alertmanager"]["healthcheck"]["test"])
    assert "/api/health" in " ".join(services["grafana"]["healthcheck"]["test"])
    grafana_env = services["grafana"]["environment"]
    assert grafana_env["GF_SECURITY_ADMIN_PASSWORD"] == "DummyGrafanaAdminPassword0123"
    secret = rendered["secrets"]["alertmanager_webhook_token"]
    assert secret["file"].endswith("DummyAlertmanagerWebhookTokenFile0123")
    # Mounted at /run/secrets/<name>: the path alertmanager.yml reads the token from.
    assert services["alertmanager"]["secrets"] == [{"source": "alertmanager_webhook_token"}]
    assert TOKEN_PATH == "/run/secrets/alertmanager_webhook_token"
    volumes = {name: " ".join(services[name]["volumes"]) for name in MONITORING}
    assert "prometheus/alert_rules.yml:/etc/prometheus/alert_rules.yml:ro" in volumes["prometheus"]
    assert "alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro" in volumes["alertmanager"]
    assert "alert_rules_test.yml" not in volumes["prometheus"]


@pytest.mark.parametrize("key", NEW_SECRETS)
def test_compose_fails_fast_without_a_monitoring_secret(tmp_path: Path, key: str) -> None:
    done = compose_config(write_env(tmp_path / "env", **{key: ""}), "-q")
    assert done.returncode != 0
    assert f"set {key} in .env" in done.stderr


def test_env_example_leaves_the_monitoring_secrets_empty() -> None:
    values = example_values()
    for key in NEW_SECRETS:
        assert values.get(key) == "", f"{key} must be in .env.example, empty"
