"""The evaluation report: figures as tables, and plots as plain SVG (no plotting library).

:func:`render` takes the ``results.json`` data of ``featrec evaluate`` and returns the files
of the report: ``report.md`` (tables, and the plots as SVG files beside it) and
``report.html`` (the same, plots inline, one self-contained page). Plots:

- HR@K and MRR@K per policy (bars), and HR@k for k = 1..K per policy (lines);
- lift of every policy over batch-only (bars, percent);
- recommendation latency per policy and freshness (event released -> row readable) as
  histograms on a log scale of milliseconds.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

WIDTH: Final = 640
HEIGHT: Final = 300
MARGIN: Final = (48, 16, 40, 150)  # top, right, bottom, left
PALETTE: Final = (
    "#4C72B0",
    "#DD8452",
    "#55A868",
    "#C44E52",
    "#8172B3",
    "#937860",
    "#DA8BC3",
    "#8C8C8C",
)


def _svg(title: str, body: list[str], height: int = HEIGHT) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">'
        f'<rect width="100%" height="100%" fill="white"/>'
        f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" font-size="15" '
        f'font-weight="bold">{html.escape(title)}</text>' + "".join(body) + "</svg>"
    )


def bar_chart(title: str, bars: Sequence[tuple[str, float]], fmt: str = "{:.3f}") -> str:
    """Horizontal bars, one per (label, value); negative values extend left of zero."""
    top, right, bottom, left = MARGIN
    height = max(HEIGHT, top + bottom + 26 * len(bars))
    finite = [v for _, v in bars if math.isfinite(v)]
    lo = min([0.0, *finite])
    hi = max([0.0, *finite]) or 1.0
    span = hi - lo or 1.0
    plot_w = WIDTH - left - right - 60

    def x(v: float) -> float:
        return left + (v - lo) / span * plot_w

    band = (height - top - bottom) / max(1, len(bars))
    body = [
        f'<line x1="{x(0):.1f}" y1="{top}" x2="{x(0):.1f}" y2="{height - bottom}" stroke="#333"/>'
    ]
    for i, (label, value) in enumerate(bars):
        y = top + i * band
        colour = PALETTE[i % len(PALETTE)]
        body.append(
            f'<text x="{left - 6}" y="{y + band / 2 + 4:.1f}" text-anchor="end">'
            f"{html.escape(label)}</text>"
        )
        if not math.isfinite(value):
            continue
        x0, x1 = sorted((x(0), x(value)))
        body.append(
            f'<rect x="{x0:.1f}" y="{y + band * 0.15:.1f}" width="{max(x1 - x0, 0.5):.1f}" '
            f'height="{band * 0.7:.1f}" fill="{colour}"/>'
        )
        body.append(
            f'<text x="{x1 + 4:.1f}" y="{y + band / 2 + 4:.1f}">{html.escape(fmt.format(value))}'
            "</text>"
        )
    return _svg(title, body, height)


def line_chart(title: str, series: Mapping[str, Sequence[float]], x_label: str) -> str:
    """One line per series over x = 1..n (all series the same length)."""
    top, right, bottom, left = MARGIN
    left = 56
    right = 150
    n = max((len(v) for v in series.values()), default=0)
    values = [v for s in series.values() for v in s if math.isfinite(v)]
    hi = max(values, default=1.0) or 1.0
    plot_w = WIDTH - left - right
    plot_h = HEIGHT - top - bottom

    def xy(i: int, v: float) -> tuple[float, float]:
        return left + (i / max(1, n - 1)) * plot_w, top + plot_h - v / hi * plot_h

    body = [
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
        'stroke="#333"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#333"/>',
        f'<text x="{left + plot_w / 2}" y="{HEIGHT - 8}" text-anchor="middle">'
        f"{html.escape(x_label)}</text>",
    ]
    for frac in (0.0, 0.5, 1.0):
        _, y = xy(0, hi * frac)
        body.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{hi * frac:.2f}</text>'
        )
    for j, (name, ys) in enumerate(series.items()):
        colour = PALETTE[j % len(PALETTE)]
        points = " ".join(
            "{:.1f},{:.1f}".format(*xy(i, v)) for i, v in enumerate(ys) if math.isfinite(v)
        )
        body.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>')
        body.append(
            f'<text x="{left + plot_w + 8}" y="{top + 14 + 16 * j}" fill="{colour}">'
            f"{html.escape(name)}</text>"
        )
    return _svg(title, body)


def log_histogram(title: str, samples: Mapping[str, Sequence[float]], unit: str = "ms") -> str:
    """Share of samples per log-spaced bin, one step line per named sample set."""
    positive = [v for s in samples.values() for v in s if v > 0 and math.isfinite(v)]
    if not positive:
        return _svg(title, ['<text x="320" y="150" text-anchor="middle">no samples</text>'])
    lo = math.floor(math.log10(min(positive)) * 4) / 4
    hi = math.ceil(math.log10(max(positive)) * 4) / 4 + 0.25
    edges = [lo + i * 0.25 for i in range(round((hi - lo) / 0.25) + 1)]
    series: dict[str, list[float]] = {}
    for name, values in samples.items():
        counts = [0] * (len(edges) - 1)
        for v in values:
            if v > 0 and math.isfinite(v):
                b = min(len(counts) - 1, max(0, int((math.log10(v) - lo) / 0.25)))
                counts[b] += 1
        total = sum(counts) or 1
        series[name] = [c / total for c in counts]
    chart = line_chart(title, series, f"{unit}, log scale: 10^{lo:g} .. 10^{hi:g}")
    return chart


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return "-" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def policy_table(results: Mapping[str, Any]) -> list[str]:
    """Markdown table: one row per policy."""
    k = results["k"]
    base = _baseline(results)
    lines = [
        f"| policy | HR@{k} | MRR@{k} | lift HR vs batch-only | coverage@{k} | "
        f"popularity pct@{k} | degraded | latency p50 / p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results["policies"]:
        hr = row[f"hr@{k}"]
        lift = "-" if base is None or base == 0 else f"{(hr / base - 1) * 100:+.1f}%"
        lat = row["latency_ms"]
        lines.append(
            f"| {row['policy']} | {_fmt(hr)} | {_fmt(row[f'mrr@{k}'])} | {lift} | "
            f"{_fmt(row[f'coverage@{k}'], 3)} | {_fmt(row[f'popularity_percentile@{k}'], 1)} | "
            f"{row['degraded_share']:.1%} | {_fmt(lat.get('p50', math.nan), 2)} / "
            f"{_fmt(lat.get('p99', math.nan), 2)} |"
        )
    return lines


def _baseline(results: Mapping[str, Any]) -> float | None:
    k = results["k"]
    for row in results["policies"]:
        if row["policy"] == "batch-only":
            return float(row[f"hr@{k}"])
    return None


def charts(
    results: Mapping[str, Any],
    latencies: Mapping[str, Sequence[float]],
    freshness: Sequence[float],
) -> dict[str, str]:
    """The report's plots: file name -> SVG text."""
    k = results["k"]
    rows = results["policies"]
    out = {
        "hr.svg": bar_chart(f"HR@{k} per policy", [(r["policy"], r[f"hr@{k}"]) for r in rows]),
        "mrr.svg": bar_chart(f"MRR@{k} per policy", [(r["policy"], r[f"mrr@{k}"]) for r in rows]),
        "hr_curve.svg": line_chart(
            "HR@k for k = 1..K", {r["policy"]: r["hr_curve"] for r in rows}, "k"
        ),
    }
    base = _baseline(results)
    if base:
        out["lift.svg"] = bar_chart(
            f"Lift of HR@{k} over batch-only",
            [(r["policy"], (r[f"hr@{k}"] / base - 1) * 100) for r in rows],
            "{:+.1f}%",
        )
    out["latency.svg"] = log_histogram("Recommendation latency per policy", latencies)
    out["freshness.svg"] = log_histogram(
        "Freshness: event released -> session row readable", {"freshness": freshness}
    )
    return out


