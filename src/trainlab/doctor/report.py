"""report.html: one self-contained page (inline SVG plots, no script, no network) for a diagnosis.

Everything that comes from a run, a log or data (names, samples, prompts, evidence) is escaped; the
page also carries a content security policy that allows no script at all.
"""

from __future__ import annotations

import html
import math
import time
from typing import Optional, Sequence

import numpy as np

from trainlab.doctor.series import fmt

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
SEVERITY_COLOR = {"high": "#c0392b", "medium": "#d68910", "low": "#2874a6"}
VERDICT_COLOR = {"healthy": "#1e8449", "needs_attention": "#d68910", "failing": "#c0392b"}
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 560, 220, 58, 12, 26, 34

esc = html.escape


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def chart(title: str, lines: Sequence[tuple], log_y: bool = False, hline: Optional[tuple[str, float]] = None,
          markers: bool = False, xlabel: str = "step") -> str:
    """An SVG line chart. lines: (label, x, y) or (label, x, y, color); an empty label stays out of the
    legend; non-finite and (on a log axis) non-positive points are dropped."""
    clean = []
    for i, (label, x, y, *color) in enumerate(lines):
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        ok = np.isfinite(x) & np.isfinite(y) & ((y > 0) if log_y else True)
        if ok.any():
            clean.append((label, x[ok], np.log10(y[ok]) if log_y else y[ok], color[0] if color else COLORS[i % len(COLORS)]))
    if not clean:
        return ""
    xs = np.concatenate([c[1] for c in clean])
    ys = np.concatenate([c[2] for c in clean])
    if hline is not None and (hline[1] > 0 or not log_y):
        ys = np.append(ys, math.log10(hline[1]) if log_y else hline[1])
    x0, x1 = float(xs.min()), float(xs.max())
    y0, y1 = float(np.quantile(ys, 0.0)), float(ys.max())
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad

    def px(x):
        return PAD_L + (x - x0) / (x1 - x0) * (W - PAD_L - PAD_R)

    def py(y):
        return PAD_T + (1 - (y - y0) / (y1 - y0)) * (H - PAD_T - PAD_B)

    out = [f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           f'role="img" aria-label="{esc(title)}">',
           f'<text x="{PAD_L}" y="16" class="ptitle">{esc(title)}</text>',
           f'<rect x="{PAD_L}" y="{PAD_T}" width="{W - PAD_L - PAD_R}" height="{H - PAD_T - PAD_B}" class="frame"/>']
    for t in _ticks(y0, y1):
        label = fmt(10 ** t, 2) if log_y else fmt(t, 3)
        out.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{py(t):.1f}" y2="{py(t):.1f}" class="grid"/>'
                   f'<text x="{PAD_L - 4}" y="{py(t) + 4:.1f}" class="tick" text-anchor="end">{esc(label)}</text>')
    for t in _ticks(x0, x1):
        out.append(f'<text x="{px(t):.1f}" y="{H - PAD_B + 14}" class="tick" text-anchor="middle">{esc(fmt(t, 0))}</text>')
    out.append(f'<text x="{W - PAD_R}" y="{H - 4}" class="tick" text-anchor="end">{esc(xlabel)}</text>')
    if hline is not None:
        hy = py(math.log10(hline[1]) if log_y else hline[1])
        out.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{hy:.1f}" y2="{hy:.1f}" class="hline"/>'
                   f'<text x="{W - PAD_R - 4}" y="{hy - 3:.1f}" class="tick" text-anchor="end">{esc(hline[0])}</text>')
    legend = 0
    for label, x, y, color in clean:
        if len(x) > 1500:  # keep the page small
            keep = np.linspace(0, len(x) - 1, 1500).astype(int)
            x, y = x[keep], y[keep]
        pts = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(x, y))
        out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.5" class="series"/>')
        if markers or len(x) == 1:
            out.extend(f'<circle cx="{px(a):.1f}" cy="{py(b):.1f}" r="2.5" fill="{color}"/>' for a, b in zip(x, y))
        if label:
            out.append(f'<text x="{PAD_L + 8 + 110 * (legend % 4)}" y="{PAD_T + 14 + 13 * (legend // 4)}" '
                       f'class="legend" fill="{color}">{esc(label)}</text>')
            legend += 1
    out.append("</svg>")
    return "".join(out)


