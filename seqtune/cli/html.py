"""``--html FILE`` of ``report`` and ``bench``: one self-contained page (inline SVG and CSS, no
script, nothing fetched from the network) that a user can open or attach to a pull request.

Per kernel and per problem shape (the problem without its length fields ``T``, ``S``, ``L``):
time against length for every implementation (bench: tuned, default and each baseline;
report: tuned and default; a bar per implementation where a problem has one length), and the %
of the roofline where the device's peak is known (a note where it is not); for a
report of two or more profiles, the speedup of each over the first. Under each figure a table
holds the numbers it draws, and the page embeds them as JSON (``<script type="application/json"
id="seqtune-data">``, data only) for anyone who wants to re-plot them."""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from seqtune.analysis.bench import LENGTH_FIELDS
from seqtune.cli.cells import (config_text, fixed_fields, problem_text, time_text,
                               varying_fields)
from seqtune.cli.render import by_kernel

WIDTH, HEIGHT = 620, 300
LEFT, RIGHT, TOP, BOTTOM = 70, 150, 30, 45
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f")
STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
h1{font-size:1.4em}h2{font-size:1.2em;margin-top:2em}h3{font-size:1em;margin-bottom:.2em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0 1.5em}
td,th{border-bottom:1px solid #ddd;padding:2px 8px;text-align:right;white-space:nowrap}
td:first-child,th:first-child{text-align:left}.note{color:#666;font-size:.9em}
svg text{font-size:11px;font-family:system-ui,sans-serif}"""
MARKERS = ("circle", "square", "triangle", "diamond")
DASHES = ("none", "6 3", "2 2", "8 3 2 3")


def write_page(path: Path, page: str, console) -> None:
    """Write the page and say where (one line on ``console``)."""
    from seqtune.cli.layout import print_path
    from seqtune.errors import Failure, UsageError

    path = Path(path)
    if path.is_dir():
        raise UsageError(f"--html {path} is a directory; name a file such as report.html")
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise Failure(f"--html {path}: cannot write: {exc.strerror or exc}") from None
    print_path(console, "HTML page written", path)


# ------------------------------------------------------------------------------- the pages

def report_page(report) -> str:
    """The page of an ``api.report`` result."""
    from seqtune.tuning.timing import INTERPRETER_LABEL

    body, data = [], {"profiles": [], "comparison": report.comparison}
    for (path, profile), rows in zip(report.profiles, report.rows_by_file):
        device = profile.get("device") or {}
        interpreter = any(r["timer"] == INTERPRETER_LABEL for r in rows)
        body.append(f"<h2>{_e(path)}</h2><p class=note>{_e(device.get('name', '?'))} "
                    f"({_e(device.get('key', '?'))}) · "
                    + ("times are CPU wall-clock in the Triton interpreter, not GPU timings"
                       if interpreter else "times: do_bench median") + "</p>")
        figures = []
        for kernel, kernel_rows in by_kernel(rows).items():
            records = [{"problem": r["problem"] or {}, "config": r["config"],
                        "series": {"tuned": (r["time_us"] or {}).get("median"),
                                   "default": r["default_time_us"]},
                        "percent": {"tuned": r["percent_of_peak"]}} for r in kernel_rows]
            figures += _kernel_figures(body, kernel, records)
        data["profiles"].append({"file": str(path), "figures": figures})
    if report.comparison:
        body.append(_comparison(report))
    return _page("seqtune report", body, data)


def bench_page(payload: dict[str, Any]) -> str:
    """The page of an ``api.bench`` payload."""
    body = [f"<p class=note>{_e(payload['device']['name'])} · {_e(payload['timing_note'])}"
            f"<br><code>{_e(payload['command'])}</code></p>"]
    figures = []
    for kernel, results in by_kernel(payload["results"]).items():
        records = []
        for result in results:
            ok = [i for i in result["implementations"] if i["status"] == "ok"]
            records.append({
                "problem": result["problem"],
                "config": next((i["config"] for i in ok if i["kind"] == "tuned"), None),
                "series": {i["name"]: i["time_us"]["median"] for i in ok},
                "percent": {i["name"]: i["percent_of_peak"] for i in ok}})
        figures += _kernel_figures(body, kernel, records)
    return _page("seqtune bench", body, {"figures": figures})


def _page(title: str, body: list[str], data: dict[str, Any]) -> str:
    payload = json.dumps(data, default=str, sort_keys=True).replace("</", "<\\/")
    return (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>{_e(title)}"
            f"</title><style>{STYLE}</style></head><body><h1>{_e(title)}</h1>\n"
            + "\n".join(body)
            + f"\n<script type=\"application/json\" id=\"seqtune-data\">{payload}</script>"
            "\n</body></html>\n")


# ------------------------------------------------------------------------------- per kernel

def _kernel_figures(body: list[str], kernel: str, records: list[dict[str, Any]]
                    ) -> list[dict[str, Any]]:
    """Figures of one kernel: per kind of problem (its categorical fields: dtype, causal,
    ...; headed by every field its problems share, head dims included), time against length,
    or a bar per implementation where the kind has one length, and the % of the roofline (or
    a note saying why there is none), each followed by the table of its numbers; the
    figures' data."""
    body.append(f"<h2>{_e(kernel)}</h2>")
    kinds: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        kind = {k: v for k, v in record["problem"].items() if not _is_size(v)}
        kinds.setdefault(problem_text(kind), []).append(record)
    figures = []
    for kind, group in kinds.items():
        xs, labels, log_x, lines = _x_axis(group)
        names = list(dict.fromkeys(n for r in group for n in r["series"]))
        times = {n: [(x, r["series"].get(n)) for x, r in zip(xs, group)] for n in names}
        percents = {n: [(x, r["percent"].get(n)) for x, r in zip(xs, group)]
                    for n in names if any(r["percent"].get(n) is not None for r in group)}
        shared = fixed_fields([r["problem"] for r in group])
        heading = problem_text({k: v for k, v in shared.items() if k not in LENGTH_FIELDS})
        body.append(f"<h3>{_e(kernel)} {_e(heading)}</h3>")
        x_labels = dict(zip(xs, labels)) if lines else {x: f"{x:g}" for x in xs}
        x_name = _x_name(group)
        one_length = len(group) == 1
        if one_length:
            at = f"{x_name.split(' (')[0]} {labels[0]}"
            body.append(svg_one_length({n: v[0][1] for n, v in times.items()}, "time",
                                       title=f"{kernel}: time at {at}"))
        else:
            body.append(svg_chart(times, x_labels, log_x, log_y=True, y_label="time",
                                  x_label=x_name, title=f"{kernel}: time against length",
                                  lines=lines))
        body.append(_coincident_note(times))
        if percents and one_length:
            body.append(svg_one_length({n: v[0][1] for n, v in percents.items()},
                                       "% of roofline", title=f"{kernel}: % of roofline"))
        elif percents:
            body.append(svg_chart(percents, x_labels, log_x, log_y=False, lines=lines,
                                  y_label="% of roofline", x_label=x_name,
                                  title=f"{kernel}: % of roofline"))
        else:
            body.append("<p class=note>no % of roofline: this device's peak FLOP/s and "
                        "bandwidth are not known (the CPU interpreter, or a GPU seqtune has "
                        "no data sheet figures for)</p>")
        body.append(_table(group, _row_labels(group), names, bool(percents)))
        figures.append({"kernel": kernel, "kind": kind, "x": labels, "time_us": times,
                        "percent_of_roofline": percents})
    return figures


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _x_axis(group: list[dict[str, Any]]) -> tuple[list[float], list[str], bool, bool]:
    """(x of each record, its label, log scale, join the points by lines): the length when
    every problem has one (joined when nothing but the length differs), else the index."""
    problems = [r["problem"] for r in group]
    lengths = [_length(p) for p in problems]
    if all(lengths):
        joined = set(varying_fields(problems)) <= set(LENGTH_FIELDS)
        return [float(n) for n in lengths], [str(n) for n in lengths], True, joined
    return ([float(i) for i in range(len(group))], [str(i) for i in range(len(group))], False,
            False)


def _length(problem: dict[str, Any]) -> int | None:
    return next((problem[k] for k in LENGTH_FIELDS if k in problem), None)


def _x_name(group: list[dict[str, Any]]) -> str:
    """The x axis's label: the length field that sets x, else the problem's row number."""
    problem = group[0]["problem"]
    field = next((k for k in LENGTH_FIELDS if k in problem), None)
    lengths = [_length(r["problem"]) for r in group]
    if field and all(lengths):
        return f"length {field} (tokens)"
    return "problem (row of the table below)"


def _coincident_note(series: dict[str, list[tuple[float, float | None]]]) -> str:
    """A note naming the series drawn on top of each other (equal at every point), which
    markers of different shapes alone would leave to the eye."""
    groups: dict[tuple, list[str]] = {}
    for name, values in series.items():
        if any(y is not None for _, y in values):
            groups.setdefault(tuple(values), []).append(name)
    same = [" = ".join(names) for names in groups.values() if len(names) > 1]
    return f"<p class=note>{_e('; '.join(same))} at every point</p>" if same else ""


def _row_labels(group: list[dict[str, Any]]) -> list[str]:
    """Each row's problem: the fields that vary in the group, else its length, else every
    field (never an empty cell)."""
    problems = [r["problem"] for r in group]
    varying = varying_fields(problems) or [k for k in LENGTH_FIELDS if k in problems[0]]
    return [problem_text(p, varying) or problem_text(p) or "-" for p in problems]


def _table(group: list[dict[str, Any]], labels: list[str], names: list[str],
           percents: bool) -> str:
    head = "".join(f"<th>{_e(n)}</th>" for n in names)
    rows = []
    for label, record in zip(labels, group):
        cells = "".join(f"<td>{_e(time_text(record['series'].get(n)))}</td>" for n in names)
        if percents:
            cells += "".join("<td>" + ("-" if record["percent"].get(n) is None else
                                       f"{record['percent'][n]:.1f}%") + "</td>" for n in names)
        config = _e(config_text(record["config"]).replace("\n", "; "))
        rows.append(f"<tr><td>{_e(label)}</td>{cells}<td>{config}</td></tr>")
    peak = "".join(f"<th>{_e(n)} % roofline</th>" for n in names) if percents else ""
    return (f"<table><tr><th>problem</th>{head}{peak}<th>tuned config</th></tr>"
            + "".join(rows) + "</table>")


def _comparison(report) -> str:
    """The speedup of each later profile over the first, per problem, as horizontal bars."""
    parts = [f"<h2>speedup over {_e(report.profiles[0][0])}</h2><p class=note>time in the "
             "first profile over time in this one: above 1x this one is faster</p>"]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in report.comparison:
        groups.setdefault((row["kernel"], row["file"]), []).append(row)
    for (kernel, path), rows in groups.items():
        speedups = [(r["problem"], r["base_time_us"] / r["time_us"]) for r in rows
                    if r["time_us"]]
        parts.append(f"<h3>{_e(kernel)}: {_e(path)}</h3>" + svg_bars(speedups))
    return "\n".join(parts)


# ----------------------------------------------------------------------------------- SVG

def svg_chart(series: dict[str, list[tuple[float, float | None]]], labels: dict[float, str],
              log_x: bool, log_y: bool, y_label: str, title: str, lines: bool = True,
              x_label: str = "") -> str:
    """A line chart: points per series (each a marker of its own shape, titled with its
    value), joined when ``lines``, x ticks at the data's x values, y ticks at 1-2-5 steps
    (log) or five even steps. A time axis (``y_label`` "time") is labelled with the one unit
    its ticks are written in."""
    points = [(x, y) for values in series.values() for x, y in values if y is not None and y > 0]
    if not points:
        return "<p class=note>nothing to draw: no timed point</p>"
    fx = _scale([x for x, _ in points], log_x, LEFT, WIDTH - RIGHT)
    low, high = min(y for _, y in points), max(y for _, y in points)
    if not log_y:
        low = 0.0
    fy = _scale([low, high], log_y, HEIGHT - BOTTOM, TOP)
    unit, size = _time_unit(high) if y_label == "time" else ("", 1.0)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
           f'role="img" aria-label="{_e(title)}"><title>{_e(title)}</title>',
           f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" '
           f'height="{HEIGHT - TOP - BOTTOM}" fill="none" stroke="#ccc"/>']
    for tick in _y_ticks(low, high, log_y):
        y = fy(tick)
        text = f"{tick / size:.3g}" if unit else _tick_text(tick, y_label)
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
                   f'stroke="#eee"/><text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">'
                   f'{_e(text)}</text>')
    for x in sorted({x for x, _ in points}):
        out.append(f'<text x="{fx(x):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">'
                   f'{_e(labels.get(x, f"{x:g}"))}</text>')
    out.append(f'<text x="{LEFT - 55}" y="{TOP - 12}">'
               f'{_e(f"{y_label} ({unit})" if unit else y_label)}</text>')
    if x_label:
        out.append(f'<text x="{(LEFT + WIDTH - RIGHT) / 2:.0f}" y="{HEIGHT - 8}" '
                   f'text-anchor="middle">{_e(x_label)}</text>')
    for index, (name, values) in enumerate(series.items()):
        colour = PALETTE[index % len(PALETTE)]
        drawn = [(fx(x), fy(y), y) for x, y in values if y is not None and y > 0]
        if lines and len(drawn) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py, _ in drawn)
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" '
                       f'stroke-width="1.8" stroke-dasharray="{DASHES[index % len(DASHES)]}"/>')
        for px, py, y in drawn:
            out.append(_marker(index, px, py, colour,
                               f"{name}: {_tick_text(y, y_label)}"))
        ly = TOP + 14 * index + 6
        out.append(_marker(index, WIDTH - RIGHT + 15, ly - 3, colour, name)
                   + f'<text x="{WIDTH - RIGHT + 24}" y="{ly + 1}">{_e(name)}</text>')
    return "".join(out) + "</svg>"


