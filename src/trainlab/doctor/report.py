"""report.html: one self-contained page (inline SVG plots, no script, no network) for a diagnosis.

Everything that comes from a run, a log or data (names, samples, prompts, evidence) is escaped; the
page also carries a content security policy that allows no script at all.
"""

from __future__ import annotations

import time

from trainlab.charts import SEVERITY_COLOR, VERDICT_COLOR, chart, esc, page


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
    if f.suggested_changes:
        changes = ", ".join(f"{k} = {v}" for k, v in f.suggested_changes.items())
        parts.append(f"<p><b>Try.</b> <code>{esc(changes)}</code></p>")
    if f.explains:
        parts.append(f"<p><b>Also explains.</b> {esc(', '.join(f.explains))}</p>")
    for ex in (f.data or {}).get("examples", [])[:2]:
        parts.append(f"<pre>prompt: {esc(str(ex.get('prompt', '')))}\noutput: {esc(str(ex.get('output', '')))}</pre>")
    parts.append("</div>")
    return "".join(parts)


def verify_line(v: dict) -> str:
    """One line for `doctor --verify`'s result."""
    if not v.get("ran"):
        return f"verify: not run: {v['reason']}"
    change = " ".join(f"{k}={val}" for k, val in v["overrides"].items())
    budget = ", ".join(f"{val:,} {k}" for k, val in v["budget"].items() if k in ("tokens", "steps"))
    if v["delta"] is None:
        return f"verify: {change} over {v['seeds']} seed(s) x {budget}: every run diverged; not helped"
    interval = f", 95% interval [{v['interval'][0]:+.4f}, {v['interval'][1]:+.4f}]" if v["interval"] else ""
    verdict = "helped" if v["helped"] else ("not shown to help (one seed)" if v["interval"] is None
                                            else "not shown to help (the interval reaches zero or above)")
    return (f"verify: {change} over {v['seeds']} seed(s) x {budget}: val loss {v['baseline_val_loss']:.4f} -> "
            f"{v['fixed_val_loss']:.4f}, delta {v['delta']:+.4f}{interval}: {verdict}")


def _verify_html(v) -> list[str]:
    """`doctor --verify`: the two arms' losses seed by seed, and whether the suggestion helped."""
    parts = ["<h2>Verify</h2>", f"<p>{esc(verify_line(v))}</p>"]
    if v.get("ran"):
        cell = lambda x: "diverged" if x is None else f"{x:.4f}"  # noqa: E731
        parts.append("<table><tr><th>seed</th><th>baseline val loss</th><th>fixed val loss</th></tr>")
        for seed, b, f in zip(v["seed_values"], v["per_seed"]["baseline"], v["per_seed"]["fixed"]):
            parts.append(f"<tr><td>{seed}</td><td>{cell(b)}</td><td>{cell(f)}</td></tr>")
        parts.append(f"</table><p class=\"meta\">runs: {esc(v['runs'])}</p>")
    return parts


def _checks_html(checks) -> list[str]:
    """The checks that ran, and those that could not with the reason."""
    if not checks:
        return []
    ran = [c["id"] for c in checks if c["ran"]]
    rows = "".join(f"<tr><td>{esc(c['id'])}</td><td>{esc(str(c['reason']))}</td></tr>" for c in checks if not c["ran"])
    return ["<h2>Checks</h2>", f"<p>Ran: {esc(', '.join(ran)) or 'none'}.</p>"] + (
        [f"<table><tr><th>not run</th><th>why</th></tr>{rows}</table>"] if rows else [])


def render(diag) -> str:
    s = diag.series
    verdict = diag.verdict
    body = [f"<h1>trainlab doctor: {esc(str(s.path))}</h1>",
            f'<p class="meta">read as {esc(s.source)} | {len(s.train)} train rows, {len(s.val)} validation rows, '
            f'last step {s.last_step} | {esc(time.strftime("%Y-%m-%d %H:%M"))}</p>',
            f'<p><span class="verdict" style="background:{VERDICT_COLOR[verdict]}">{esc(verdict.replace("_", " "))}</span> '
            f"{len(diag.findings)} finding(s)</p>", "<h2>Findings</h2>"]
    unchecked = diag.unchecked
    body += [_finding_html(f) for f in diag.findings] or (
        ["<p>No findings, but not shown healthy: these checks could not run: "
         + esc("; ".join(f"{c['id']} ({c['reason']})" for c in unchecked)) + ".</p>"] if unchecked
        else ["<p>No findings: the run looks healthy.</p>"])
    if diag.verify is not None:
        body += _verify_html(diag.verify)
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
    body += _checks_html(diag.checks)
    for note in diag.notes:
        body.append(f'<p class="meta">note: {esc(note)}</p>')
    return page(f"trainlab doctor: {s.path.name}", body)