def bars(title: str, names: Sequence[str], values: Sequence[float], lo: Optional[Sequence[float]] = None,
         hi: Optional[Sequence[float]] = None, unit: str = "", from_zero: bool = True) -> str:
    """A horizontal SVG bar chart, with interval whiskers when lo and hi are given; from_zero=False starts
    the axis just below the smallest value, so that close values (losses) can be told apart."""
    if not names:
        return ""
    row, left, width = 22, 170, W - 170 - 60
    height = PAD_T + row * len(names) + 10
    top = max(list(values) + list(hi or []))
    low = min(list(values) + list(lo or []))
    bottom = min(0.0, low) if from_zero else low - 0.15 * (top - low if top > low else abs(low) or 1.0)
    scale = width / (top - bottom if top > bottom else 1.0)
    out = [f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" '
           f'viewBox="0 0 {W} {height}" role="img" aria-label="{esc(title)}">',
           f'<text x="8" y="16" class="ptitle">{esc(title)}</text>']
    for i, (name, v) in enumerate(zip(names, values)):
        y = PAD_T + i * row
        out.append(f'<text x="{left - 6}" y="{y + 14}" class="tick" text-anchor="end">{esc(str(name))[:28]}</text>'
                   f'<rect x="{left}" y="{y + 3}" width="{max(1.0, (v - bottom) * scale):.1f}" height="{row - 8}" '
                   f'fill="{COLORS[i % len(COLORS)]}" opacity="0.75"/>')
        if lo is not None and hi is not None:
            a, b = left + (lo[i] - bottom) * scale, left + (hi[i] - bottom) * scale
            out.append(f'<line x1="{a:.1f}" x2="{b:.1f}" y1="{y + row / 2:.1f}" y2="{y + row / 2:.1f}" stroke="#222"/>'
                       f'<line x1="{a:.1f}" x2="{a:.1f}" y1="{y + 5}" y2="{y + row - 5}" stroke="#222"/>'
                       f'<line x1="{b:.1f}" x2="{b:.1f}" y1="{y + 5}" y2="{y + row - 5}" stroke="#222"/>')
        out.append(f'<text x="{left + (max(v, (hi or values)[i]) - bottom) * scale + 4:.1f}" y="{y + 14}" '
                   f'class="tick">{esc(fmt(v, 4) if abs(v) < 100 else f"{v:,.0f}")}{esc(unit)}</text>')
    out.append("</svg>")
    return "".join(out)


