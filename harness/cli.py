"""The `harness` command line: run, status, report, size, list.

    harness run --models kda,gdn,mamba2,mla --suite smoke [--save-checkpoints] [--tensorboard] [--wandb]
    harness run --grid grid.toml --launcher pool --cells-per-gpu 4
    harness run --suite kimi --scale paper --models kda,mla --dry-run --estimate-for "NVIDIA H200"
    harness status --out runs
    harness report --out runs
    harness compare-stores runs/one-gpu runs/two-gpus --tolerance 0.01
    harness size --models kda,gdn,mla --params 1M --tolerance 0.05
    harness list
    harness bench kernels --out results/kernels-h100
    harness bench models --models mla,kimi,kda --contexts 4K,32K,128K --batched 16x32K --out results/bench
    harness bench steps --suite kimi --scale small --models kda,gdn --budget-s 180  (step times for --dry-run)
    harness eval --checkpoint runs/checkpoints/<cell id> --tasks harness_mqar     (lm-eval, in process)
    harness export-tasks --suite recall --out lm_eval_tasks                       (synthetic tasks for lm-eval)

Errors in what the user typed (unknown names, malformed --set, impossible settings) and files that cannot be read
or written print one line and exit 2 (`main` is the one boundary); nothing is written to the results store in that
case. `harness run` exits 1 when a cell of the sweep failed or did not finish.

The commands import what they need when they run (torch, transformers, lm-eval take seconds to import), so that
`harness --help` and `harness status` answer at once: the function-local imports below are that, and nothing else.
"""

from __future__ import annotations

import inspect
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from harness.errors import HarnessError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Compare sequence-mixer architectures on synthetic probes; write tidy result tables.",
)

OutOption = Annotated[Path, typer.Option("--out", help="Results store directory.")]


_plugins: list[str] = []


@app.callback()
def _options(
    plugin: Annotated[
        list[str] | None,
        typer.Option(
            "--plugin", help="Import this module first (it registers mixers, tasks or suites); repeatable."
        ),
    ] = None,
) -> None:
    _plugins[:] = plugin or []


def _load_plugins() -> None:
    # the built-in packages, entry points and --plugin modules; imports torch, so only commands that need it
    from harness.plugins import load_plugins

    load_plugins(_plugins)


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