def svg_one_length(values: dict[str, float | None], y_label: str, title: str) -> str:
    """One horizontal bar per implementation (tuned, default, baselines) for a problem
    measured at one length, where a line chart would be a lone point; a time axis shares one
    unit across its bars."""
    drawn = {name: v for name, v in values.items() if v is not None and v > 0}
    if not drawn:
        return "<p class=note>nothing to draw: no timed point</p>"
    top = max(drawn.values())
    unit, size = _time_unit(top) if y_label == "time" else ("%", 1.0)
    row, label_width, length = 24, 120, WIDTH - 120 - 110
    height = row * len(drawn) + 36
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'role="img" aria-label="{_e(title)}"><title>{_e(title)}</title>']
    for index, (name, value) in enumerate(drawn.items()):
        y = 6 + index * row
        width = value / top * length
        out.append(f'<text x="{label_width - 6}" y="{y + 14}" text-anchor="end">{_e(name)}'
                   f'</text><rect x="{label_width}" y="{y + 2}" width="{width:.1f}" '
                   f'height="{row - 6}" fill="{PALETTE[index % len(PALETTE)]}"><title>'
                   f'{_e(name)}: {_e(_tick_text(value, y_label))}</title></rect><text '
                   f'x="{label_width + width + 6:.1f}" y="{y + 14}">{value / size:.3g} '
                   f'{_e(unit)}</text>')
    axis = f"time ({unit})" if y_label == "time" else y_label
    out.append(f'<text x="{label_width}" y="{height - 6}">{_e(axis)} at one length: a bar '
               'per implementation</text>')
    return "".join(out) + "</svg>"


