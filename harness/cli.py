"""The `harness` command line: run, status, report, size, list.

    harness run --models kda,gdn,mamba2,mla --suite smoke
    harness run --grid grid.toml --launcher pool --cells-per-gpu 4
    harness status --out runs
    harness report --out runs
    harness size --models kda,gdn,mla --params 1M --tolerance 0.05
    harness list

Errors in what the user typed (unknown names, malformed --set, impossible settings) print one line and exit 2;
nothing is written to the results store in that case.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from harness.registry import HarnessError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Compare sequence-mixer architectures on synthetic probes; write tidy result tables.",
)

OutOption = Annotated[Path, typer.Option("--out", help="Results store directory.")]


def _load_plugins() -> None:
    # Importing the packages registers their mixers, presets, tasks and suites.
    import models  # noqa: F401
    import models.presets  # noqa: F401
    import tasks  # noqa: F401


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
    launcher: Annotated[str, typer.Option(help="inprocess, pool (local GPUs) or ray.")] = "inprocess",
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
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the cells and exit.")] = False,
) -> None:
    """Train and evaluate every model on every cell of a suite; print the results table."""
    _load_plugins()
    from harness.grid import Grid, load_grid
    from harness.launchers import LaunchOptions, make_launcher
    from harness.report import failures_markdown, markdown, summarize, write_csv
    from harness.results import ResultStore
    from harness.sizing import SizeMatch, parse_count
    from harness.sweep import Every, plan_cells, run_cells

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
    cells = plan_cells(list(spec.models), spec.suite, spec.scale, spec.set, spec.seeds, spec.lrs, match)
    every = Every.parse(checkpoint_every)
    store = ResultStore(out)
    if match is not None:
        _echo_sizes(cells, match)
    if dry_run:
        for cell in cells:
            typer.echo(f"{cell.id}  {'done' if store.has(cell.id) else 'todo'}  {cell.label}")
        return
    pool = make_launcher(
        launcher, LaunchOptions(cells_per_gpu=cells_per_gpu, workers=workers, ray_address=ray_address)
    )
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

    ran, skipped = run_cells(cells, store, on_done=done, launcher=pool, checkpoint_every=every, on_wait=wait)
    typer.echo(f"\n{ran} cell(s) run, {skipped} already in {out}/ and skipped.\n")
    rows = store.read()
    rows = rows[rows["run_id"].isin({cell.id for cell in cells})]
    table = summarize(rows)
    if not table.empty:
        order = list(dict.fromkeys(cell.model_name for cell in cells))
        table = table.sort_values("model", key=lambda names: names.map(order.index), kind="stable")
    typer.echo(markdown(table))
    if failed := failures_markdown(rows):
        typer.echo("\nCells that did not finish normally:\n" + failed)
    csv = write_csv(table, out / "report" / f"{spec.suite}.csv")
    typer.echo(f"\nCSV: {csv}")


def _numbers(text: str | None, kind: type, option: str, what: str) -> tuple | None:
    if text is None:
        return None
    try:
        return tuple(kind(part) for part in _split(text))
    except ValueError:
        raise HarnessError(f"{option} expects comma-separated {what}, got '{text}'") from None


def _echo_sizes(cells, match) -> None:
    from harness.report import human

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
    from harness.sizing import SizeMatch, match_size, parse_count, size_table

    target = SizeMatch(params=parse_count(params), tolerance=tolerance, count=count)
    sized = [match_size(token, size_, vocab, target) for token in _split(models)]
    typer.echo(size_table(sized, target, seq_len))


@app.command()
def status(
    out: OutOption = Path("runs"),
    suite: Annotated[str | None, typer.Option(help="Only sweeps of this suite.")] = None,
) -> None:
    """Progress of the sweeps recorded in a store: done, running, failed, remaining and an ETA."""
    from harness.status import status_table

    if not (out / "cells").is_dir():
        raise HarnessError(f"no results store at {out}/ (run `harness run` first, or pass --out)")
    typer.echo(status_table(out, suite))


@app.command()
def report(
    out: OutOption = Path("runs"),
    suite: Annotated[str | None, typer.Option(help="Only this suite.")] = None,
    metric: Annotated[
        str | None, typer.Option(help="Only this metric (accuracy, sequence_accuracy, loss).")
    ] = None,
    figures: Annotated[
        bool, typer.Option("--figures", help="Also draw accuracy vs length (PNG under OUT/report/).")
    ] = False,
) -> None:
    """Print the markdown table of a results store and write it as CSV under OUT/report/."""
    from harness.report import failures_markdown, markdown, summarize, write_csv
    from harness.results import ResultStore

    if not (out / "cells").is_dir():
        raise HarnessError(f"no results store at {out}/ (run `harness run` first, or pass --out)")
    rows = ResultStore(out).read()
    if suite:
        rows = rows[rows["suite"] == suite]
    if metric:
        rows = rows[rows["metric"].isna() | (rows["metric"] == metric)]
    if rows.empty:
        raise HarnessError(f"no results in {out}/ match suite={suite} metric={metric}")
    table = summarize(rows)
    if not table.empty:
        table = table.sort_values(["suite", "scale", "task", "model"], kind="stable")
    typer.echo(markdown(table))
    if failed := failures_markdown(rows):
        typer.echo("\nCells that did not finish normally:\n" + failed)
    csv = write_csv(table, out / "report" / f"{suite or 'all'}.csv")
    typer.echo(f"\nCSV: {csv}")
    if figures:
        from harness.figures import accuracy_vs_length

        png = accuracy_vs_length(rows, out / "report" / f"{suite or 'all'}_accuracy_vs_length.png")
        typer.echo(f"figure: {png}" if png else "no slices with a seq_len: no figure drawn")


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
    typer.echo("models (ARCH[@SIZE]; also ratios such as kda:mla=3:1):")
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
    import harness.launchers  # noqa: F401 - registers the launchers
    from harness.registry import LAUNCHERS

    typer.echo("launchers (--launcher):")
    for name, cls in LAUNCHERS.items():
        typer.echo(f"  {name:<12} {first_line(cls)}")


def main() -> None:
    try:
        app(standalone_mode=True)
    except HarnessError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