@app.command()
def run(
    models: Annotated[
        str | None, typer.Option("--models", "-m", help="Comma-separated models, e.g. kda,gdn,mla,kimi.")
    ] = None,
    suite: Annotated[str | None, typer.Option("--suite", "-s", help="Suite to run, e.g. smoke.")] = None,
    scale: Annotated[
        str | None, typer.Option(help="Suite scale (tiny, small, ...); default: the suite's first.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a setting: train.lr=3e-4, model.kda.num_heads=4."),
    ] = None,
    lrs: Annotated[
        str | None, typer.Option(help="Comma-separated learning rates, e.g. 1e-3,3e-3; default: the suite's.")
    ] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds; default: the suite's.")] = None,
    grid: Annotated[
        Path | None, typer.Option(help="TOML file with models, suite, scale, lrs, seeds, set, params.")
    ] = None,
    params: Annotated[
        str | None, typer.Option(help="Resize every model to this many parameters (e.g. 1M); see `size`.")
    ] = None,
    tolerance: Annotated[float | None, typer.Option(help="Tolerance of --params (default 0.05).")] = None,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu, cuda or cuda:N (shortcut for --set train.device=).")
    ] = None,
    launcher: Annotated[
        str,
        typer.Option(
            help="inprocess, pool (worker processes), streams (threads and CUDA streams of one process, one GPU) or ray."
        ),
    ] = "inprocess",
    cells_per_gpu: Annotated[int, typer.Option(help="pool/ray: cells run at once per GPU.")] = 1,
    workers: Annotated[
        int | None,
        typer.Option(
            help="pool: worker processes (default GPUs x cells-per-gpu); ray: CPUs of a local instance."
        ),
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option(help="ray: address of an existing cluster (auto, ray://head:10001).")
    ] = None,
    checkpoint_every: Annotated[
        str, typer.Option(help="Checkpoint long cells every N steps or every 30s/10m/1h of training; off.")
    ] = "10m",
    out: OutOption = Path("runs"),
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="List the cells and estimate their cost from measured step times; run nothing."
        ),
    ] = False,
    estimate_for: Annotated[
        str | None,
        typer.Option(
            help="--dry-run: estimate for this device kind (e.g. 'NVIDIA H200', cpu) instead of this machine's;"
            " its devices and memory are not checked here."
        ),
    ] = None,
    tensorboard: Annotated[
        bool,
        typer.Option(
            "--tensorboard", help="Also log training curves to OUT/tensorboard/ (needs tensorboard)."
        ),
    ] = False,
    save_checkpoints: Annotated[
        bool,
        typer.Option(
            "--save-checkpoints",
            help="Save each trained model as a transformers checkpoint under OUT/checkpoints/<cell id>/.",
        ),
    ] = False,
    wandb: Annotated[
        bool,
        typer.Option(
            "--wandb", help="Also log each cell as a Weights & Biases run (needs wandb; WANDB_MODE=offline)."
        ),
    ] = False,
    wandb_project: Annotated[str, typer.Option(help="The W&B project of --wandb.")] = "harness",
    force: Annotated[
        bool,
        typer.Option("--force", help="Run cells that the memory estimate says cannot fit this machine."),
    ] = False,
    retry: Annotated[
        str | None,
        typer.Option(help="Run stored cells of these statuses again (failed,oom,diverged); old rows kept."),
    ] = None,
    stop_starting_after: Annotated[
        float | None,
        typer.Option(
            help="Start no cell after this many seconds; finish the running ones and leave the rest to the next "
            "run (jobs of limited length)."
        ),
    ] = None,
    stack_lrs: Annotated[
        bool,
        typer.Option(
            "--stack-lrs",
            help="Train the lrs of each configuration and seed as one stacked model (one launch of each op for "
            "all of them); each cell is stored as alone. Not with --tensorboard, --wandb or the lm task.",
        ),
    ] = False,
    deadline: Annotated[
        float | None,
        typer.Option(
            help="The job ends after this many seconds: start no cell whose estimated time (from the store's "
            "finished cells and the step-time table, at --cells-per-gpu) no longer fits before then, nor, unless "
            "--stop-starting-after says otherwise, a cell of unknown time after half of it; leave them to the "
            "next run."
        ),
    ] = None,
) -> None:
    """Train and evaluate every model on every cell of a suite; print the results table. Exits 1 if a cell failed
    (status failed or oom) or did not finish (it runs again next time)."""
    _load_plugins()
    from harness.analysis.report import write_report
    from harness.results.schema import STATUSES
    from harness.results.store import ResultStore
    from harness.run.launchers import LaunchOptions, make_launcher
    from harness.run.sweep import Every, run_cells

    if estimate_for is not None and not dry_run:
        raise HarnessError(
            "--estimate-for goes with --dry-run (it estimates the cost of cells it does not run)"
        )
    if stop_starting_after is not None and not (
        stop_starting_after >= 0 and math.isfinite(stop_starting_after)
    ):
        raise HarnessError(f"--stop-starting-after takes seconds (0 or more), got {stop_starting_after}")
    if deadline is not None and not (deadline > 0 and math.isfinite(deadline)):
        raise HarnessError(f"--deadline takes seconds (more than 0), got {deadline}")
    if deadline is not None and dry_run:
        raise HarnessError("--deadline goes with a run, not --dry-run (which runs nothing)")
    started = time.monotonic()
    retried = _split(retry or "")
    if unknown := [s for s in retried if s not in STATUSES or s == "ok"]:
        raise HarnessError(f"--retry takes statuses failed, oom, diverged; got '{unknown[0]}'")
    # Ray runs cells on the cluster's machines, and --estimate-for on another device: neither is checked here
    spec, cells = _plan(
        grid, models, suite, scale, set_, lrs, seeds, params, tolerance, device, force,
        local=launcher != "ray" and estimate_for is None,
    )  # fmt: skip
    every = Every.parse(checkpoint_every)
    if stack_lrs:
        cells = _stacked_order(cells, tensorboard, wandb)
    store = ResultStore(out)
    if dry_run:
        _dry_run(cells, store, estimate_for, launcher, cells_per_gpu, workers)
        return
    store.prepare()  # an --out that cannot be written fails here, in one line
    pool = make_launcher(
        launcher, LaunchOptions(cells_per_gpu=cells_per_gpu, workers=workers, ray_address=ray_address)
    )
    if stack_lrs:
        from harness.run.launchers import Stacking
        from harness.run.stacked import group_stacks

        pool = Stacking(pool, max(len(group) for group in group_stacks(cells)))
    wall_s = _estimated_walls(cells, store, launcher, cells_per_gpu) if deadline is not None else None
    if stack_lrs and wall_s is not None:
        wall_s = _stacked_walls(cells, wall_s)
    if deadline is not None and stop_starting_after is None:
        stop_starting_after = deadline / 2  # cells of unknown time: the old rule of thumb
    progress = iter(range(1, len(cells) + 1))

    def done(cell, rows) -> None:
        status, wall = rows[0]["status"], rows[0].get("wall_s")
        error = f": {rows[0]['error']}" if rows[0].get("error") else ""
        timing = f" in {wall:.0f} s" if wall else ""
        typer.echo(f"[{next(progress)}] {cell.label}: {status}{timing}{error}")

    def wait(held) -> None:
        typer.echo(
            f"waiting for {len(held)} cell(s) that another process runs (see `harness status --out {out}`)"
        )

    def unfinished(cell, reason) -> None:
        typer.echo(f"[{next(progress)}] {cell.label}: did not finish: {reason}; it runs again next time")

    from harness.run.loggers import WandbOptions, require_tensorboard, require_wandb

    # a missing optional package fails now with one line, not inside every cell
    if tensorboard:
        require_tensorboard()
    if wandb:
        require_wandb()
        mode = os.environ.get("WANDB_MODE", "online")
        typer.echo(
            f"W&B: a run per cell in project {wandb_project} ({mode}; wandb's files under {out}/wandb/)"
        )
    # SIGTERM (a scheduler ending the job) unwinds like Ctrl-C: leases released, temporary files removed
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        outcome = run_cells(
            cells,
            store,
            on_done=done,
            launcher=pool,
            checkpoint_every=every,
            on_wait=wait,
            checkpoints=out / "checkpoints" if save_checkpoints else None,
            tensorboard=tensorboard,
            wandb=WandbOptions(project=wandb_project, dir=out) if wandb else None,
            retry=retried,
            on_unfinished=unfinished,
            start_until=None if stop_starting_after is None else started + stop_starting_after,
            deadline=None if deadline is None else started + deadline,
            wall_s=wall_s,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    later = (
        f", {outcome.not_started} not started (--stop-starting-after): the next `harness run` runs them"
        if outcome.not_started
        else ""
    )
    if outcome.would_not_fit:
        later += (
            f", {len(outcome.would_not_fit)} not started because their estimated time no longer fitted before"
            " --deadline (fewer --cells-per-gpu makes each finish sooner)"
        )
    typer.echo(f"\n{outcome.ran} cell(s) run, {outcome.skipped} already in {out}/ and skipped{later}.\n")
    rows = store.read(cell.id for cell in cells)
    order = list(dict.fromkeys(cell.model_name for cell in cells))
    typer.echo(write_report(rows, store, out / "report", spec.suite, model_order=order))
    failed = rows.loc[rows["status"].isin(["failed", "oom"]), "run_id"].nunique()
    problems = []
    if outcome.unfinished:
        problems.append(
            f"{len(outcome.unfinished)} cell(s) did not finish and run again on the next `harness run`"
        )
    if failed:
        problems.append(f"{failed} cell(s) failed (above); add --retry failed,oom to run them again")
    if problems:
        typer.echo(f"error: {'; '.join(problems)}", err=True)
        raise typer.Exit(1)


def _stacked_order(cells, tensorboard: bool, wandb: bool):
    """The cells with each stack's members side by side (`--stack-lrs`), after checking that they can stack."""
    from harness.run.stacked import group_stacks, stackable_problem

    if tensorboard or wandb:
        raise HarnessError(
            "--stack-lrs does not log to TensorBoard or W&B yet; leave out --tensorboard/--wandb"
        )
    for cell in cells:
        if problem := stackable_problem(cell):
            raise HarnessError(f"--stack-lrs: {problem}")
    return [cell for group in group_stacks(cells) for cell in group]


def _stacked_walls(cells, wall_s: dict[str, float | None]) -> dict[str, float | None]:
    """`--deadline`'s estimates under `--stack-lrs`: each member gets its stack's, as long as its members one
    after another (each estimate is of a cell alone): an upper bound."""
    from harness.run.stacked import group_stacks

    stacked = dict(wall_s)
    for group in group_stacks(cells):
        times = [wall_s.get(cell.id) for cell in group]
        total = None if None in times else sum(times)
        stacked.update({cell.id: total for cell in group})
    return stacked


def _plan(grid, models, suite, scale, set_, lrs, seeds, params, tolerance, device, force, local):
    """The grid spec and the planned cells of the options that `run` and `bench steps` share."""
    from harness.run.grid import Grid, load_grid
    from harness.run.sizing import SizeMatch, parse_count
    from harness.run.sweep import plan_cells, same_model_warnings

    spec = (load_grid(grid) if grid else Grid()).merged(
        models=tuple(_split(models)) if models else None,
        suite=suite,
        scale=scale,
        set=tuple(set_ or []) + ((f"train.device={device}",) if device else ()),
        lrs=_numbers(lrs, float, "--lrs", "learning rates"),
        seeds=_numbers(seeds, int, "--seeds", "integers"),
        params=params,
        tolerance=tolerance,
    )
    if not spec.suite:
        raise HarnessError(
            "no suite given: pass --suite (e.g. --suite smoke) or a --grid file with suite = ..."
        )
    match = SizeMatch(params=parse_count(spec.params), tolerance=spec.tolerance) if spec.params else None
    cells = plan_cells(
        list(spec.models),
        spec.suite,
        spec.scale,
        spec.set,
        spec.seeds,
        spec.lrs,
        match,
        local=local,
        force=force,
    )
    for warning in sorted(same_model_warnings(cells)):
        typer.echo(f"warning: {warning}", err=True)
    if match is not None:
        _echo_sizes(cells, match)
    return spec, cells


def _estimated_walls(cells, store, launcher, cells_per_gpu) -> dict[str, float | None]:
    """Each cell's estimated time on this machine at the packing it will run under (`--deadline`), from the
    step-time table and the store's own finished cells only: a committed store may have run other code (older
    kernels), and a model neither has measured counts as unknown."""
    from harness.run.cost import (
        local_device,
        read_table,
        shapes_of,
        store_measurements,
        table_dir,
        wall_when_packed,
    )

    packing = 1 if launcher == "inprocess" else cells_per_gpu
    measured = [*read_table(table_dir()), *store_measurements(store.root)]
    return wall_when_packed(cells, shapes_of(cells), measured, local_device(cells[0]), packing)


def _dry_run(cells, store, estimate_for, launcher, cells_per_gpu, workers) -> None:
    """The cell list, then the estimate of what running it costs (harness/run/cost.py)."""
    from harness.run.cost import (
        Plan,
        check_device_name,
        cost_report,
        local_device,
        measurements_for,
        shapes_of,
    )
    from harness.run.launchers import visible_gpus

    measurements = measurements_for(store.root)
    # an unknown device name is refused before anything is printed
    device = check_device_name(estimate_for, measurements) if estimate_for else local_device(cells[0])
    for cell in cells:
        typer.echo(f"{cell.id}  {'done' if store.has(cell.id) else 'todo'}  {cell.label}")
    if device == "cpu":
        # the CPU is one device that pool workers share
        plan = Plan(launcher, workers or cells_per_gpu, 1)
    else:
        plan = Plan(launcher, cells_per_gpu, 1 if estimate_for else max(1, len(visible_gpus())))
    typer.echo("")
    typer.echo(cost_report(cells, shapes_of(cells), measurements, device, plan, store.done()))


def _numbers(text: str | None, kind: type, option: str, what: str) -> tuple | None:
    if text is None:
        return None
    try:
        return tuple(kind(part) for part in _split(text))
    except ValueError:
        raise HarnessError(f"{option} expects comma-separated {what}, got '{text}'") from None


def _echo_sizes(cells, match) -> None:
    from harness.analysis.labels import human

    seen = {}
    for cell in cells:
        seen.setdefault((cell.model_name, cell.size), cell)
    typer.echo(f"models sized to {human(match.params)} {match.count} parameters (±{match.tolerance:.0%}):")
    for (name, size), cell in seen.items():
        typer.echo(f"  {name}@{size}: d_model {cell.model.d_model}, mlp_ratio {cell.model.mlp_ratio:g}")


@app.command()
def size(
    models: Annotated[str, typer.Option("--models", "-m", help="Comma-separated models, e.g. kda,gdn,mla.")],
    params: Annotated[str, typer.Option(help="Parameter target, e.g. 1M or 250K.")],
    tolerance: Annotated[float, typer.Option(help="Accepted relative deviation (0.05 = ±5%).")] = 0.05,
    size_: Annotated[str, typer.Option("--size", help="Size preset to start from (depth, heads).")] = "tiny",
    vocab: Annotated[int, typer.Option(help="Vocabulary size (counts only with --count total).")] = 8192,
    count: Annotated[str, typer.Option(help="non-embedding or total parameters.")] = "non-embedding",
    seq_len: Annotated[int, typer.Option(help="Sequence length at which state sizes are shown.")] = 1024,
) -> None:
    """Match every model to a parameter target; print widths, parameter counts and state sizes."""
    _load_plugins()
    from harness.run.sizing import SizeMatch, match_size, parse_count, size_table

    target = SizeMatch(params=parse_count(params), tolerance=tolerance, count=count)
    sized = [match_size(token, size_, vocab, target) for token in _split(models)]
    typer.echo(size_table(sized, target, seq_len))


@app.command()
def status(
    out: OutOption = Path("runs"),
    suite: Annotated[str | None, typer.Option(help="Only sweeps of this suite.")] = None,
) -> None:
    """Progress of the sweeps recorded in a store: done, running, failed, remaining and an ETA."""
    from harness.errors import warn
    from harness.results.store import ResultStore
    from harness.run.status import status_table

    if not (out / "cells").is_dir():
        raise HarnessError(f"no results store at {out}/ (run `harness run` first, or pass --out)")
    for why in ResultStore(out).damaged().values():
        warn(f"{why}; the next `harness run` of its sweep runs it again")
    typer.echo(status_table(out, suite))


@app.command()
def report(
    out: OutOption = Path("runs"),
    suite: Annotated[str | None, typer.Option(help="Only this suite.")] = None,
    metric: Annotated[
        str | None,
        typer.Option(
            help="Metrics of the printed tables, comma-separated (accuracy, sequence_accuracy, scaled_accuracy, loss,"
            " perplexity, ...); default: accuracy, and for language modelling perplexity, throughput and lm-eval."
        ),
    ] = None,
    figures: Annotated[
        bool,
        typer.Option(
            "--figures/--no-figures",
            help="Draw accuracy vs length and vs state size, needle heatmaps, training curves.",
        ),
    ] = True,
    report_dir: Annotated[
        Path | None,
        typer.Option(
            help="Folder for the CSVs and figures; default OUT/report (tables only if not writable)."
        ),
    ] = None,
    figure_formats: Annotated[
        str, typer.Option(help="Comma-separated formats of every figure: png, pdf, svg.")
    ] = "png,pdf",
) -> None:
    """Pivot tables (one row per trained configuration x slice, at its best lr: mean ± 95% interval over seeds)
    and figures of a results store. The store itself is only read."""
    _load_plugins()
    from harness.analysis.report import write_report
    from harness.results.store import ResultStore

    if not (out / "cells").is_dir():
        raise HarnessError(f"no results store at {out}/ (run `harness run` first, or pass --out)")
    formats = tuple(_split(figure_formats))
    if bad := [f for f in formats if f not in ("png", "pdf", "svg")]:
        raise HarnessError(f"--figure-formats: unknown format '{bad[0]}'; choose from png, pdf, svg")
    store = ResultStore(out)
    rows = store.read()
    if suite:
        rows = rows[rows["suite"] == suite]
    if rows.empty:
        raise HarnessError(f"no results in {out}/ for suite {suite}")
    known = set(rows["metric"].dropna())
    missing = [m for m in (metric or "").split(",") if m and m not in known]
    if known and missing:
        raise HarnessError(f"no metric '{missing[0]}' in {out}/; it has: {', '.join(sorted(known))}")
    directory, note = _report_dir(out, report_dir)
    typer.echo(write_report(rows, store, directory, suite or "all", metric, figures, formats=formats))
    if note:
        typer.echo(note)


def _report_dir(out: Path, given: Path | None) -> tuple[Path | None, str]:
    """Where the report's files go: the folder given (it must be writable), else OUT/report when the store is
    writable, else nowhere (tables are printed; a note says how to get the files)."""
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        if not os.access(given, os.W_OK):
            raise HarnessError(f"--report-dir {given} is not writable; name a folder you can write to")
        return given, ""
    default = out / "report"
    writable = os.access(default, os.W_OK) if default.exists() else os.access(out, os.W_OK)
    if writable:
        return default, ""
    return (
        None,
        f"(no files written: {default} is not writable; pass --report-dir DIR for the CSVs and figures)",
    )


@app.command("compare-stores")
def compare_stores(
    a: Annotated[Path, typer.Argument(help="One results store.")],
    b: Annotated[Path, typer.Argument(help="The other.")],
    tolerance: Annotated[
        float, typer.Option(help="Largest absolute difference of a value that still counts as the same.")
    ] = 0.0,
    limit: Annotated[int, typer.Option(help="Differences listed at most.")] = 20,
) -> None:
    """Match the rows of two stores by cell id, task, slice and metric: cells in both or one, the largest and mean
    absolute differences per metric, the values beyond --tolerance. Exit 0 if the stores agree, else 1."""
    from harness.results.compare import compare_stores as compare

    comparison = compare(a, b, tolerance)
    typer.echo(comparison.render(limit))
    raise typer.Exit(0 if comparison.agree else 1)


@app.command()
def export(
    store_dir: Annotated[Path, typer.Option("--store", help="The results store to read.")] = Path("runs"),
    out: Annotated[Path, typer.Option("--out", help="Folder for rows.<format> and curves.<format>.")] = Path(
        "export"
    ),
    format_: Annotated[str, typer.Option("--format", help="parquet or csv.")] = "parquet",
) -> None:
    """Write a store's raw rows (one tidy row per measurement, every column, setting_id filled in) and its
    training curves as parquet or CSV: the table to load into pandas, polars, R or a spreadsheet."""
    _load_plugins()
    from harness.analysis.export import export_store
    from harness.results.store import ResultStore

    if format_ not in ("parquet", "csv"):
        raise HarnessError(f"--format must be parquet or csv, got '{format_}'")
    if not (store_dir / "cells").is_dir():
        raise HarnessError(f"no results store at {store_dir}/ (pass --store)")
    for path, count in export_store(ResultStore(store_dir), out, format_).items():
        typer.echo(f"{path}  ({count} rows)")


@app.command()
def regress(
    baseline: Annotated[
        Path, typer.Option(help="Committed baseline store (several seeds of one suite/scale).")
    ] = Path("results/smoke-cpu"),
    out: Annotated[
        Path | None, typer.Option("--out", help="Where the rerun goes; default runs/regress/<UTC time>.")
    ] = None,
    models: Annotated[
        str | None,
        typer.Option(
            "--models", "-m", help="Only these: labels (mla@zoology-128) or architectures (mla: every size)."
        ),
    ] = None,
    metrics: Annotated[str, typer.Option(help="Comma-separated metrics to compare.")] = "accuracy",
    k: Annotated[float, typer.Option(help="Allowed drop in baseline seed standard deviations.")] = 3.0,
    min_tolerance: Annotated[float, typer.Option(help="Allowed drop at least this (absolute).")] = 0.03,
    device: Annotated[str, typer.Option(help="Device of the rerun (the baseline's is the CPU).")] = "cpu",
    workers: Annotated[
        int | None, typer.Option(help="Run the cells in this many processes at once (CPU cores shared out).")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Change the rerun cells, e.g. train.max_steps=400.")
    ] = None,
    longest_s: Annotated[
        float | None,
        typer.Option(
            "--longest-s",
            help="Only configurations whose baseline cell trained in at most this many seconds (a time-bound check).",
        ),
    ] = None,
    settled_only: Annotated[
        bool,
        typer.Option(
            "--settled-only",
            help="Leave out configurations whose baseline cell was still improving when its steps ran out.",
        ),
    ] = False,
) -> None:
    """Rerun a baseline's configurations (from their stored configs) and fail (exit 1) with a table when a metric
    drops beyond its tolerance."""
    _load_plugins()
    import time

    from harness.analysis.regress import Tolerance
    from harness.analysis.regress import regress as run_regress
    from harness.results.store import ResultStore, atomic_write, write_error

    if longest_s is not None and not 0 < longest_s < float("inf"):
        raise HarnessError(f"--longest-s must be a number of seconds > 0, got {longest_s:g}")
    if (baseline / "cells").is_dir():  # (a missing baseline is regress's own one-line error)
        known = set(ResultStore(baseline).read()["metric"].dropna())
        if unknown := [m for m in _split(metrics) if m not in known]:
            raise HarnessError(
                f"--metrics {unknown[0]}: the baseline {baseline}/ has no such metric; it has {', '.join(sorted(known))}"
            )
    out = out or Path("runs") / "regress" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    passed, text, table = run_regress(
        baseline,
        out,
        _split(models) if models else None,
        tuple(_split(metrics)),
        Tolerance(k, min_tolerance),
        device,
        workers,
        tuple(set_ or []),
        longest_s,
        settled_only,
    )
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "regress.csv", table.to_csv(index=False))
    except OSError as err:
        raise write_error(err, out / "regress.csv") from None
    typer.echo(f"{text}\n\ntable: {out / 'regress.csv'}")
    if not passed:
        raise typer.Exit(1)