def svg_bars(speedups: list[tuple[str, float]]) -> str:
    """Horizontal bars on a log2 scale centred on 1x: green right (faster), red left."""
    if not speedups:
        return "<p class=note>no shared problem</p>"
    row, label_width, half = 22, 330, 200
    scale = max([abs(math.log2(s)) for _, s in speedups] + [1.0])
    axis = label_width + half
    height = row * len(speedups) + 20
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_width + 2 * half + 70}" '
           f'height="{height}" role="img" aria-label="speedup per problem">',
           f'<line x1="{axis}" x2="{axis}" y1="0" y2="{height}" stroke="#444"/>']
    for index, (problem, speedup) in enumerate(speedups):
        y = 10 + index * row
        length = abs(math.log2(speedup)) / scale * half
        x = axis if speedup >= 1 else axis - length
        colour = "#2ca02c" if speedup >= 1 else "#d62728"
        out.append(f'<text x="{label_width - 6}" y="{y + 13}" text-anchor="end">'
                   f'{_e(problem)}</text><rect x="{x:.1f}" y="{y + 2}" width="{length:.1f}" '
                   f'height="{row - 6}" fill="{colour}"><title>{_e(problem)}: '
                   f'{speedup:.3f}x</title></rect><text x="{axis + half + 6}" y="{y + 13}">'
                   f'{speedup:.2f}x</text>')
    return "".join(out) + "</svg>"


