"""Deployment assets: docker-compose.yml validates with .env values and fails fast without them,
every long-running service has a healthcheck, no secret is written into the repository's files,
and the Elasticsearch JSON assets agree with each other and with elasticsearch/README.md."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from compose_env import dummy, example_values

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ASSETS = ROOT / "elasticsearch"
PIPELINE = ROOT / "logstash" / "pipeline" / "holysheep.conf"

ONE_SHOT = {"setup", "kibana-objects"}  # exits once done: no healthcheck to keep green
SECRETS = ("ELASTIC_PASSWORD", "KIBANA_SYSTEM_PASSWORD", "LOGSTASH_INTERNAL_PASSWORD",
           "LOGSTASH_HTTP_PASSWORD", "INGEST_WEBHOOK_SECRET")
REQUIRED = re.compile(r"\$\{([A-Z0-9_]+):\?([^}]*)\}")




@pytest.fixture(scope="module")
def compose() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        pytest.skip("docker-compose not on PATH (CI installs it: apt-get install docker-compose)")
    return found


def run_config(compose: str, env_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` against only `env_file`: the caller's shell exports are dropped,
    since compose lets them override the env file and would hide a missing value."""
    keys = set(example_values()) | set(SECRETS)
    env = {k: v for k, v in os.environ.items() if k not in keys and not k.startswith("COMPOSE_")}
    return subprocess.run(
        [compose, "-f", str(COMPOSE_FILE), "--env-file", str(env_file), "config", *args],
        capture_output=True, text=True, env=env, timeout=60, check=False)