@app.command("eval")
def eval_(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="A transformers checkpoint directory.")],
    tasks: Annotated[str, typer.Option("--tasks", help="Comma-separated lm-eval tasks, e.g. harness_mqar.")],
    out: OutOption = Path("runs"),
    include_path: Annotated[
        list[Path] | None, typer.Option("--include-path", help="Folder of extra lm-eval task YAMLs.")
    ] = None,
    num_fewshot: Annotated[
        int | None, typer.Option(help="Few-shot examples (lm-eval's default if unset).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many documents per task.")] = None,
    batch_size: Annotated[int, typer.Option(help="Batch size of lm-eval's requests.")] = 32,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
) -> None:
    """Score a checkpoint with lm-eval (in process, offline) and append the rows to the results store."""
    from harness.integrations.lm_eval_scoring import evaluate_checkpoint
    from harness.results.store import ResultStore

    _load_plugins()
    store = ResultStore(out)
    run_id, rows = evaluate_checkpoint(
        checkpoint, _split(tasks), store, include_path or [], num_fewshot, limit, batch_size, device
    )
    if not rows:
        typer.echo(f"already in {out}/ (run {run_id}); nothing to do")
        rows = store.read().query("run_id == @run_id").to_dict("records")
    for row in rows:
        stderr = "" if row["stderr"] is None else f" ± {row['stderr']:.4f}"
        slice_ = f" [{row['slice']}]" if row.get("slice") else ""
        typer.echo(f"{row['task']}{slice_}  {row['metric']} = {row['value']:.4f}{stderr}  (n={row['n']})")
    typer.echo(f"\n{len(rows)} row(s) in {out}/cells/{run_id}.jsonl")