def page(title: str, body: list[str]) -> str:
    """A self-contained page: inline style, and a policy that allows no script and no network."""
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
            "img-src data:\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>" + "\n".join(body) + "</body></html>\n")


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;color:#222;padding:0 16px}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#666}.verdict{display:inline-block;color:#fff;border-radius:4px;padding:2px 10px;font-weight:600}
.finding{border-left:5px solid #999;background:#fafafa;margin:10px 0;padding:8px 12px}
.finding h3{margin:0 0 4px;font-size:15px}.sev{color:#fff;border-radius:3px;padding:0 6px;font-size:12px;margin-right:6px}
.finding p{margin:4px 0}code,pre{background:#f2f2f2;border-radius:3px;font:12.5px ui-monospace,Menlo,monospace}
code{padding:1px 4px}pre{padding:8px;white-space:pre-wrap;word-break:break-word;max-height:360px;overflow:auto}
.plots{display:flex;flex-wrap:wrap;gap:10px}.plot{border:1px solid #eee;background:#fff}
.ptitle{font-size:13px;font-weight:600;fill:#333}.tick{font-size:10px;fill:#666}.legend{font-size:11px;font-weight:600}
.frame{fill:none;stroke:#ccc}.grid{stroke:#eee}.hline{stroke:#999;stroke-dasharray:4 3}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
"""


def _plots(diag) -> list[str]:
    s = diag.series
    out = []
    tl, vl = s.col("loss"), s.col("loss", "val")
    out.append(chart("loss (nats per token)", [("train", *tl), ("val", *vl)]))
    if s.has("lr"):
        out.append(chart("learning rate", [("lr", *s.col("lr"))]))
    if s.has("grad_norm"):
        clip = s.fact("grad_clip")
        out.append(chart("gradient norm (before clipping)", [("grad norm", *s.col("grad_norm"))], log_y=True,
                         hline=(f"clip {clip}", clip) if clip else None))
    if s.has("update_ratio"):
        out.append(chart("update / weight ratio per step", [("ratio", *s.col("update_ratio"))], log_y=True))
    if s.has("tokens_per_s"):
        out.append(chart("throughput (tokens/s)", [("tokens/s", *s.col("tokens_per_s"))]))
    if s.has("acc", "val") and s.has("confidence", "val"):
        out.append(chart("calibration on validation", [("accuracy", *s.col("acc", "val")),
                                                        ("confidence", *s.col("confidence", "val")),
                                                        ("ECE", *s.col("ece", "val"))], markers=True))
    elif s.has("acc", "val"):
        out.append(chart("validation accuracy", [("accuracy", *s.col("acc", "val"))], markers=True))
    return [p for p in out if p]


def _finding_html(f) -> str:
    color = SEVERITY_COLOR[f.severity]
    parts = [f'<div class="finding" id="finding-{esc(f.id)}" style="border-color:{color}">',
             f'<h3><span class="sev" style="background:{color}">{esc(f.severity)}</span>{esc(f.id)}</h3>',
             f"<p><b>Evidence.</b> {esc(f.evidence)}</p>", f"<p><b>What to do.</b> {esc(f.recommendation)}</p>"]
    if f.suggested_overrides:
        sets = " ".join(f"--set {k}={v}" for k, v in f.suggested_overrides.items())
        parts.append(f"<p><b>Try.</b> <code>{esc(sets)}</code></p>")
    for ex in (f.data or {}).get("examples", [])[:2]:
        parts.append(f"<pre>prompt: {esc(str(ex.get('prompt', '')))}\noutput: {esc(str(ex.get('output', '')))}</pre>")
    parts.append("</div>")
    return "".join(parts)


def render(diag) -> str:
    s = diag.series
    verdict = diag.verdict
    body = [f"<h1>trainlab doctor: {esc(str(s.path))}</h1>",
            f'<p class="meta">read as {esc(s.source)} | {len(s.train)} train rows, {len(s.val)} validation rows, '
            f'last step {s.last_step} | {esc(time.strftime("%Y-%m-%d %H:%M"))}</p>',
            f'<p><span class="verdict" style="background:{VERDICT_COLOR[verdict]}">{esc(verdict.replace("_", " "))}</span> '
            f"{len(diag.findings)} finding(s)</p>", "<h2>Findings</h2>"]
    body += [_finding_html(f) for f in diag.findings] or ["<p>No findings: the run looks healthy.</p>"]
    body += ["<h2>Curves</h2>", '<div class="plots">', *_plots(diag), "</div>"]
    if diag.probe:
        body.append("<h2>Generation probe</h2><table><tr><th>setting</th><th>repeated trigrams</th>"
                    "<th>copied from prompt</th><th>distinct-2</th><th>longest run</th></tr>")
        for name in ("plain", "penalised"):
            p = diag.probe[name]
            body.append(f"<tr><td>{esc(name)}</td><td>{p['repeated']:.1%}</td><td>{p['copied']:.1%}</td>"
                        f"<td>{p['distinct_2']:.2f}</td><td>{p['longest_run']:.0f}</td></tr>")
        body.append("</table>")
        for ex in diag.probe.get("examples", [])[:3]:
            body.append(f"<pre>prompt: {esc(ex['prompt'])}\noutput: {esc(ex['output'])}</pre>")
    if diag.data_check:
        from trainlab.data.check import format_report

        body.append(f"<h2>Data check</h2><pre>{esc(format_report(diag.data_check))}</pre>")
    if s.samples:
        last = max(x.get("step", 0) for x in s.samples)
        body.append(f"<h2>Samples at step {last}</h2>")
        for x in [x for x in s.samples if x.get("step", 0) == last][:3]:
            body.append(f"<pre>{esc(str(x.get('prompt', '')))}<b>{esc(str(x.get('text', '')))}</b></pre>")
    cfg = s.fact("config")
    if cfg is not None:
        body.append(f"<h2>Config</h2><pre>{esc(cfg.to_yaml())}</pre>")
    for note in diag.notes:
        body.append(f'<p class="meta">note: {esc(note)}</p>')
    return page(f"trainlab doctor: {s.path.name}", body)
