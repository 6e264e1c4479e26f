"""`harness status`: how far the sweeps recorded in a store have come.

Each sweep writes its plan (the ids of its cells) under sweeps/ when it starts; a cell is done when its result
files are complete and intact (harness/results/store.py), running while a live process holds its lease, and
remaining otherwise (a damaged cell is remaining: the next sweep runs it again). The ETA assumes the mean
duration of the sweep's finished cells and as many cells at once as are running now. A sweep record that cannot
be read is named in a warning and left out (the next `harness run` of that sweep writes it anew).
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from harness.analysis.labels import duration_text
from harness.errors import warn
from harness.results.store import ResultStore, read_plan


def sweep_progress(out: Path, suite: str | None = None, now: float | None = None) -> list[dict]:
    """One dict per recorded sweep: counts of done/ok/failed/running/remaining cells and the ETA in seconds."""
    store = ResultStore(out)
    now = time.time() if now is None else now
    running = store.running()
    done = store.done()
    progress = []
    for path in sorted((Path(out) / "sweeps").glob("*.json"), key=lambda p: p.stat().st_mtime):
        plan = read_plan(path)
        if plan is None:
            warn(
                f"unreadable sweep record {path} left out; the next `harness run` of its sweep writes it anew"
            )
            continue
        if suite and suite not in plan["suites"]:
            continue
        ids = list(plan["cells"])
        statuses, walls = {}, []
        for cell_id in ids:
            if cell_id in done:
                first = store.rows(cell_id)[0]
                statuses[cell_id] = first["status"]
                if first.get("wall_s") is not None:
                    walls.append(float(first["wall_s"]))
        busy = [running[cell_id] for cell_id in ids if cell_id in running and cell_id not in done]
        remaining = len(ids) - len(statuses) - len(busy)
        eta = None
        if walls and (busy or remaining):
            mean = sum(walls) / len(walls)
            left = sum(max(0.0, mean - (now - record.get("started", now))) for record in busy)
            eta = (left + remaining * mean) / max(1, len(busy))
        progress.append(
            dict(
                sweep=plan["id"],
                suites=",".join(plan["suites"]),
                models=",".join(plan["models"]),
                cells=len(ids),
                done=len(statuses),
                ok=sum(s == "ok" for s in statuses.values()),
                diverged=sum(s == "diverged" for s in statuses.values()),
                oom=sum(s == "oom" for s in statuses.values()),
                failed=sum(s == "failed" for s in statuses.values()),
                running=len(busy),
                remaining=remaining,
                eta_s=eta,
                running_cells=[
                    dict(
                        label=r.get("label", "?"),
                        host=r.get("host"),
                        pid=r.get("pid"),
                        since=r.get("started"),
                    )
                    for r in busy
                ],
            )
        )
    return progress


def status_table(out: Path, suite: str | None = None) -> str:
    progress = sweep_progress(out, suite)
    if not progress:
        return f"no sweeps recorded in {out}/sweeps/" + (f" for suite {suite}" if suite else "")
    now = time.time()
    table = pd.DataFrame(progress).drop(columns=["running_cells", "eta_s"])
    table["eta"] = [_eta(sweep) for sweep in progress]
    text = table.to_markdown(index=False)
    lines = [
        f"  {cell['label']}  ({cell['host']} pid {cell['pid']}, {duration_text(now - cell['since'])} so far)"
        for sweep in progress
        for cell in sweep["running_cells"]
        if cell["since"] is not None
    ]
    return text + ("\n\nrunning:\n" + "\n".join(lines) if lines else "")


def _eta(sweep: dict) -> str:
    if not sweep["running"] and not sweep["remaining"]:
        return "-"
    if sweep["eta_s"] is None:
        return "?"  # no finished cell to time yet
    return duration_text(sweep["eta_s"]) + ("" if sweep["running"] else " (not running)")