@app.command("export-tasks")
def export_tasks(
    suite: Annotated[str, typer.Option("--suite", "-s", help="Export every task of this suite.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the lm-eval task YAML and JSONL files.")],
    scale: Annotated[str | None, typer.Option(help="Suite scale; default: the suite's first.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the test data (as in `harness run`).")] = 0,
) -> None:
    """Write a suite's tasks as lm-eval tasks, one folder each with its data and tokenizer (use with
    --include_path; a folder can be moved)."""
    _load_plugins()
    from harness.run.export import export_suite

    if out.exists() and not out.is_dir():
        raise HarnessError(f"--out {out} is a file; export-tasks writes a folder of task files")
    for group, config in export_suite(suite, scale, out, seed).items():
        typer.echo(f"{out / group}/  {config}")
    typer.echo(
        f"\nlm-eval tasks written to {out}/ (pass --include_path {out}; --tasks takes the group names)"
    )


@app.command("list")
def list_() -> None:
    """Show the registered mixers, model presets, sizes, tasks and suites."""
    _load_plugins()
    from harness.registry import ARCHITECTURES, MIXERS, SIZES, SUITES, TASKS

    def first_line(obj) -> str:
        return (obj.__doc__ or "").strip().splitlines()[0] if obj.__doc__ else ""

    typer.echo("mixers:")
    for name, cls in MIXERS.items():
        typer.echo(f"  {name:<12} {first_line(__import__(cls.__module__, fromlist=['_']))}")
    typer.echo(
        "models (ARCH[@SIZE]: a mixer above in every layer, a preset below, or a ratio such as kda:mla=3:1):"
    )
    for name, arch in ARCHITECTURES.items():
        typer.echo(f"  {name:<12} {arch.description}")
    typer.echo("sizes:")
    for name, size in SIZES.items():
        typer.echo(
            f"  {name:<12} d_model {size.d_model}, {size.n_layers} layers, {size.num_heads} heads x {size.head_dim}"
            f" — {size.description}"
        )
    typer.echo("tasks:")
    for name, cls in TASKS.items():
        # a task's own docstring where it has one (several tasks may share a module), else its module's
        about = first_line(cls) or first_line(__import__(cls.__module__, fromlist=["_"]))
        typer.echo(f"  {name:<18} v{cls.version}  {about}")
    typer.echo("suites:")
    for name, suite in SUITES.items():
        typer.echo(f"  {name:<18} scales: {', '.join(suite.scales)} — {suite.description}")
    import harness.run.launchers  # noqa: F401 - registers the launchers
    from harness.registry import LAUNCHERS

    typer.echo("launchers (--launcher):")
    for name, cls in LAUNCHERS.items():
        typer.echo(f"  {name:<12} {first_line(cls)}")


