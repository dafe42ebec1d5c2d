"""The offline report: one self-contained HTML page, PNG/SVG charts and CSV tables.

Why self-contained: the report is evidence that must open years later on a machine without
network. The Vega, Vega-Lite and vega-embed code is inlined once (from vl-convert's bundle, the
same code altair's `inline=True` uses) and every chart spec is embedded as JSON; the page has no
`<script src>` and loads nothing. PNG and SVG come from the same specs through vl-convert.

Layout of DIR: index.html, charts/<name>.png|.svg, tables/{legs,attribution,narrative,timeline,
onsets}.csv.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import altair as alt
import polars as pl

from crashlab import __version__
from crashlab.ingest.lake import Lake

from . import charts as charts_mod
from .attribution import Attribution, attribute
from .db import Forensics, connect

alt.data_transformers.disable_max_rows()


@dataclass
class ReportResult:
    out_dir: Path
    index: Path
    charts: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {rows, reason, png, svg}
    tables: dict[str, Path] = field(default_factory=dict)
    attribution: Attribution | None = None


@lru_cache(maxsize=1)
def _js_bundle() -> str:
    """Vega + Vega-Lite + vega-embed as one inline script, cached on disk per vl-convert version
    (bundling takes seconds; the bundle for a given version never changes)."""
    import os

    import vl_convert as vlc

    major_minor = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])  # vl-convert wants "6.4"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "crashlab"
    f = cache / f"vega-embed-bundle-vlc{vlc.__version__}-vl{major_minor}.js"
    try:
        js = f.read_text(encoding="utf-8")
    except OSError:
        js = vlc.javascript_bundle(vl_version=major_minor)
        try:
            cache.mkdir(parents=True, exist_ok=True)
            tmp = f.with_name(f".{f.name}.{os.getpid()}.tmp")
            tmp.write_text(js, encoding="utf-8")
            os.replace(tmp, f)
        except OSError:
            pass  # a read-only home only costs the next run the bundling time
    return js.replace("</script", "<\\/script")  # never close the inline tag early


def load_run(run: str | Path, runs_dir: Path | None = None) -> tuple[Path, dict, pl.DataFrame, pl.DataFrame | None]:
    """A replay run folder (path, or a run id under data/runs): manifest, events, price path."""
    from crashlab.ingest.paths import DATA

    p = Path(run)
    if not (p / "manifest.json").exists():
        p = (runs_dir or DATA / "runs") / str(run)
    if not (p / "manifest.json").exists():
        raise FileNotFoundError(f"run {run!r}: no manifest.json at {run} or {p}")
    manifest = json.loads((p / "manifest.json").read_text())
    liq = pl.read_parquet(p / "events.parquet") if (p / "events.parquet").exists() else pl.DataFrame()
    pp = pl.read_parquet(p / "price_path.parquet") if (p / "price_path.parquet").exists() else None
    return p, manifest, liq, pp


def timeline_table(att: Attribution, db: Forensics) -> pl.DataFrame:
    """Markers, stage onsets, leg pivots and per-instrument lows, in time order."""
    parts = []
    m = db.sql(
        "SELECT ts, kind, label, source_url FROM markers WHERE ts >= $lo AND ts < $hi ORDER BY ts",
        {"lo": att.start, "hi": att.end},
    )
    if m.height:
        parts.append(m.select("ts", pl.lit("marker").alias("what"), pl.col("kind").alias("detail"), pl.col("label").alias("text"), pl.col("source_url").alias("source")))
    o = att.onsets.filter(pl.col("onset").is_not_null())
    if o.height:
        parts.append(o.select(pl.col("onset").alias("ts"), pl.lit("stage onset").alias("what"), pl.col("stage").alias("detail"),
                              pl.format("{} began ({})", pl.col("title"), pl.col("note")).alias("text"), pl.col("signal").alias("source")))
    if att.legs.height:
        parts.append(att.legs.select(pl.col("end_ts").alias("ts"), pl.lit("leg end").alias("what"), pl.format("leg {}", pl.col("leg_id")).alias("detail"),
                                     pl.format("{} {} {}% to {} (dominant: {}, {}, confidence {})", pl.col("instrument"), pl.col("direction"), pl.col("move_pct").round(2),
                                               pl.col("end_price"), pl.col("dominant_stage"), pl.col("dominant_method"), pl.col("confidence").round(2)).alias("text"),
                                     pl.lit("legs").alias("source")))
    w = charts_mod.wick_table(db, att.start, att.end)
    if w.height:
        parts.append(w.select(pl.col("low_ts").alias("ts"), pl.lit("low").alias("what"), pl.format("{} {}", pl.col("venue"), pl.col("symbol")).alias("detail"),
                              pl.format("low {} ({}% from the window's first price)", pl.col("low"), pl.col("drawdown_pct").round(2)).alias("text"),
                              pl.lit("trades").alias("source")))
    if not parts:
        return pl.DataFrame(schema={"ts": pl.Datetime("us", "UTC"), "what": pl.String, "detail": pl.String, "text": pl.String, "source": pl.String})
    df = pl.concat([p.with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC"))) for p in parts], how="vertical_relaxed")
    return df.sort(["ts", "what", "detail"])


def _csv(df: pl.DataFrame, path: Path) -> Path:
    out = df.with_columns([pl.col(c).dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ") for c, t in df.schema.items() if isinstance(t, pl.Datetime)])
    out.write_csv(path)
    return path


def _table_html(df: pl.DataFrame, max_rows: int = 400, verdict_col: str | None = None) -> str:
    cols = df.columns
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for r in df.head(max_rows).iter_rows(named=True):
        cells = []
        for c in cols:
            v = r[c]
            if isinstance(v, datetime):
                s = v.strftime("%Y-%m-%d %H:%M:%S")
            elif isinstance(v, float):
                s = f"{v:.4g}"
            else:
                s = "" if v is None else str(v)
            cls = f' class="v-{s.replace(" ", "-")}"' if c == verdict_col else ""
            cells.append(f"<td{cls}>{html.escape(s)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = f"<p class='note'>{df.height - max_rows} more rows in the CSV.</p>" if df.height > max_rows else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1500px}
h1{font-size:24px} h2{font-size:19px;margin-top:34px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px;margin:8px 0} th,td{border:1px solid #ddd;padding:3px 6px;text-align:left}
th{background:#f3f3f3} .note{color:#555;font-size:13px} .warn{color:#a00}
.v-supported,.v-True{background:#e3f5e3} .v-False{background:#fbe0e0;font-weight:bold} .v-contradicted{background:#fbe0e0;font-weight:bold} .v-not-enough-data{color:#888}
.chart{margin:10px 0 26px} .nodata{color:#a00;font-weight:bold}
"""