def _scale(values: list[float], log: bool, start: float, end: float):
    """value -> pixel, linear or log, with the values' range mapped onto [start, end]."""
    f = math.log10 if log else float
    low, high = f(min(values)), f(max(values))
    if high == low:
        low, high = low - 1, high + 1
    return lambda v: start + (f(v) - low) / (high - low) * (end - start)


def _y_ticks(low: float, high: float, log: bool) -> list[float]:
    if not log:
        return [low + (high - low) * i / 4 for i in range(5)]
    ticks = [m * 10 ** e for e in range(math.floor(math.log10(low)),
                                        math.ceil(math.log10(high)) + 1) for m in (1, 2, 5)]
    inside = [t for t in ticks if low <= t <= high]
    return inside or [low, high]


def _time_unit(largest_us: float) -> tuple[str, float]:
    """(unit, microseconds per unit) that writes an axis reaching ``largest_us`` shortly."""
    for unit, size in (("s", 1e6), ("ms", 1e3)):
        if largest_us >= size:
            return unit, size
    return "µs", 1.0


def _marker(index: int, x: float, y: float, colour: str, title: str) -> str:
    """Series ``index``'s marker: circle, square, triangle, diamond, ... so that series drawn
    on top of each other stay distinguishable."""
    shape = MARKERS[index % len(MARKERS)]
    tip = f"<title>{_e(title)}</title>"
    if shape == "circle":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}">{tip}</circle>'
    if shape == "square":
        return (f'<rect x="{x - 3.5:.1f}" y="{y - 3.5:.1f}" width="7" height="7" fill="none" '
                f'stroke="{colour}" stroke-width="1.5">{tip}</rect>')
    corners = {"triangle": ((0, -5), (4.5, 3.5), (-4.5, 3.5)),
               "diamond": ((0, -5), (5, 0), (0, 5), (-5, 0))}[shape]
    path = " ".join(f"{x + dx:.1f},{y + dy:.1f}" for dx, dy in corners)
    return (f'<polygon points="{path}" fill="none" stroke="{colour}" stroke-width="1.5">'
            f'{tip}</polygon>')


def _tick_text(value: float, y_label: str) -> str:
    return f"{value:.3g}%" if "%" in y_label else time_text(value)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)