bench_app = typer.Typer(
    no_args_is_help=True,
    help="Benchmarks: the kernels (CUDA), the models' efficiency (CUDA or, small, the CPU).",
)
app.add_typer(bench_app, name="bench")


@bench_app.command("kernels")
def bench_kernels(
    out: OutOption = Path("results/kernels"),
    ops: Annotated[str, typer.Option(help="Comma-separated ops: kda, gdn, ssd.")] = "kda,gdn,ssd",
    torch_path: Annotated[
        bool, typer.Option(help="Also time the chunked PyTorch path (first shape only).")
    ] = True,
    warm: Annotated[
        bool, typer.Option(help="Compile every (op, impl) in parallel subprocesses before timing.")
    ] = True,
    profile: Annotated[
        bool, typer.Option(help="Also profile the device time per kernel (first shape).")
    ] = True,
    row_budget: Annotated[float, typer.Option(help="Seconds one (op, impl, shape) row may take.")] = 15.0,
    warm_budget: Annotated[float, typer.Option(help="Seconds the parallel compilation may take.")] = 120.0,
    shapes: Annotated[
        str,
        typer.Option(
            help="default (16 heads: 8x2048, 2x8192, 1x32768), synthetic (the synthetic suites: 32x256..32x2048, "
            "2 heads), all, or comma-separated BxT / BxTxH."
        ),
    ] = "default",
    impls: Annotated[
        str,
        typer.Option(
            help="Comma-separated implementations (triton = current kernels, triton-v2 = the previous, torch, "
            "fla, sdpa); empty: all available."
        ),
    ] = "",
) -> None:
    """Time the gated-delta-rule kernels against the PyTorch path, SDPA and fla; write a table under OUT."""
    import torch

    if not torch.cuda.is_available():
        raise HarnessError("`harness bench kernels` needs a CUDA device; none is visible")
    from kernels.bench import bench_kernels as run
    from kernels.bench import parse_shapes

    rows = run(
        out,
        ops=_split(ops),
        shapes=parse_shapes(shapes),
        only=_split(impls) or None,
        torch_path=torch_path,
        warm=warm,
        profile=profile,
        row_budget_s=row_budget,
        warm_budget_s=warm_budget,
    )
    typer.echo(f"\n{len(rows)} rows; table, CSV and JSON under {out}/")


