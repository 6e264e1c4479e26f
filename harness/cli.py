"""The `harness` command line: run, report, list.

    harness run --models kda,gdn,mamba2,mla --suite smoke
    harness report --out runs
    harness list
    harness bench kernels --out results/kernels-h100

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
        str, typer.Option("--models", "-m", help="Comma-separated models, e.g. kda,gdn,mla,kimi.")
    ],
    suite: Annotated[str, typer.Option("--suite", "-s", help="Suite to run, e.g. smoke.")],
    scale: Annotated[
        str | None, typer.Option(help="Suite scale (tiny, small, ...); default: the suite's first.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a setting: train.lr=3e-4, model.kda.num_heads=4."),
    ] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds; default: the suite's.")] = None,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu, cuda or cuda:N (shortcut for --set train.device=).")
    ] = None,
    out: OutOption = Path("runs"),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the cells and exit.")] = False,
) -> None:
    """Train and evaluate every model on every cell of a suite; print the results table."""
    _load_plugins()
    from harness.report import failures_markdown, markdown, summarize, write_csv
    from harness.results import ResultStore
    from harness.sweep import plan_cells, run_cells

    overrides = list(set_ or []) + ([f"train.device={device}"] if device else [])
    try:
        seed_list = [int(s) for s in _split(seeds)] if seeds else None
    except ValueError:
        raise HarnessError(f"--seeds expects comma-separated integers, got '{seeds}'") from None
    cells = plan_cells(_split(models), suite, scale, overrides, seed_list)
    store = ResultStore(out)
    if dry_run:
        for cell in cells:
            typer.echo(f"{cell.id}  {'done' if store.has(cell.id) else 'todo'}  {cell.label}")
        return
    ran, skipped = run_cells(cells, store)
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
    csv = write_csv(table, out / "report" / f"{suite}.csv")
    typer.echo(f"\nCSV: {csv}")


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


bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that need a CUDA device.")
app.add_typer(bench_app, name="bench")


@bench_app.command("kernels")
def bench_kernels(
    out: OutOption = Path("results/kernels"),
    ops: Annotated[str, typer.Option(help="Comma-separated ops: kda, gdn, ssd.")] = "kda,gdn,ssd",
    torch_path: Annotated[
        bool, typer.Option(help="Also time the chunked PyTorch path (first shape only).")
    ] = True,
) -> None:
    """Time the gated-delta-rule kernels against the PyTorch path, SDPA and fla; write a table under OUT."""
    import torch

    if not torch.cuda.is_available():
        raise HarnessError("`harness bench kernels` needs a CUDA device; none is visible")
    from harness.bench import bench_kernels as run

    rows = run(out, ops=_split(ops), torch_path=torch_path)
    typer.echo(f"\n{len(rows)} rows; table, CSV and JSON under {out}/")


def main() -> None:
    try:
        app(standalone_mode=True)
    except HarnessError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
