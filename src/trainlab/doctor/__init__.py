"""trainlab doctor: a run's metrics (ours or another tool's) turned into findings with evidence."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from trainlab.doctor.causes import explain
from trainlab.doctor.checks import run_checks
from trainlab.doctor.detectors import Finding, rank, verdict
from trainlab.doctor.readers import read
from trainlab.doctor.series import RunSeries
from trainlab.doctor.vocabulary import localize
from trainlab.errors import TrainlabError
from trainlab.files import atomic_write


# what a run must have been checked for before "healthy" means it: the lr both ways, and what the validation
# loss shows (with --json, `checks` says which ran; the verdict stays one of the three the contract names)
HEALTH_CHECKS = ("lr_too_high", "lr_too_low", "overfitting", "undertrained")


@dataclass
class Diagnosis:
    series: RunSeries
    findings: list[Finding]
    probe: Optional[dict[str, Any]] = None
    data_check: Optional[dict[str, Any]] = None
    notes: list[str] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)  # {"id", "ran", "reason"} for each detector
    estimate_check: Optional[dict[str, Any]] = None  # a fresh estimate against the run's measured speed and memory
    verify: Optional[dict[str, Any]] = None  # `doctor --verify`'s result, attached by the command line

    @property
    def verdict(self) -> str:
        return verdict(self.findings)

    @property
    def unchecked(self) -> list[dict[str, Any]]:
        """The checks a healthy verdict rests on (HEALTH_CHECKS) that could not run, with why: without them, no
        finding is not the same as healthy."""
        return [c for c in self.checks if c["id"] in HEALTH_CHECKS and not c["ran"]]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"verdict": self.verdict, "findings": [f.to_json() for f in self.findings],
                               "source": self.series.source, "path": str(self.series.path)}
        if self.probe is not None:
            out["probe"] = {k: v for k, v in self.probe.items() if k != "examples"} | {
                "examples": self.probe.get("examples", [])[:3]}
        if self.data_check is not None:
            out["data_check"] = self.data_check
        if self.notes:
            out["notes"] = self.notes
        if self.checks:
            out["checks"] = self.checks
        if self.verdict == "healthy" and self.unchecked:  # no finding, but not shown healthy: say so where scripts look
            out["unchecked"] = [c["id"] for c in self.unchecked]
        if self.estimate_check is not None:
            out["estimate_check"] = self.estimate_check
        if self.verify is not None:
            out["verify"] = self.verify
        return out


def diagnose(path: Path, probe: bool = False, check_data: bool = True, fmt: Optional[str] = None) -> Diagnosis:
    """`fmt` forces a reader (one of readers.FORMATS); by default the path's contents pick it."""
    return diagnose_series(read(Path(path), fmt), probe, check_data)


def diagnose_series(series: RunSeries, probe: bool = False, check_data: bool = True) -> Diagnosis:
    findings, checks = run_checks(series)
    diag = Diagnosis(series, findings, notes=list(series.notes), checks=checks)
    if series.source == "trainlab":
        _task_findings(diag, probe, check_data)
    elif probe:
        diag.notes.append("--probe needs a trainlab run directory (it generates from the model); skipped")
    diag.findings = rank(explain(diag.findings, series))
    localize(diag.findings, series)
    return diag


