"""logstash/: options and settings against what Logstash 9.1.5 declares; the pipeline's guards.

No Logstash runs here. The allow-lists below are the `config :name` declarations (obsolete ones
left out) of the plugin versions bundled with Logstash 9.1.5, the version the compose stack
runs (ELASTIC_VERSION in .env.example), as listed in elastic/logstash
Gemfile.jruby-3.1.lock.release at v9.1.5. An option Logstash does not know stops the pipeline
from starting; a misspelt one would otherwise only be found on the first real deployment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from logstash_config import Plugin, read

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = sorted((ROOT / "logstash" / "pipeline").glob("*.conf"))
LOGSTASH_YML = ROOT / "logstash" / "config" / "logstash.yml"
PIPELINES_YML = ROOT / "logstash" / "config" / "pipelines.yml"
LOGSTASH = "logstash 9.1.5 (elastic/logstash v9.1.5)"

# logstash-core v9.1.5: lib/logstash/plugin.rb (id, enable_metric; ecs_compatibility through
# lib/logstash/plugins/ecs_compatibility_support.rb), inputs/base.rb, filters/base.rb,
# outputs/base.rb.
COMMON = {"id", "enable_metric", "ecs_compatibility"}
SECTION_COMMON = {
    "input": {"type", "codec", "tags", "add_field"},
    "filter": {"add_tag", "remove_tag", "add_field", "remove_field", "periodic_flush"},
    "output": {"codec", "workers"},
}

# (section, plugin) -> (gem, version, where the options are declared, the options)
PLUGINS: dict[tuple[str, str], tuple[str, str, str, frozenset[str]]] = {
    ("input", "http"): (
        "logstash-input-http", "4.1.3", "lib/logstash/inputs/http.rb", frozenset({
            "host", "port", "user", "password", "ssl_enabled", "ssl_certificate", "ssl_key",
            "ssl_keystore_password", "ssl_keystore_path", "ssl_keystore_type",
            "ssl_key_passphrase", "ssl_truststore_password", "ssl_truststore_path",
            "ssl_truststore_type", "ssl_certificate_authorities", "ssl_client_authentication",
            "ssl_handshake_timeout", "ssl_cipher_suites", "ssl_supported_protocols",
            "additional_codecs", "response_headers", "remote_host_target_field",
            "request_headers_target_field", "threads", "max_pending_requests",
            "max_content_length", "response_code"})),
    ("filter", "fingerprint"): (
        "logstash-filter-fingerprint", "3.4.4", "lib/logstash/filters/fingerprint.rb",
        frozenset({"source", "target", "key", "base64encode", "method", "concatenate_sources",
                   "concatenate_all_fields"})),
    ("filter", "mutate"): (
        "logstash-filter-mutate", "3.5.8", "lib/logstash/filters/mutate.rb", frozenset({
            "coerce", "rename", "replace", "update", "convert", "gsub", "uppercase",
            "lowercase", "capitalize", "split", "join", "strip", "merge", "copy",
            "tag_on_failure"})),
    ("filter", "ruby"): (
        "logstash-filter-ruby", "3.1.8", "lib/logstash/filters/ruby.rb", frozenset({
            "init", "code", "path", "script_params", "tag_on_exception",
            "tag_with_exception_message"})),
    ("output", "file"): (
        "logstash-output-file", "4.3.0", "lib/logstash/outputs/file.rb", frozenset({
            "path", "flush_interval", "gzip", "filename_failure", "create_if_deleted",
            "dir_mode", "file_mode", "write_behavior", "stale_cleanup_interval"})),
    ("output", "elasticsearch"): (
        "logstash-output-elasticsearch", "12.0.7",
        "lib/logstash/outputs/elasticsearch.rb, lib/logstash/outputs/elasticsearch/"
        "data_stream_support.rb, lib/logstash/plugin_mixins/elasticsearch/api_configs.rb "
        "(CONFIG_PARAMS; ca_trusted_fingerprint from logstash-mixin-ca_trusted_fingerprint_"
        "support 1.0.1)", frozenset({
            "action", "index", "document_type", "manage_template", "template_name",
            "template", "template_overwrite", "template_api", "version", "version_type",
            "routing", "parent", "join_field", "upsert", "doc_as_upsert", "script",
            "script_type", "script_lang", "script_var_name", "scripted_upsert",
            "retry_on_conflict", "pipeline", "ilm_enabled", "ilm_rollover_alias",
            "ilm_pattern", "ilm_policy", "data_stream", "data_stream_type",
            "data_stream_dataset", "data_stream_namespace", "data_stream_sync_fields",
            "data_stream_auto_routing", "user", "password", "api_key", "cloud_auth",
            "document_id", "path", "bulk_path", "parameters", "ssl_enabled",
            "ssl_verification_mode", "ssl_certificate_authorities", "ca_trusted_fingerprint",
            "ssl_truststore_path", "ssl_truststore_type", "ssl_truststore_password",
            "ssl_keystore_path", "ssl_keystore_type", "ssl_keystore_password",
            "ssl_supported_protocols", "ssl_certificate", "ssl_key", "ssl_cipher_suites",
            "sniffing", "sniffing_delay", "sniffing_path", "proxy", "timeout",
            "failure_type_logging_whitelist", "silence_errors_in_log", "pool_max",
            "pool_max_per_route", "healthcheck_path", "resurrect_delay",
            "validate_after_inactivity", "http_compression", "compression_level",
            "custom_headers", "hosts", "cloud_id", "retry_initial_interval",
            "retry_max_interval", "dlq_custom_codes", "dlq_on_failed_indexname_interpolation"})),
}

# logstash-core v9.1.5 lib/logstash/settings.rb, PIPELINE_SETTINGS_WHITE_LIST: what a pipeline
# in pipelines.yml may set.
PIPELINE_SETTINGS = frozenset({
    "config.debug", "config.support_escapes", "config.reload.automatic",
    "config.reload.interval", "config.string", "dead_letter_queue.enable",
    "dead_letter_queue.flush_interval", "dead_letter_queue.max_bytes",
    "dead_letter_queue.storage_policy", "dead_letter_queue.retain.age", "metric.collect",
    "pipeline.plugin_classloaders", "path.config", "path.dead_letter_queue", "path.queue",
    "pipeline.batch.delay", "pipeline.batch.size", "pipeline.id", "pipeline.reloadable",
    "pipeline.system", "pipeline.workers", "pipeline.ordered", "pipeline.ecs_compatibility",
    "queue.checkpoint.acks", "queue.checkpoint.interval", "queue.checkpoint.writes",
    "queue.checkpoint.retry", "queue.drain", "queue.max_bytes", "queue.max_events",
    "queue.page_capacity", "queue.type"})


def unknown_options(plugins: list[Plugin]) -> list[str]:
    """`plugin option` for every option its plugin does not declare (or unknown plugins)."""
    found = []
    for plugin in plugins:
        known = PLUGINS.get((plugin.section, plugin.name))
        if known is None:
            found.append(f"{plugin.section} plugin {plugin.name!r} (line {plugin.line}): add its "
                         "declared options, with the version bundled with " + LOGSTASH)
            continue
        allowed = known[3] | COMMON | SECTION_COMMON[plugin.section]
        found += [f"{plugin.name} {name} (line {plugin.line}; {known[0]} {known[1]} declares "
                  f"no such option)" for name in plugin.options if name not in allowed]
    return found


def _pipeline(path: Path) -> list[Plugin]:
    return read(path.read_text())


HOLYSHEEP = ROOT / "logstash" / "pipeline" / "holysheep.conf"


def test_every_plugin_option_is_one_the_plugin_declares() -> None:
    assert PIPELINES, "no pipeline files"
    for path in PIPELINES:
        plugins = _pipeline(path)
        assert plugins, path
        assert unknown_options(plugins) == [], path.name


@pytest.mark.parametrize(("old", "new"), [
    ('document_id => "%{[id]}"', 'documentid => "%{[id]}"'),
    ('data_stream_dataset => "holysheep.requests"', 'data_stream_datset => "holysheep.requests"'),
    ('concatenate_sources => true', 'concatenate_source => true'),
    ('port => 8081', 'prot => 8081'),
])
def test_a_misspelt_option_is_caught(old: str, new: str) -> None:
    text = HOLYSHEEP.read_text()
    assert old in text
    found = unknown_options(read(text.replace(old, new)))
    assert len(found) == 1 and new.split()[0] in found[0], found


def test_an_unknown_plugin_is_caught() -> None:
    text = HOLYSHEEP.read_text().replace("  ruby {", "  rubyy {", 1)
    [found] = unknown_options(read(text))
    assert "'rubyy'" in found


def test_the_pipeline_settings_are_ones_logstash_takes_per_pipeline() -> None:
    pipelines = yaml.safe_load(PIPELINES_YML.read_text())
    assert [p["pipeline.id"] for p in pipelines] == ["holysheep"]
    for pipeline in pipelines:
        assert set(pipeline) <= PIPELINE_SETTINGS, set(pipeline) - PIPELINE_SETTINGS


def test_an_acknowledged_event_survives_a_crash() -> None:
    # The http input answers 200 once the event is in the persisted queue; Logstash fsyncs the
    # queue at checkpoints only (default every 1024 writes), so checkpoint after every write.
    settings = yaml.safe_load(LOGSTASH_YML.read_text())
    [pipeline] = yaml.safe_load(PIPELINES_YML.read_text())
    assert pipeline["queue.type"] == "persisted"
    assert settings["queue.checkpoint.writes"] == 1
    assert pipeline.get("queue.checkpoint.writes", 1) == 1  # not undone for this pipeline


def test_refusals_go_to_logstashs_dead_letter_queue() -> None:
    [pipeline] = yaml.safe_load(PIPELINES_YML.read_text())
    assert pipeline["dead_letter_queue.enable"] is True


# --- the 512-byte id guard ------------------------------------------------------------------

def _guard() -> Plugin:
    [guard] = [p for p in _pipeline(HOLYSHEEP) if p.name == "ruby"]
    return guard


def test_events_with_long_ids_go_to_the_quarantine_file_not_elasticsearch() -> None:
    outputs = {p.name: p for p in _pipeline(HOLYSHEEP) if p.section == "output"}
    assert outputs["file"].conditions == ["[@metadata][quarantine]"]
    assert outputs["file"].options["path"].startswith("/usr/share/logstash/data/")  # the volume
    assert outputs["elasticsearch"].conditions == ["not ([@metadata][quarantine])"]
    plugins = _pipeline(HOLYSHEEP)
    # The guard sees every event, after the fingerprint filter gave id-less ones their id.
    assert _guard().conditions == []
    assert plugins.index(_guard()) > max(
        i for i, p in enumerate(plugins) if p.name == "mutate")


def _ruby() -> str:
    found = shutil.which("ruby")
    if found is not None:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("ruby is missing: .ci/run installs it (apt-get install ruby)")
    pytest.skip("ruby not installed (apt-get install ruby); CI installs it")


# A stand-in for the few Logstash Event methods the guard calls (event.get/set/sprintf, as in
# logstash-core JrubyEventExtLibrary): only "%{[id]}" is formatted, as the output does for _id.
_EVENT = r'''
require "json"
class Event
  def initialize(fields); @fields = fields; end
  attr_reader :fields
  def get(ref); @fields[ref]; end
  def set(ref, value); @fields[ref] = value; end
  def sprintf(format)
    raise "unexpected format #{format}" unless format == "%{[id]}"
    @fields.key?("id") ? @fields["id"].to_s : format
  end
end
def guard(event)
CODE
end
STDIN.each_line do |line|
  event = Event.new(JSON.parse(line))
  guard(event)
  puts JSON.generate(event.fields)
end
'''


def _run_guard(ids: list[Any], tmp_path: Path) -> list[dict[str, Any]]:
    script = tmp_path / "guard.rb"
    script.write_text(_EVENT.replace("CODE", _guard().options["code"]))
    lines = "".join(json.dumps({"id": i}) + "\n" for i in ids)
    done = subprocess.run([_ruby(), str(script)], input=lines, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_the_guard_counts_utf8_bytes_not_characters(tmp_path: Path) -> None:
    ids: list[Any] = ["a" * 512, "a" * 513, "€" * 170, "€" * 171, "😀" * 128, "😀" * 129,
                      12345]
    results = _run_guard(ids, tmp_path)
    quarantined = [r.get("[@metadata][quarantine]") is True for r in results]
    # 512 and 513 ASCII; 510 and 513 bytes in 170 and 171 characters; 512 and 516 bytes.
    assert quarantined == [False, True, False, True, False, True, False]
    reason = results[3]["quarantine_reason"]
    assert reason == "event id is 513 UTF-8 bytes; Elasticsearch allows 512"
    assert all("quarantine_reason" not in r for r, q in zip(results, quarantined, strict=True)
               if not q)
