"""Human-readable report tables (rich), with units; machine output is `--json`."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from ingest.answers.reports import COST_KEYS, PERCENTS


def render(result: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    window = result["window"]
    title = f"{window['since']} .. {window['until']}"
    question = result["question"]
    if question == "latency":
        table = Table(title=f"latency, ms ({result['method']}), {title}")
        table.add_column("model")
        table.add_column("requests", justify="right")
        for p in PERCENTS:
            table.add_column(f"p{p} ms", justify="right")
        for row in [{"model": "all", **result["overall"]}, *result["by_model"]]:
            table.add_row(str(row["model"]), str(row["count"]),
                          *(_ms(row[f"p{p}"]) for p in PERCENTS))
        console.print(table)
        split = Table(title="latency buckets")
        for name in result["buckets"]:
            split.add_column(name, justify="right")
        total = sum(result["buckets"].values()) or 1
        split.add_row(*(f"{n} ({n / total:.0%})" for n in result["buckets"].values()))
        console.print(split)
    elif question == "errors":
        table = Table(title=f"errors by model, {title}")
        for column in ("model", "requests", "errors", "error rate", "top errors"):
            table.add_column(column, justify="left" if column in ("model", "top errors")
                             else "right", overflow="fold")
        total = result["total"]
        rows = [*result["by_model"], {"model": "all", **total, "top_errors": []}]
        for row in rows:
            top = "; ".join(f"{t['message']} ({t['count']})" for t in row["top_errors"])
            table.add_row(str(row["model"]), str(row["requests"]), str(row["errors"]),
                          f"{row['error_rate']:.2%}", top)
        console.print(table)
    else:
        by = result["by"]
        table = Table(title=f"cost and tokens per day{'' if by == 'day' else ' and ' + by}, "
                            f"{title}")
        table.add_column("day (UTC)")
        if by != "day":
            table.add_column(by)
        for key in COST_KEYS:
            table.add_column(key.replace("_usd", " $").replace("_", " "), justify="right")
        total = {**result["total"], "day": "total"}
        for row in [*result["rows"], total]:
            cells = [row["day"]] + ([str(row.get(by) or "")] if by != "day" else [])
            cells += [f"{row[k]:.4f}" if k.endswith("usd") else f"{row[k]:,}" for k in COST_KEYS]
            table.add_row(*cells)
        console.print(table)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"