QUICK = dict(
    size="tiny", contexts="64,256", batched="4x64", train_contexts="64,128", train_tokens="256", decode_steps=3,
    train_steps=1, prefill_chunk="128", vocab=256,
)  # fmt: skip


@bench_app.command("models")
def bench_models(
    models: Annotated[
        str,
        typer.Option("--models", "-m", help="Comma-separated models: presets, hybrids, plugins, ARCH@SIZE."),
    ] = "mla,mla-nope,kimi,gdn-h,kda,gdn,mamba2",
    size: Annotated[str, typer.Option(help="Size preset of models named without @SIZE.")] = "bench-167m",
    params: Annotated[
        str | None, typer.Option(help="Resize every model to this many parameters (e.g. 167M; see `size`).")
    ] = None,
    tolerance: Annotated[float, typer.Option(help="Tolerance of --params.")] = 0.05,
    count: Annotated[str, typer.Option(help="--params counts non-embedding or total parameters.")] = "total",
    contexts: Annotated[str, typer.Option(help="Contexts of batch-1 prefill and decode, e.g. 4K,32K,1M.")] = (
        "4K,32K,128K"
    ),
    batched: Annotated[str, typer.Option(help="More BATCHxCONTEXT cases, e.g. 64x4K,16x32K.")] = "",
    train_contexts: Annotated[str, typer.Option(help="Contexts of the training cases, e.g. 4K,32K.")] = "",
    train_tokens: Annotated[
        str, typer.Option(help="Tokens per training step (batch = tokens / context, at least 1).")
    ] = "32K",
    decode_steps: Annotated[
        int, typer.Option(help="Decode steps timed per case (the median is the row).")
    ] = 20,
    train_steps: Annotated[int, typer.Option(help="Training steps timed per case.")] = 3,
    prefill_chunk: Annotated[str, typer.Option(help="Prompt tokens per forward of the prefill.")] = "64K",
    row_budget: Annotated[
        float, typer.Option(help="Seconds a prefill may take; past it the rest of the cache is made up.")
    ] = 60.0,
    time_budget: Annotated[
        float | None, typer.Option(help="Seconds for the whole run: cases not started by then are skipped.")
    ] = None,
    graphs: Annotated[bool, typer.Option(help="Capture the decode step as a CUDA graph (CUDA only).")] = True,
    dtype: Annotated[
        str, typer.Option(help="auto (bf16 on CUDA, fp32 on the CPU), bf16, fp16 or fp32.")
    ] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    kernel_impl: Annotated[
        str, typer.Option(help="The models' kernels: auto, torch, triton, reference.")
    ] = "auto",
    memory_limit: Annotated[
        float | None,
        typer.Option(help="GiB: refuse cases estimated above it (default: what the device has)."),
    ] = None,
    vocab: Annotated[int, typer.Option(help="Vocabulary size.")] = 32768,
    out: OutOption = Path("results/bench"),
    quick: Annotated[
        bool,
        typer.Option(
            "--quick", help="Tiny sizes, contexts and step counts (a check of the command, e.g. on the CPU)."
        ),
    ] = False,
    profile_contexts: Annotated[
        str, typer.Option(help="Profile the batch-1 decode step at these contexts (CUDA), e.g. 32K,1M.")
    ] = "",
    report_only: Annotated[
        bool, typer.Option("--report-only", help="Measure nothing: tables and figures of the store at --out.")
    ] = False,
    quality_store: Annotated[
        Path | None,
        typer.Option(
            help="A results store whose accuracy to set against efficiency (quality-vs-efficiency figure)."
        ),
    ] = None,
    quality_suite: Annotated[str | None, typer.Option(help="Only this suite of --quality-store.")] = None,
    quality_metric: Annotated[str, typer.Option(help="The quality metric of --quality-store.")] = "accuracy",
    baseline: Annotated[str, typer.Option(help="The model others are compared with per context.")] = "mla",
    figures: Annotated[bool, typer.Option("--figures/--no-figures", help="Draw the figures.")] = True,
    figure_formats: Annotated[str, typer.Option(help="Comma-separated formats: png, pdf, svg.")] = "png",
) -> None:
    """Prefill, decode (ms/token, tokens/s, cache bytes, the memory floor) and training throughput of every model
    against context; rows into the store at OUT, the table and figures under OUT/report (docs/efficiency.md)."""
    _load_plugins()
    from harness.analysis.efficiency import quality_table, write_efficiency_report
    from harness.results.store import ResultStore
    from harness.run.bench_models import (
        Bench,
        BenchSettings,
        check_models,
        parse_length,
        plan_cases,
        resolve_models,
    )
    from harness.run.sizing import SizeMatch, parse_count
    from models.presets import split_model_token

    if quick:
        # tiny stand-ins for the options left at their defaults; options given still apply
        given = dict(
            size=size, contexts=contexts, batched=batched, train_contexts=train_contexts, train_tokens=train_tokens,
            decode_steps=decode_steps, train_steps=train_steps, prefill_chunk=prefill_chunk, vocab=vocab,
        )  # fmt: skip
        defaults = {name: p.default for name, p in inspect.signature(bench_models).parameters.items()}
        chosen = {name: QUICK[name] if value == defaults[name] else value for name, value in given.items()}
        size, contexts, batched, train_contexts = (
            chosen[k] for k in ("size", "contexts", "batched", "train_contexts")
        )
        train_tokens, decode_steps, train_steps = (
            chosen[k] for k in ("train_tokens", "decode_steps", "train_steps")
        )
        prefill_chunk, vocab = chosen["prefill_chunk"], chosen["vocab"]
    formats = tuple(_split(figure_formats))
    if bad := [f for f in formats if f not in ("png", "pdf", "svg")]:
        raise HarnessError(f"--figure-formats: unknown format '{bad[0]}'; choose from png, pdf, svg")
    quality = None
    if quality_store is not None:
        if not (quality_store / "cells").is_dir():
            raise HarnessError(f"--quality-store: no results store at {quality_store}/")
        quality = quality_table(ResultStore(quality_store), quality_suite, quality_metric)
        if quality.empty:
            raise HarnessError(f"--quality-store {quality_store}: no '{quality_metric}' rows to join")
    store = ResultStore(out)
    if not report_only:
        settings = BenchSettings(
            decode_steps=decode_steps,
            train_steps=train_steps,
            prefill_chunk=parse_length(prefill_chunk),
            row_budget_s=row_budget,
            graphs=graphs,
            dtype=dtype,
            device=device,
            kernel_impl=kernel_impl,
            memory_limit_gib=memory_limit,
            vocab_size=vocab,
        )
        match = SizeMatch(params=parse_count(params), tolerance=tolerance, count=count) if params else None
        resolved = resolve_models(_split(models), size, settings, match)
        check_models(resolved)
        cases = plan_cases(contexts, batched, train_contexts, parse_length(train_tokens))
        profiled = tuple(parse_length(c) for c in _split(profile_contexts))
        bench = Bench(
            settings, store, on_line=typer.echo, time_budget_s=time_budget, profile_contexts=profiled
        )
        bench.run(resolved, cases)
    elif not (out / "cells").is_dir():
        raise HarnessError(f"--report-only: no results store at {out}/")
    typer.echo("")
    typer.echo(
        write_efficiency_report(
            store,
            out / "report",
            quality,
            quality_metric,
            figures,
            formats or ("png",),
            baseline=baseline,
            order=[split_model_token(token, size)[0] for token in _split(models)],
        )
    )


