"""Tabulate tolerance logs (tests/conftest.py, FKP_TOLERANCE_LOG) as Markdown.

    python tests/tolerance_report.py /tmp/tol/native.jsonl /tmp/tol/avx.jsonl ...

Each LOG is one configuration, labelled by its file name without extension. One row per assertion
(``file::function#n``: the n-th assert_allclose call in that function; the line number of the latest
log is shown too), one column per configuration holding the largest fraction of the tolerance used
over all calls of that assertion (1.0 = at the limit, > 1 failed) and, in brackets, the largest
max |actual - desired|. The tolerance column is that of the latest log holding the assertion. Options: ``--only SUBSTRING`` keeps assertions whose id contains it (repeatable);
``--min-used X`` keeps rows where some configuration used at least X; ``--error`` shows instead the
error in the tolerance's own metric (max abs error for an atol check, with PyTorch-style default
rtol 1e-7 ignored; max relative error for an rtol-only check; otherwise the fraction used, marked "u"),
which stays
comparable between logs taken before and after a tolerance was changed; ``--worst`` prints one row per
assertion instead: its current tolerance (latest log), the worst error in that tolerance's metric over all
logs (recomputed per call from its own tolerance, so logs taken with older tolerances count too) and the
log it came from.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def load(path: Path) -> dict:
    """{assertion id: {"used", "max_abs", "rtol", "atol", "where", "calls"}} of one log."""
    out: dict = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        key = r.get("id") or r["where"]
        row = out.setdefault(key, {"used": None, "max_abs": None, "tols": set(), "where": r["where"], "calls": 0,
                                   "metric": None})
        row["calls"] += 1
        m = metric(r)
        if m and (row["metric"] is None or m[0] > row["metric"][0]):
            row["metric"] = m
        row["where"] = r["where"]
        row["tols"].add((r["rtol"], r["atol"]))
        for k in ("used", "max_abs"):
            if r[k] is not None and (row[k] is None or r[k] > row[k] or math.isnan(row[k])):
                row[k] = r[k]
    return out


def fmt(x) -> str:
    if x is None:
        return "-"
    if x == 0:
        return "0"
    if math.isinf(x):
        return "inf"
    return f"{x:.2g}" if abs(x) >= 0.01 else f"{x:.1e}"


def tols(ts: set) -> str:
    if len(ts) > 2:
        return "varies"
    return "; ".join(f"rtol {fmt(r)}, atol {fmt(a)}" for r, a in sorted(ts))


def error(row) -> str:
    """The error in the tolerance's metric (see --error)."""
    if row["metric"] is None:
        return "-"
    value, unit = row["metric"]
    return fmt(value) + {"abs": "", "rel": " rel", "used": " u"}[unit]


def report(paths: list[Path], only: list[str] | None = None, min_used: float | None = None,
           as_error: bool = False) -> str:
    logs = [(p.name.rsplit(".", 1)[0], load(p)) for p in paths]
    keys: list[str] = []
    for _, log in logs:
        keys += [k for k in log if k not in keys]
    if only:
        keys = [k for k in keys if any(s in k for s in only)]
    lines = ["| assertion | line | tolerance | " + " | ".join(label for label, _ in logs)
             + (" | worst |" if as_error else " | worst used |"),
             "| --- | --- | --- | " + " | ".join("---:" for _ in logs) + " | ---: |"]
    for key in keys:
        rows = [log.get(key) for _, log in logs]
        present = [r for r in rows if r]
        used = [r["used"] for r in present if r["used"] is not None]
        worst = max(used) if used else None
        if min_used is not None and (worst is None or worst < min_used):
            continue
        if as_error:
            cells = ["-" if r is None else error(r) for r in rows]
        else:
            cells = ["-" if r is None else f"{fmt(r['used'])} ({fmt(r['max_abs'])})" for r in rows]
        ts = present[-1]["tols"]  # the tolerance of the latest log that has this assertion
        flag = " **FAIL**" if worst is not None and worst > 1 else ""
        last = f"{fmt(worst)}{flag}"
        if as_error:
            metrics = [r["metric"] for r in present if r["metric"]]
            last = error({"metric": max(metrics)}) if metrics else "-"
        lines.append(f"| `{key}` | {present[-1]['where'].rsplit(':', 1)[1]} | {tols(ts)} | " + " | ".join(cells)
                     + f" | {last} |")
    return "\n".join(lines)


def metric(record) -> tuple[float, str] | None:
    """(error, unit) of one call in its tolerance's metric: abs for atol checks (default rtol 1e-7 ignored),
    rel for rtol-only checks, else the fraction of the tolerance used."""
    if record["used"] is None:
        return None
    rtol, atol = record["rtol"], record["atol"]
    if atol > 0 and rtol in (0, 1e-7):
        return record["max_abs"] if rtol else record["used"] * atol, "abs"
    if atol == 0 and rtol > 0:
        return record["used"] * rtol, "rel"
    return record["used"], "used"


def worst(paths: list[Path], only: list[str] | None = None) -> str:
    best: dict = {}
    latest: dict = {}
    for path in paths:
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            r = json.loads(line)
            key = r.get("id") or r["where"]
            latest[key] = r
            m = metric(r)
            if m and (key not in best or m[0] > best[key][0]):
                best[key] = (m[0], m[1], path.name.rsplit(".", 1)[0])
    lines = ["| assertion | tolerance now | worst error | unit | where measured |", "| --- | --- | ---: | --- | --- |"]
    for key, r in latest.items():
        if only and not any(s in key for s in only):
            continue
        b = best.get(key)
        cells = [fmt(b[0]), b[1], b[2]] if b else ["-", "-", "-"]
        lines.append(f"| `{key}` | rtol {fmt(r['rtol'])}, atol {fmt(r['atol'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", nargs="+", type=Path)
    parser.add_argument("--only", action="append")
    parser.add_argument("--min-used", type=float)
    parser.add_argument("--error", action="store_true")
    parser.add_argument("--worst", action="store_true")
    args = parser.parse_args(argv)
    if args.worst:
        print(worst(args.logs, args.only))
        return 0
    if args.error:
        print("Cells: largest error in the tolerance's metric (abs for atol-only checks, rel for rtol-only "
              "checks, else the fraction of the tolerance used, u).\n")
    else:
        print("Cells: largest fraction of the tolerance used (1 = at the limit), in brackets the largest "
              "max |actual - desired|.\n")
    print(report(args.logs, args.only, args.min_used, args.error))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
