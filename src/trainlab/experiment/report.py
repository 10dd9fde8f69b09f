"""report.html for a sweep: curves overlaid, final metrics with intervals, efficiency, convergence."""

from __future__ import annotations

import html
from typing import Any

from trainlab.charts import COLORS, bars, chart, num, page

esc = html.escape


def sweep_report(s: dict[str, Any]) -> str:
    variants = [v for v in s["variants"] if v["n"]]
    order = sorted(variants, key=lambda v: v["val_loss"]["mean"])
    color = {v["variant"]: COLORS[i % len(COLORS)] for i, v in enumerate(s["variants"])}
    by_tokens, by_time, labelled = [], [], set()
    for run in s["runs"]:
        if run.get("failed"):
            continue
        name = run["variant"]
        label = "" if name in labelled else name  # one legend entry a variant (its seed 0 may be missing)
        labelled.add(name)
        curve = run["curve"]
        by_tokens.append((label, [c[1] for c in curve], [c[3] for c in curve], color[name]))
        by_time.append((label, [c[2] for c in curve], [c[3] for c in curve], color[name]))
    (kind, amount), = s["budget"].items()
    body = [f"<h1>trainlab ablate: {esc(s['sweep'])}</h1>",
            f'<p class="meta">{len(s["variants"])} variants x {s["seeds"]} seeds; budget {amount:,} {esc(kind)} per run; '
            f'baseline {esc(s["baseline"])}</p>', "<h2>Results</h2>", "<table><tr><th>variant</th><th>val loss</th>"
            "<th>95% interval</th><th>Δ vs baseline</th><th>p (Welch)</th><th>acc</th><th>top-5</th><th>tokens</th>"
            "<th>tokens/s</th><th>doctor</th></tr>"]
    for v in order:
        d, vs = v["val_loss"], v.get("vs_baseline")
        p = "" if not vs else ("n/a" if vs["p"] is None else f"{vs['p']:.3g}")
        body.append(f"<tr><td>{esc(v['variant'])}</td><td>{d['mean']:.4f} ± {d['std']:.4f}</td>"
                    f"<td>[{d['lo']:.4f}, {d['hi']:.4f}]</td><td>{'baseline' if not vs else format(vs['diff'], '+.4f')}</td>"
                    f"<td>{p}</td><td>{num(v.get('acc'), '.3f')}</td><td>{num(v.get('top5'), '.3f')}</td>"
                    f"<td>{num(v.get('tokens'), ',.0f')}</td><td>{num(v.get('tokens_per_s'), ',.0f')}</td>"
                    f"<td>{esc(v['doctor'])}</td></tr>")
    body.append("</table>")
    if s.get("missing"):  # a report gathered while shards are still running (or some failed)
        body.append(f"<h2>Missing runs ({len(s['missing'])})</h2><p>Not finished, or failed (see each train.log): "
                    + ", ".join(f"{esc(m['variant'])} seed {m['seed']}" for m in s["missing"]) + ".</p>")
    body += ['<h2>Curves</h2><div class="plots">',
             chart("validation loss by tokens seen (each seed)", by_tokens, xlabel="tokens"),
             chart("convergence: validation loss by wall-clock seconds", by_time, xlabel="seconds"),
             bars("final validation loss (mean, 95% interval)", [v["variant"] for v in order],
                  [v["val_loss"]["mean"] for v in order], [v["val_loss"]["lo"] for v in order],
                  [v["val_loss"]["hi"] for v in order], from_zero=False),
             bars("efficiency: training tokens per second", [v["variant"] for v in order],
                  [v.get("tokens_per_s") or 0.0 for v in order]),
             "</div>"]
    return page(f"trainlab ablate: {s['sweep']}", body)
