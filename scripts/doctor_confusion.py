"""Print the doctor's confusion table over the committed golden and foreign-log fixtures:
the induced pathology of each run against the doctor's top finding (and its severity).

    .venv/bin/python scripts/doctor_confusion.py
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from trainlab.doctor import diagnose

FIX = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "doctor"
FILES = {"hf": "trainer_state.json", "lightning": "metrics.csv", "tensorboard": ""}


def cases():
    for run in sorted((FIX / "golden").iterdir()):
        yield "trainlab", run.name, run
    for tool, name in FILES.items():
        for run in sorted((FIX / "foreign" / tool).iterdir()):
            yield tool, run.name, run / name if name else run


def main() -> None:
    table: Counter = Counter()
    print(f"{'source':12s} {'induced':24s} {'top finding':24s} {'severity':8s} others")
    for tool, induced, path in cases():
        diag = diagnose(path, check_data=False)
        top = diag.findings[0] if diag.findings else None
        # a healthy run is right when nothing is high
        got = top.id if top and (top.severity == "high" or induced != "healthy") else "healthy"
        table[(induced, got)] += 1
        others = ", ".join(f"{f.id}({f.severity[0]})" for f in diag.findings[1:])
        print(f"{tool:12s} {induced:24s} {top.id if top else '-':24s} {top.severity if top else '-':8s} {others}")
    labels = sorted({k[0] for k in table} | {k[1] for k in table})
    print("\nconfusion (rows: induced, columns: diagnosed; 'healthy' = no high-severity finding)")
    print(" " * 24 + " ".join(f"{lab[:10]:>10s}" for lab in labels))
    for a in labels:
        if any(k[0] == a for k in table):
            print(f"{a:24s}" + " ".join(f"{table[(a, b)]:>10d}" for b in labels))


if __name__ == "__main__":
    main()