def build(
    lake: Lake | str | Path | None,
    start: datetime,
    end: datetime,
    out_dir: str | Path,
    run: str | Path | None = None,
    *,
    scenario: str | Path | None = None,
    shapley: bool = False,
    instrument: tuple[str, str, str] | None = None,
    threshold_pct: float = 2.0,
    stages_path: str | Path | None = None,
    workers: int = 2,
    images: bool = True,
    progress: Callable[[str], None] | None = None,
    calibration: pl.DataFrame | None = None,
    banner: str | None = None,
) -> ReportResult:
    """Write the report for [start, end). With `run`, its replayed liquidations feed the signals and
    charts; with `shapley=True` (and a run or `scenario`) each leg is attributed by 2^n replays."""
    lake = lake if isinstance(lake, Lake) else Lake.open(lake)
    out = Path(out_dir)
    (out / "charts").mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    say = progress or (lambda s: None)
    run_liq = None
    run_note = ""
    if run is not None:
        run_path, manifest, run_liq, _pp = load_run(run)
        run_note = f"replay run {manifest.get('run_id')} ({run_path})"
        if scenario is None and shapley:
            scenario = (manifest.get("inputs", {}).get("scenario") or {}).get("path")
    db = connect(lake)
    try:
        say("attribution")
        att = attribute(
            lake, start, end, instrument=instrument, threshold_pct=threshold_pct, stages_path=stages_path,
            scenario=scenario if shapley else None, replay_liquidations=run_liq, workers=workers, db=db,
        )
        if run_note:
            att.notes.append(f"replayed forced flow from {run_note}")
        say("charts")
        chart_list = charts_mod.all_charts(att, db)
        timeline = timeline_table(att, db)
    finally:
        db.close()

    res = ReportResult(out, out / "index.html", attribution=att)
    tables = {
        "legs": att.legs,
        "attribution": att.attribution,
        "narrative": att.narrative,
        "timeline": timeline,
        "onsets": att.onsets,
    }
    if calibration is not None:
        tables["calibration"] = calibration
    for name, df in tables.items():
        res.tables[name] = _csv(df, out / "tables" / f"{name}.csv")
    specs = []
    for c in chart_list:
        info: dict[str, Any] = {"rows": c.rows, "reason": c.reason, "title": c.title}
        if images:
            say(f"render {c.name}")
            png, svg = out / "charts" / f"{c.name}.png", out / "charts" / f"{c.name}.svg"
            c.chart.save(str(png), scale_factor=1.5)
            c.chart.save(str(svg))
            info.update(png=png, svg=svg)
        res.charts[c.name] = info
        specs.append((c, c.chart.to_dict()))
    res.index.write_text(_page(att, specs, tables, timeline, banner), encoding="utf-8")
    return res