@bench_app.command("steps")
def bench_steps(
    models: Annotated[
        str | None, typer.Option("--models", "-m", help="Comma-separated models, as for `harness run`.")
    ] = None,
    suite: Annotated[str | None, typer.Option("--suite", "-s", help="Suite whose cells to time.")] = None,
    scale: Annotated[str | None, typer.Option(help="Suite scale; default: the suite's first.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a setting, as for `harness run`.")
    ] = None,
    lrs: Annotated[str | None, typer.Option(help="As for `harness run` (lrs share a step time).")] = None,
    seeds: Annotated[str | None, typer.Option(help="As for `harness run` (seeds share a step time).")] = None,
    grid: Annotated[Path | None, typer.Option(help="TOML grid file, as for `harness run`.")] = None,
    params: Annotated[str | None, typer.Option(help="Resize every model to this many parameters.")] = None,
    tolerance: Annotated[float | None, typer.Option(help="Tolerance of --params (default 0.05).")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Time cells that the memory estimate says cannot fit.")
    ] = False,
    steps: Annotated[int, typer.Option(help="Training steps timed per shape.")] = 20,
    warmup: Annotated[int, typer.Option(help="Steps before the timed ones (compilation, caches).")] = 3,
    cells_per_gpu: Annotated[
        int,
        typer.Option(
            help="Time K copies of each shape at once (what --launcher pool --cells-per-gpu K gets)."
        ),
    ] = 1,
    budget_s: Annotated[
        float | None,
        typer.Option(help="Seconds for the whole run: shapes not started by then are left for the next run."),
    ] = 300.0,
    again: Annotated[
        bool, typer.Option("--again", help="Measure shapes that the table already has for this device.")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Folder of the step-time table (default: $HARNESS_STEP_TIMES or results/step-times/).",
        ),
    ] = None,
) -> None:
    """Time a few training steps of one cell per shape of a sweep (cells differing only in lr and seed share one)
    on this device; append ms/step to the step-time table that `harness run --dry-run` estimates from."""
    _load_plugins()
    from harness.run.bench_steps import bench_steps as run
    from harness.run.cost import table_dir

    _, cells = _plan(
        grid, models, suite, scale, set_, lrs, seeds, params, tolerance, device, force, local=True
    )
    table = out or table_dir()
    outcome = run(
        cells, table, steps=steps, warmup=warmup, cells_per_gpu=cells_per_gpu, budget_s=budget_s, again=again,
        on_line=typer.echo,
    )  # fmt: skip
    typer.echo(
        f"\n{len(outcome.measured)} shape(s) measured, {outcome.skipped} already in {table}/"
        + (" (--again measures them anew)" if outcome.skipped else "")
        + (f", {outcome.failed} failed" if outcome.failed else "")
    )
    if outcome.left:
        typer.echo(
            f"{outcome.left} shape(s) not started: the --budget-s was spent; run the same command again"
        )


def main(argv: list[str] | None = None) -> None:
    """The `harness` command (`argv`: its arguments; default: the command line's). The one error boundary: a
    HarnessError, or an error of reading or writing a file the user named that no part turned into one, is
    printed as one line and exits with code 2, never as a traceback."""
    try:
        app(args=argv, standalone_mode=True)
    except HarnessError as err:
        _fail(str(err))
    except _file_errors() as err:
        _fail(_describe(err))


def _file_errors() -> tuple[type[Exception], ...]:
    # evaluated only when an exception reaches main(), so that `harness --help` imports no safetensors
    import json

    from safetensors import SafetensorError

    return OSError, json.JSONDecodeError, UnicodeDecodeError, SafetensorError


def _describe(err: Exception) -> str:
    if isinstance(err, OSError) and err.filename is not None:
        return f"{(err.strerror or str(err)).lower()}: {err.filename}; check the path and its permissions"
    if isinstance(err, UnicodeDecodeError):
        return f"a file that should be text is not ({err}); check the files the command reads"
    return f"{type(err).__name__}: {err}"


def _fail(message: str) -> None:
    typer.echo("error: " + " ".join(message.split()), err=True)  # one line, whatever the message holds
    sys.exit(2)


if __name__ == "__main__":
    main()
