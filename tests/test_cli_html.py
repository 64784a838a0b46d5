"""`report --html` and `bench --html`: one self-contained page (inline SVG, no script, nothing
fetched) with time against length per kernel and implementation, the % of the roofline where
the peak is known, and the speedup bars of a comparison (issue 16, point 8)."""
from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ElementTree

import pytest
from typer.testing import CliRunner

from seqtune.cli import app
from seqtune.cli.html import bench_page
from seqtune.registry import get_spec
from test_cli_views import WIDE_KERNELS, bench_payload, gpu_profile

runner = CliRunner()


def page_data(page: str) -> dict:
    block = re.search(r'<script type="application/json" id="seqtune-data">(.*?)</script>',
                      page, re.S)
    return json.loads(block.group(1).replace("<\\/", "</"))


def assert_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"\b(src|href)\s*=", page)  # nothing loaded from anywhere
    assert "<script" not in page.replace('<script type="application/json"', "")
    for svg in re.findall(r"<svg.*?</svg>", page, re.S):
        ElementTree.fromstring(svg)  # each figure is well-formed SVG


def test_report_html_has_time_per_length_roofline_and_speedup_figures(tmp_path):
    base = gpu_profile(tmp_path / "a.yaml")
    faster = gpu_profile(tmp_path / "b.yaml", scale=0.5)
    out = tmp_path / "report.html"
    result = runner.invoke(app, ["report", str(base), str(faster), "--html", str(out)],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"HTML page written: {out}" in result.stdout
    page = out.read_text()
    assert_self_contained(page)
    data = page_data(page)
    figures = data["profiles"][0]["figures"]
    assert {f["kernel"] for f in figures} == set(WIDE_KERNELS)
    # the drawn times are the profile's: every entry's median and default time, per length
    import yaml

    entries = yaml.safe_load(base.read_text())["kernels"]["attention_decode"]["entries"]
    drawn = {y for f in figures if f["kernel"] == "attention_decode"
             for _, y in f["time_us"]["tuned"]}
    assert drawn == {e["time_us"]["median"] for e in entries}
    defaults = {y for f in figures if f["kernel"] == "attention_decode"
                for _, y in f["time_us"]["default"]}
    assert defaults == {e["default_time_us"] for e in entries}
    decode = [f for f in figures if f["kernel"] == "attention_decode"]
    assert len(decode) == 1  # one kind of problem: one figure, its lengths on the x axis
    assert set(decode[0]["x"]) == {"1024", "4096", "16384", "32768"}
    assert all(f["percent_of_roofline"]["tuned"] for f in figures)  # H100: known peak
    drawn_figures = sum(len(p["figures"]) for p in data["profiles"])
    assert page.count("% of roofline</title>") == drawn_figures
    lines = page.count("time against length</title>")
    bars = len(re.findall(r"time at length \w+ \d+</title>", page))
    assert lines and bars and lines + bars == drawn_figures  # one length: bars, not a point
    # the comparison: one bar per shared problem, each titled with its speedup
    shared = sum(len(get_spec(k).presets["default"]) for k in WIDE_KERNELS)
    assert len(data["comparison"]) == shared
    assert page.count("2.000x</title></rect>") == shared


def test_bench_html_draws_every_implementation_against_length(tmp_path):
    payload = bench_payload()
    page = bench_page(payload)
    assert_self_contained(page)
    figures = page_data(page)["figures"]
    assert len(figures) == 2  # two problem shapes, each at two lengths
    for figure in figures:
        assert figure["x"] == ["1024", "4096"]
        assert set(figure["time_us"]) == {"tuned", "default", "torch", "torch_sdpa"}
        assert [y for _, y in figure["time_us"]["torch"]] == [1500.0, 1500.0]
        assert [y for _, y in figure["percent_of_roofline"]["tuned"]] == [37.5, 37.5]
    assert "fla_chunk" not in json.dumps(figures)  # never ran: nothing to draw


def test_bench_html_from_the_command(tmp_path, toy_registry):
    out = tmp_path / "bench.html"
    result = runner.invoke(app, ["bench", "toy_scale", "--html", str(out), "--json"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)  # --json stays clean: the path went to stderr
    page = out.read_text()
    assert_self_contained(page)
    figures = page_data(page)["figures"]
    times = sorted(y for f in figures for _, y in f["time_us"]["default"])
    assert times == sorted(i["time_us"]["median"] for r in payload["results"]
                           for i in r["implementations"] if i["name"] == "default")


def test_html_to_a_directory_is_bad_usage(tmp_path, monkeypatch, capsys):
    from seqtune.cli import main

    base = gpu_profile(tmp_path / "a.yaml")
    monkeypatch.setattr("sys.argv", ["seqtune", "report", str(base), "--html", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert "is a directory" in capsys.readouterr().err


def _one_length_payload(tuned_us: float, default_us: float, percent: float | None) -> dict:
    payload = bench_payload()
    for result in payload["results"]:
        for implementation in result["implementations"]:
            implementation["percent_of_peak"] = percent
            if implementation["name"] in ("tuned", "default"):
                median = tuned_us if implementation["name"] == "tuned" else default_us
                implementation["time_us"] = {"median": median, "p20": median, "p80": median}
    payload["results"] = payload["results"][:1]  # one problem at one length
    return payload


def test_one_length_is_a_bar_per_implementation_with_its_unit_and_notes():
    # issue 33, point 1: no lone point, units that match the numbers, coinciding series
    # said, headings with every field, a note where there is no roofline
    page = bench_page(_one_length_payload(2500.0, 2500.0, percent=None))
    assert_self_contained(page)
    assert "time against length</title>" not in page
    bars = re.search(r"<svg[^>]*aria-label=\"attention: time at length T 1024\".*?</svg>",
                     page, re.S).group(0)
    assert bars.count("<rect") == 4  # tuned, default, torch, torch_sdpa
    assert "2.5 ms" in bars and "time (ms) at one length" in bars
    assert "tuned = default at every point" in page
    problem = bench_payload()["results"][0]["problem"]
    heading = re.search(r"<h3>(.*?)</h3>", page).group(1)
    assert f"D={problem['D']}" in heading and "T=" not in heading
    assert "no % of roofline" in page
    table = re.search(r"<table>.*?</table>", page, re.S).group(0)
    assert "<td>-</td>" not in table.split("</tr>", 2)[1]  # the problem cell names its length


def test_time_axis_is_labelled_in_the_unit_of_its_ticks():
    payload = bench_payload()
    page = bench_page(payload)
    chart = re.search(r"<svg[^>]*aria-label=\"attention: time against length\".*?</svg>",
                      page, re.S).group(0)
    ticks = re.findall(r'text-anchor="end">([^<]*)</text>', chart)
    assert "time (ms)" in chart  # 250 µs .. 1.5 ms: written in ms throughout (0.3, 0.5, 1)
    assert ticks and all(re.fullmatch(r"[\d.]+", t) for t in ticks)
    assert "length T (tokens)" in chart
    shapes = {tag for tag in ("<circle", "<rect x=", "<polygon") if tag in chart}
    assert len(shapes) == 3  # four series, markers of different shapes