def _page(att: Attribution, specs: list[tuple[charts_mod.ChartOut, dict]], tables: dict[str, pl.DataFrame], timeline: pl.DataFrame,
          banner: str | None = None) -> str:
    verdicts = att.narrative["verdict"].value_counts().sort("verdict") if att.narrative.height else pl.DataFrame()
    vtext = ", ".join(f"{r['count']} {r['verdict']}" for r in verdicts.iter_rows(named=True)) if verdicts.height else "no pairs"
    contradicted = att.narrative.filter(pl.col("verdict") == "contradicted")
    says = "".join(f"<li class='warn'>{html.escape(s)}</li>" for s in contradicted["says"].to_list())
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in att.notes)
    blocks = []
    for i, (c, spec) in enumerate(specs):
        nodata = f"<p class='nodata'>no data: {html.escape(c.reason)}</p>" if c.rows == 0 else ""
        blocks.append(f"<div class='chart'><h2>{html.escape(c.title)}</h2>{nodata}<div id='c{i}'></div></div>")
    embeds = "\n".join(
        f"vegaEmbed('#c{i}', {json.dumps(spec)}, {{actions: false, renderer: 'svg'}}).catch(e => {{document.getElementById('c{i}').textContent = 'chart error: ' + e;}});"
        for i, (_, spec) in enumerate(specs)
    )
    mode = (
        "Shapley attribution over replayed mechanisms (residual shown)"
        if att.mode == "shapley"
        else "EVIDENCE ONLY: no replay scenario was run, so stage shares are co-occurrence scores of each stage's signal, not a decomposition of the move; the residual is the whole move"
    )
    chain = " → ".join(s.title for s in att.chain.stages)
    top = f"<p class='nodata'>{html.escape(banner)}</p>" if banner else ""
    cal = tables.get("calibration")
    cal_html = ""
    if cal is not None:
        n_ok = int(cal["within"].sum()) if cal.height else 0
        cal_html = (f"<h2>Calibration: simulated vs published facts ({n_ok}/{cal.height} within tolerance)</h2>"
                    + _table_html(cal, verdict_col="within"))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>crashlab report {att.start:%Y-%m-%d %H:%M}–{att.end:%H:%M} UTC</title>
<style>{CSS}</style>
<script type="text/javascript">{_js_bundle()}</script>
</head><body>
<h1>crashlab forensic report: {att.start:%Y-%m-%d %H:%M} – {att.end:%Y-%m-%d %H:%M} UTC</h1>
{top}
<p class="note">crashlab {__version__}. Headline instrument: <b>{html.escape(att.instrument)}</b>. Mode: <b>{html.escape(mode)}</b>.
All times UTC. Stages file: {html.escape(att.chain.path)}.</p>
<p>Chain tested: {html.escape(chain)}</p>
<p><b>Narrative test:</b> {html.escape(vtext)} (of {att.narrative.height} ordered pairs).</p>
<ul>{says}</ul>
<p class="note">"supported" means the timing does not refute the arrow; timing alone cannot prove cause.</p>
<ul class="note">{notes}</ul>
{''.join(blocks)}
{cal_html}
<h2>Narrative test (every ordered pair of the chain)</h2>{_table_html(tables['narrative'], verdict_col='verdict')}
<h2>Stage onsets</h2>{_table_html(tables['onsets'])}
<h2>Legs</h2>{_table_html(tables['legs'])}
<h2>Attribution per leg and stage</h2>{_table_html(tables['attribution'])}
<h2>Timeline</h2>{_table_html(timeline)}
<script type="text/javascript">
{embeds}
</script>
</body></html>
"""