def write_env(path: Path, **overrides: str) -> Path:
    """.env.example with every empty value filled with a dummy, then `overrides` on top."""
    values = {k: (v or dummy(k)) for k, v in example_values().items()}
    values.update(overrides)
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def load_yaml(text: str) -> Any:
    """PyYAML from this interpreter, else from the one running docker-compose (which needs it)."""
    try:
        import yaml
    except ImportError:
        pass
    else:
        return yaml.safe_load(text)
    compose = shutil.which("docker-compose")
    with open(compose or os.devnull, "rb") as script_file:
        first = script_file.readline().decode(errors="replace")
    interpreter = first[2:].split() if first.startswith("#!") else []
    if not interpreter:
        pytest.skip("PyYAML is not importable to parse `docker-compose config`")
    script = "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"
    done = subprocess.run([*interpreter, "-c", script], input=text, capture_output=True,
                          text=True, timeout=60, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot parse YAML with {interpreter[0]}: {done.stderr.strip()[:200]}")
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def rendered(compose: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    env_file = write_env(tmp_path_factory.mktemp("compose") / "env")
    done = run_config(compose, env_file)
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = load_yaml(done.stdout)
    return config


def test_config_is_valid_with_env_example_values(compose: str, tmp_path: Path) -> None:
    done = run_config(compose, write_env(tmp_path / "env"), "-q")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("key", SECRETS)
def test_config_fails_fast_naming_a_missing_secret(compose: str, tmp_path: Path,
                                                   key: str) -> None:
    done = run_config(compose, write_env(tmp_path / "env", **{key: ""}), "-q")
    assert done.returncode != 0
    assert f"set {key} in .env" in done.stderr


def test_env_example_leaves_every_secret_empty() -> None:
    values = example_values()
    for key in SECRETS:
        assert key in values, f"{key} missing from .env.example"
        assert values[key] == "", f"{key} must be empty in .env.example"


def test_every_required_variable_is_in_env_example() -> None:
    required = {name for name, _ in REQUIRED.findall(COMPOSE_FILE.read_text())}
    assert set(SECRETS) <= required
    assert required <= set(example_values())
    for name, message in REQUIRED.findall(COMPOSE_FILE.read_text()):
        assert message == f"set {name} in .env"


def test_every_long_running_service_has_a_healthcheck(rendered: dict[str, Any]) -> None:
    services = rendered["services"]
    assert {"elasticsearch", "setup", "kibana", "logstash", "receiver"} <= set(services)
    for name, service in services.items():
        if name in ONE_SHOT:
            continue
        check = service.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"


def test_start_order(rendered: dict[str, Any]) -> None:
    services = rendered["services"]

    def condition(service: str, on: str) -> str:
        return str(services[service]["depends_on"][on]["condition"])

    assert condition("setup", "elasticsearch") == "service_healthy"
    assert condition("kibana", "setup") == "service_completed_successfully"
    assert condition("logstash", "setup") == "service_completed_successfully"
    assert condition("logstash", "receiver") == "service_healthy"
    assert condition("receiver", "elasticsearch") == "service_healthy"


def test_secrets_come_from_env_file_only(rendered: dict[str, Any]) -> None:
    rendered_text = json.dumps(rendered)
    for key in SECRETS:
        assert dummy(key) in rendered_text, f"{key} from the env file is not used"
    on_disk = [COMPOSE_FILE, PIPELINE, *(ROOT / "logstash" / "config").glob("*.yml"),
               ROOT / "Dockerfile"]
    for path in on_disk:
        text = path.read_text()
        for key in SECRETS:
            assert dummy(key) not in text
        assert "changeme" not in text.lower(), path
    # Every password-like value in the compose file is an interpolation, never a literal.
    for line in COMPOSE_FILE.read_text().splitlines():
        match = re.match(r"\s*-?\s*([A-Za-z_.]*(?:PASSWORD|SECRET)[A-Za-z_.]*)\s*[:=]\s*(\S.*)",
                         line)
        if match:
            assert match.group(2).startswith("${"), line
    # The Logstash pipeline takes its credentials from the environment.
    for match in re.finditer(r"\b(user|password)\s*=>\s*\"([^\"]*)\"", PIPELINE.read_text()):
        assert match.group(2).startswith("${"), match.group(0)


def test_services_receive_the_right_credentials(rendered: dict[str, Any]) -> None:
    env = {name: service.get("environment") or {}
           for name, service in rendered["services"].items()}
    assert env["elasticsearch"]["ELASTIC_PASSWORD"] == dummy("ELASTIC_PASSWORD")
    assert env["kibana"]["ELASTICSEARCH_USERNAME"] == "kibana_system"
    assert env["kibana"]["ELASTICSEARCH_PASSWORD"] == dummy("KIBANA_SYSTEM_PASSWORD")
    assert env["receiver"]["INGEST_ELASTICSEARCH_URL"] == "http://elasticsearch:9200"
    assert env["receiver"]["INGEST_ELASTICSEARCH_USERNAME"] == "elastic"
    assert env["receiver"]["INGEST_ELASTICSEARCH_PASSWORD"] == dummy("ELASTIC_PASSWORD")
    assert env["receiver"]["INGEST_WEBHOOK_SECRET"] == dummy("INGEST_WEBHOOK_SECRET")
    assert env["logstash"]["LOGSTASH_HTTP_PASSWORD"] == dummy("LOGSTASH_HTTP_PASSWORD")
    assert env["logstash"]["LOGSTASH_INTERNAL_PASSWORD"] == dummy("LOGSTASH_INTERNAL_PASSWORD")
    es = env["elasticsearch"]
    assert es["discovery.type"] == "single-node"
    assert es["xpack.security.enabled"] == "true"
    assert es["ES_JAVA_OPTS"] == "-Xms1g -Xmx1g"
    for level in ("low", "high", "flood_stage"):
        assert es[f"cluster.routing.allocation.disk.watermark.{level}"].endswith("%")


# --- Elasticsearch assets -------------------------------------------------------------------


def asset(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((ASSETS / name).read_text())
    return loaded


def readme_names() -> dict[str, str]:
    """file -> name in Elasticsearch, from the table in elasticsearch/README.md."""
    rows = re.findall(r"^\|\s*`([\w.-]+\.json)`\s*\|[^|]*\|\s*`([\w.-]+)`\s*\|",
                      (ASSETS / "README.md").read_text(), flags=re.MULTILINE)
    return dict(rows)


def test_asset_files_parse() -> None:
    for name in ("ilm-policy.json", "component-template-mappings.json",
                 "component-template-settings.json", "index-template.json"):
        assert isinstance(asset(name), dict), name


def test_index_template_composes_the_components_the_readme_names() -> None:
    names = readme_names()
    assert set(names) == {"ilm-policy.json", "component-template-mappings.json",
                          "component-template-settings.json", "index-template.json"}
    template = asset("index-template.json")
    assert template["composed_of"] == [names["component-template-mappings.json"],
                                       names["component-template-settings.json"]]
    assert template["index_patterns"] == ["logs-holysheep.requests-*"]
    assert template["data_stream"] == {}
    assert template["priority"] > 100  # above the built-in logs-*-* template
    assert template["_meta"]["managed_by"] == "holysheep-ingest"
    settings = asset("component-template-settings.json")["template"]["settings"]["index"]
    assert settings["lifecycle"]["name"] == names["ilm-policy.json"] == "holysheep-requests"
    assert (settings["number_of_shards"], settings["number_of_replicas"]) == (1, 0)


def test_ilm_policy_defaults() -> None:
    phases = asset("ilm-policy.json")["policy"]["phases"]
    rollover = phases["hot"]["actions"]["rollover"]
    assert (rollover["max_age"], rollover["max_primary_shard_size"]) == ("1d", "5gb")
    assert phases["delete"]["min_age"] == "30d"
    assert phases["delete"]["actions"] == {"delete": {}}


def test_mappings() -> None:
    mappings = asset("component-template-mappings.json")["template"]["mappings"]
    assert mappings["dynamic"] is False

    def field(path: str) -> dict[str, Any]:
        node: dict[str, Any] = mappings
        for part in path.split("."):
            node = node["properties"][part]
        return node

    types = {
        "@timestamp": "date", "received_at": "date", "id": "keyword", "model": "keyword",
        "latency_ms": "float", "response_time_ms": "float", "latency_bucket": "keyword",
        "tokens_used": "long", "usage.prompt_tokens": "long", "usage.completion_tokens": "long",
        "usage.total_tokens": "long", "cost_usd": "double", "computed_cost_usd": "double",
        "cost_mismatch": "boolean", "user_metadata.user_id": "keyword",
        "user_metadata.trace_id": "keyword", "error.message": "match_only_text",
        "timestamp": "long", "event.original": "keyword",
    }
    for path, expected in types.items():
        assert field(path)["type"] == expected, path
    assert field("timestamp")["ignore_malformed"] is True
    assert field("error.message")["fields"]["keyword"] == {"type": "keyword", "ignore_above": 1024}
    original = field("event.original")
    assert (original["index"], original["doc_values"]) == (False, False)
    for path, expected in types.items():
        if expected == "keyword" and path != "event.original":
            assert field(path)["ignore_above"] == 1024, path


def test_dockerfile_cmd_runs_setup_before_serve() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "holysheep-ingest setup --wait 120" in text
    assert "exec holysheep-ingest serve" in text
    assert re.search(r"^USER (?!root)\S+", text, flags=re.MULTILINE)
    assert "/healthz" in text


def test_the_receiver_starts_with_the_dashboard_off_unless_given_a_token(
        rendered: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from ingest.settings import load
    from ingest.ui import access

    env = rendered["services"]["receiver"]["environment"]
    assert env["INGEST_UI"] == "off"  # it listens on 0.0.0.0: the token rule would stop it
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    access.check(load())
