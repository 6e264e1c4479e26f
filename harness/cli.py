"""The `harness` command line: run, report, list.

    harness run --models kda,gdn,mamba2,mla --suite smoke [--save-checkpoints]
    harness report --out runs
    harness list
    harness eval --checkpoint runs/checkpoints/<cell id> --tasks harness_mqar     (lm-eval, in process)
    harness export-tasks --suite recall --out lm_eval_tasks                       (synthetic tasks for lm-eval)

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
    save_checkpoints: Annotated[
        bool,
        typer.Option(
            "--save-checkpoints",
            help="Save each trained model as a transformers checkpoint under OUT/checkpoints/<cell id>/.",
        ),
    ] = False,
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
    ran, skipped = run_cells(cells, store, checkpoints=out / "checkpoints" if save_checkpoints else None)
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
    from harness.lm_eval_bridge import evaluate_checkpoint
    from harness.results import ResultStore

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
    """Write a suite's synthetic tasks as lm-eval tasks over local files (use with --include_path)."""
    _load_plugins()
    from harness.lm_eval_tasks import export_suite

    for group, config in export_suite(suite, scale, out, seed).items():
        typer.echo(f"{group:<28} {config}")
    typer.echo(f"\nlm-eval tasks written to {out}/ (pass --include_path {out})")


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


def main() -> None:
    try:
        app(standalone_mode=True)
    except HarnessError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