def _task_findings(diag: Diagnosis, probe: bool, check_data: bool) -> None:
    """The checks the run's task allows beyond its metrics (`Task.doctor_checks`): its text corpus, a
    generation probe, repetition in its samples. A run whose config is unreadable gets the defaults'."""
    from trainlab.doctor import repetition
    from trainlab.tasks import DEFAULT_TASK, task_class

    cfg = diag.series.fact("config")
    task = task_class(cfg.task if cfg is not None else DEFAULT_TASK)
    if check_data and "data" in task.doctor_checks:  # the other tasks check their own input as they read it
        _data_findings(diag)
    found = None
    if probe and "probe" not in task.doctor_checks:
        diag.notes.append(f"--probe generates continuations of a causal LM; this run's task is {task.name}: skipped")
    elif probe:
        diag.probe = repetition.probe_run(diag.series.path)
        found = repetition.finding(diag.probe)
    elif "samples" in task.doctor_checks:
        found = repetition.finding_from_samples(diag.series.samples)
    if found:
        diag.findings.append(found)
    run_findings = getattr(task, "doctor_findings", None)  # the task's own checks of its run directory
    if run_findings is not None:
        extra, checks = run_findings(diag.series.path)
        diag.findings.extend(extra)
        diag.checks.extend(checks)
        diag.notes.extend(f"{c['id']} not checked: {c['reason']}" for c in checks if not c["ran"])


def _data_findings(diag: Diagnosis) -> None:
    """Run the data check when the run's data is at hand (a bundled corpus or a path that still exists)."""
    from trainlab.data.check import check_config, findings_from_check

    cfg = diag.series.fact("config")
    if cfg is None:
        return
    try:
        report = check_config(cfg.data, fetch=False)
    except TrainlabError as err:
        diag.notes.append(f"data check skipped: {err}")
        return
    if report is None:
        diag.notes.append(f"data check skipped: '{cfg.data.source}' is not at hand")
        return
    diag.data_check = report
    diag.findings.extend(findings_from_check(report))


def out_dir_for(series: RunSeries, out: Optional[Path]) -> Path:
    if out is not None:
        return Path(out)
    if series.source == "trainlab":
        return series.path
    base = series.path if series.path.is_dir() else series.path.parent
    return base / "doctor"


def write_outputs(diag: Diagnosis, out: Path) -> tuple[Path, Path]:
    """diagnosis.json and report.html, each written to a temporary file and renamed into place."""
    from trainlab.doctor.report import render

    texts = {"diagnosis.json": json.dumps(diag.to_json(), indent=1), "report.html": render(diag)}
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in texts.items():
            atomic_write(out / name, text)
    except OSError as err:  # a file where the folder goes, a folder one may not write to, a full disk
        raise TrainlabError(f"cannot write diagnosis.json and report.html to '{out}' ({err.strerror or err}); "
                            f"give --out DIR") from None
    return out / "diagnosis.json", out / "report.html"


def summary(diag: Diagnosis) -> str:
    unchecked = diag.unchecked if diag.verdict == "healthy" else []
    said = "no finding, but not shown healthy" if unchecked else diag.verdict.replace("_", " ")
    lines = [f"{diag.series.path}: {said} "
             f"({len(diag.findings)} finding{'s' if len(diag.findings) != 1 else ''}, read as {diag.series.source})"]
    if unchecked:
        lines.append("  not checked: " + "; ".join(f"{c['id']} ({c['reason']})" for c in unchecked))
    for f in diag.findings:
        lines.append(f"  [{f.severity}] {f.id}: {f.evidence}")
        lines.append(f"      -> {f.recommendation}")
        if f.suggested_overrides:
            lines.append("      -> " + " ".join(f"--set {k}={v}" for k, v in f.suggested_overrides.items()))
        if f.suggested_changes:
            lines.append("      -> " + ", ".join(f"{k} = {v}" for k, v in f.suggested_changes.items()))
        if f.explains:
            lines.append("      (explains " + ", ".join(f.explains) + ")")
    for note in diag.notes:
        lines.append(f"  note: {note}")
    skipped = [c["id"] for c in diag.checks if not c["ran"]]
    if diag.checks:
        lines.append(f"  checks: {len(diag.checks) - len(skipped)} ran" + (
            f"; not run: {', '.join(skipped)} (why: report.html or --json)" if skipped else ""))
    if diag.verify is not None:
        from trainlab.doctor.report import verify_line

        lines.append(verify_line(diag.verify))
    return "\n".join(lines)

