"""grafana/dashboards/holysheep.json, type-checked against Grafana's published dashboard schema.

No Grafana runs here. `@grafana/schema` (from grafana/grafana packages/grafana-schema, generated
from the CUE kinds) at the version of the Grafana image in docker-compose.yml types the dashboard
and each panel plugin's options; the Grafana foundation SDK types the Prometheus query (the
targets, which `@grafana/schema` leaves open). JSON cannot hold TypeScript enum members, so the
generated file maps every enum to the union of its values (`Json<T>`); panel options and
field-config `custom` sections are checked as partial (Grafana fills in the defaults of what a
dashboard leaves out). Annotations and template variables are open in the CUE definition
(kinds/dashboard/dashboard_kind.cue: datasources "spread their query into the base object"), so
only their common fields are checked.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from spec_tools import Diagnostic, literal, module, typecheck, version

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "grafana" / "dashboards" / "holysheep.json"
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = "@grafana/schema"
SDK = "@grafana/grafana-foundation-sdk"
RAW = "dist/esm/raw"
# Panel plugin -> its options (and field config, where the plugin has its own) in the schema.
PANELS = {
    "stat": ("stat", f"{RAW}/composable/stat/panelcfg/x/StatPanelCfg_types.gen", False),
    "timeseries": ("timeseries",
                   f"{RAW}/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen", True),
    "bargauge": ("bargauge",
                 f"{RAW}/composable/bargauge/panelcfg/x/BarGaugePanelCfg_types.gen", False),
}

PRELUDE = """
// Enum members as the JSON values they stand for; everything else as it is.
type Json<T> =
  T extends string ? `${T}` :
  T extends number | boolean | null | undefined ? T :
  T extends readonly (infer U)[] ? Json<U>[] :
  T extends object ? { [K in keyof T]: Json<T[K]> } : T;
// Grafana merges a panel's options and field config over the plugin's defaults.
type Loose<T> =
  T extends readonly (infer U)[] ? Loose<U>[] :
  T extends object ? { [K in keyof T]?: Loose<T[K]> } : T;
type Open<T> = T & Record<string, unknown>;
type PromQuery = Json<Omit<prometheus.dataquery, "_implementsDataqueryVariant">>;
type Dashboard = Json<Omit<dashboard.Dashboard, "annotations" | "templating" | "panels">> & {
  annotations?: { list?: Open<Json<dashboard.AnnotationQuery>>[] };
  templating?: { list?: Open<Json<dashboard.VariableModel>>[] };
  // Targets are typed on their own below, by datasource.
  panels?: (Json<Omit<dashboard.Panel, "targets">> & { targets?: unknown[] })[];
};
"""


def source(board: dict[str, Any]) -> str:
    """The dashboard, each panel's options, custom field config and targets, each typed."""
    board_types = module(SCHEMA, f"{RAW}/dashboard/x/dashboard_types.gen")
    lines = [f'import type * as dashboard from "{board_types}";',
             f'import type * as prometheus from "{module(SDK, "dist/prometheus/types.gen")}";']
    lines += [f'import type * as {alias} from "{module(SCHEMA, path)}";'
              for alias, path, _ in PANELS.values()]
    lines.append(PRELUDE)
    lines.append(f"export const board: Dashboard = {literal(board)};")
    for panel in board.get("panels", []):
        number = panel["id"]
        kind = PANELS.get(panel["type"])
        assert kind is not None, f"panel {number}: add the {panel['type']} panel's schema types"
        alias, _, has_field_config = kind
        lines.append(f"export const options{number}: Loose<Json<{alias}.Options>> = "
                     f"{literal(panel.get('options', {}))};")
        custom = panel.get("fieldConfig", {}).get("defaults", {}).get("custom")
        if custom is not None:
            assert has_field_config, f"panel {number}: {panel['type']} has no custom field config"
            lines.append(f"export const custom{number}: Loose<Json<{alias}.FieldConfig>> = "
                         f"{literal(custom)};")
        lines.append(f"export const targets{number}: PromQuery[] = "
                     f"{literal(panel.get('targets', []))};")
    return "\n".join(lines) + "\n"


def _panel(board: dict[str, Any], kind: str) -> dict[str, Any]:
    found: dict[str, Any] = next(p for p in board["panels"] if p["type"] == kind)
    return found


def _rename_grid(board: dict[str, Any]) -> None:
    panel = _panel(board, "stat")
    panel["gridPoss"] = panel.pop("gridPos")


def _legend_mode(board: dict[str, Any]) -> None:
    _panel(board, "timeseries")["options"]["legend"]["displayMode"] = "lst"


def _legend_format(board: dict[str, Any]) -> None:
    target = _panel(board, "timeseries")["targets"][0]
    target["legendFromat"] = target.pop("legendFormat")


def _thresholds(board: dict[str, Any]) -> None:
    _panel(board, "stat")["fieldConfig"]["defaults"]["thresholds"]["mode"] = "absolut"


PLANTED: dict[str, Callable[[dict[str, Any]], None]] = {
    "gridPoss": _rename_grid, '"lst"': _legend_mode, "legendFromat": _legend_format,
    '"absolut"': _thresholds,
}


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Diagnostic]]:
    board = json.loads(DASHBOARD.read_text())
    files = {"dashboard.ts": source(board)}
    for number, plant in enumerate(PLANTED.values()):
        planted = copy.deepcopy(board)
        plant(planted)
        files[f"planted{number}.ts"] = source(planted)
    found: dict[str, list[Diagnostic]] = {name: [] for name in files}
    for diagnostic in typecheck(files, tmp_path_factory.mktemp("grafana-schema")):
        found[diagnostic.file].append(diagnostic)
    return found


def test_the_schema_is_the_version_of_our_grafana() -> None:
    image = re.search(r"image:\s*grafana/grafana:(\S+)", COMPOSE.read_text())
    assert image is not None
    assert version(SCHEMA) == image[1]
    assert version(SDK).startswith(".".join(image[1].split(".")[:2]) + ".")


def test_the_dashboard_is_what_the_schema_allows(checked: dict[str, list[Diagnostic]]) -> None:
    problems = [str(d) for d in checked["dashboard.ts"]]
    assert problems == [], "\n".join(problems)


def test_every_panel_is_checked_with_its_plugin_types() -> None:
    board = json.loads(DASHBOARD.read_text())
    text = source(board)
    for panel in board["panels"]:
        assert f"export const options{panel['id']}:" in text
        assert f"export const targets{panel['id']}: PromQuery[]" in text
    assert {p["type"] for p in board["panels"]} <= set(PANELS)


@pytest.mark.parametrize("token", list(PLANTED))
def test_a_planted_typo_is_refused(checked: dict[str, list[Diagnostic]], token: str) -> None:
    found = checked[f"planted{list(PLANTED).index(token)}.ts"]
    assert any(token in d.message for d in found), [str(d) for d in found]
