"""Self-contained HTML pages with inline SVG charts, shared by the doctor's and the sweep's reports.

No script and no network: a content security policy forbids both. Every text that comes from a run
(names, evidence, samples) is escaped.
"""

from __future__ import annotations

import html
import math
from typing import Optional, Sequence

import numpy as np

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
    clean = _clean_lines(lines, log_y)
    if not clean:
        return ""
    x0, x1, y0, y1 = _extent(clean, log_y, hline)

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
    out.extend(_polylines(clean, px, py, markers))
    out.append("</svg>")
    return "".join(out)


def _clean_lines(lines: Sequence[tuple], log_y: bool) -> list[tuple]:
    """(label, x, y, color) with non-finite (and, on a log axis, non-positive) points dropped; y in log10 there."""
    clean = []
    for i, (label, x, y, *color) in enumerate(lines):
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        ok = np.isfinite(x) & np.isfinite(y) & ((y > 0) if log_y else True)
        if ok.any():
            clean.append((label, x[ok], np.log10(y[ok]) if log_y else y[ok], color[0] if color else COLORS[i % len(COLORS)]))
    return clean


def _extent(clean: list[tuple], log_y: bool, hline: Optional[tuple[str, float]]) -> tuple[float, float, float, float]:
    """The axes' ranges: every point (and the reference line), with 5% room above and below."""
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
    return x0, x1, y0 - pad, y1 + pad


def _polylines(clean: list[tuple], px, py, markers: bool) -> list[str]:
    out, legend = [], 0
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
    return out


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


def fmt(x: Optional[float], digits: int = 3) -> str:
    """A number for evidence text: 3 decimals, or scientific notation when tiny or huge."""
    if x is None:
        return "n/a"
    if x == 0:
        return "0"
    if abs(x) < 1e-2 or abs(x) >= 1e5:
        return f"{x:.2e}"
    text = f"{x:.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def num(x: Optional[float], spec: str) -> str:
    """`x` formatted by `spec` for a table cell; a metric the run has not (a series run's accuracy) is `-`."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return format(x, spec)
