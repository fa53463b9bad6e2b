"""A preset's targets and their verdicts: PASS, FAIL or "not measured", from the rows of the same run."""

from __future__ import annotations

from dataclasses import dataclass

from rich.table import Table

# A criterion's provider FUSED stands for every fused backend in the rows
# (one verdict each), so that a backend that registers is judged too.
FUSED = "fused"


@dataclass(frozen=True)
class Criterion:
    """A target on one provider's result for one case of a preset.

    metric: a row field: speedups (``speedup_vs_*``) must be >= bound, other
    numbers (seconds, MiB, ``time_vs_random``) <= bound; "skipped": the row
    must be skipped (with its reason). where: (field, value) pairs that pick
    the case's row (n, k, inputs, op, b, ...).
    """

    text: str
    provider: str
    metric: str
    bound: float | None = None
    where: tuple = ()


def criterion(text: str, provider: str, metric: str, bound: float | None = None, **where) -> Criterion:
    return Criterion(text, provider, metric, bound, tuple(sorted(where.items())))


def evaluate_criteria(criteria: tuple, rows: list, fused: tuple = ()) -> list:
    """Each criterion with the measured value and its verdict; ``fused``: the
    names a FUSED criterion stands for (those of the rows, if empty)."""
    out = []
    fused = fused or tuple(dict.fromkeys(r["provider"] for r in rows if r.get("fused")))
    # a provider run at several ISA levels (comhe-bench --cpu-isa): one verdict per level
    levels = {}
    for r in rows:
        base, _, level = r["provider"].partition("@")
        if level:
            levels.setdefault(base, {})[r["provider"]] = None
    for c in criteria:
        if c.provider == FUSED:
            names = fused or (c.provider,)
        else:
            names = tuple(levels.get(c.provider, ())) or (c.provider,)
        for name in names:
            match = [r for r in rows if r["provider"] == name and all(r.get(f) == v for f, v in c.where)]
            row = match[0] if match else {}
            if c.metric == "skipped":
                value = row.get("reason")
                verdict = "not measured" if not row else ("PASS" if row["status"] == "skipped" else "FAIL")
            else:
                value = row.get(c.metric)
                if value is None:
                    verdict = "not measured"
                elif c.metric.startswith("speedup"):
                    verdict = "PASS" if value >= c.bound else "FAIL"
                else:
                    verdict = "PASS" if value <= c.bound else "FAIL"
            text = c.text.replace("{fused}", name) + (f" ({name})" if name != c.provider and c.provider != FUSED else "")
            out.append({"criterion": text, "value": value, "bound": c.bound, "verdict": verdict})
    return out


def verdict_table(verdicts: list, title: str = "targets (ratios measured in this run)") -> Table:
    table = Table(title=title)
    for name in ("criterion", "measured", "verdict"):
        table.add_column(name)
    for v in verdicts:
        value = v["value"]
        color = {"PASS": "green", "FAIL": "red"}.get(v["verdict"], "yellow")
        shown = f"{value:.3g}" if isinstance(value, float) else ("" if value is None else str(value))
        table.add_row(v["criterion"], shown, v["verdict"], style=color)
    return table