def render(
    results: Mapping[str, Any],
    latencies: Mapping[str, Sequence[float]],
    freshness: Sequence[float],
) -> dict[str, str]:
    """``{file name: text}``: report.md, report.html and the SVG plots."""
    plots = charts(results, latencies, freshness)
    k = results["k"]
    head = [
        "# featrec replay evaluation",
        "",
        f"Train `{results['train']}` -> test `{results['test']}` (format {results['format']}). "
        f"{results['points']:,} prediction points (every event of a test session but its last; "
        f"repeats kept), K = {k}, catalogue {results['catalogue']:,} training items.",
        "",
        *policy_table(results),
        "",
    ]
    replay = results["replay"]
    facts = [
        f"- replay: {replay['events']:,} events in {replay['seconds']:.1f} s "
        f"({replay['events_per_s']:,.0f} events/s, every policy answered at every point)",
        f"- freshness (event released -> row readable): p50 {replay['freshness_ms']['p50']:.2f} ms,"
        f" p99 {replay['freshness_ms']['p99']:.2f} ms",
        "- training phase: "
        + ", ".join(f"{name} {s:.1f} s" for name, s in results["training"]["seconds"].items()),
        f"- dead letters: {replay['dead_letters']}, rows not readable after their write: "
        f"{replay['unreadable']}",
    ]
    md = [*head, *facts, ""]
    md += [f"![{name}]({name})" for name in plots]
    page = [
        "<!doctype html><html><head><meta charset='utf-8'><title>featrec evaluation</title>",
        "<style>body{font-family:sans-serif;max-width:980px;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
        "svg{margin:8px}</style></head><body>",
        _md_to_html(head + facts),
        *plots.values(),
        "</body></html>",
    ]
    return {"report.md": "\n".join(md) + "\n", "report.html": "\n".join(page), **plots}


def _md_to_html(lines: Sequence[str]) -> str:
    """Just enough Markdown for the report: a title, paragraphs, a table, a list."""
    out: list[str] = []
    in_table = False
    for line in lines:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= {"-"}:
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                out.append("<table>")
                in_table = True
            out.append(
                "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"
            )
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("# "):
            out.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("- "):
            out.append(f"<li>{html.escape(line[2:])}</li>")
        elif line:
            out.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        out.append("</table>")
    return "\n".join(out)
