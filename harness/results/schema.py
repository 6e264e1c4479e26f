"""The tidy row: one measurement with everything needed to tell where it came from. Every row of a store, from a
trained cell or from `harness eval`, is a `Row`; readers get the same columns from every cell.

    what was measured      run_id, setting_id, suite, scale, task, task_version, task_setting, num_fewshot, slice, metric,
                           value, higher_is_better, n, stderr
    what was trained       seed, model, preset, layers, params, non_embedding_params, state_size, lr, steps,
                           tokens_seen
    where it ran           kernel_impl, dtype, device, git_commit, git_dirty, torch, triton, wall_s
    how it ended           status (ok | diverged | oom | failed), error
    lm-eval rows only      checkpoint, trained_run_id (the cell whose checkpoint was scored)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

STATUSES = ("ok", "diverged", "oom", "failed")


@dataclass(frozen=True, kw_only=True)
class Row:
    run_id: str
    """The cell's id (hash of its config), or the id of an lm-eval run."""
    setting_id: str | None = None
    """The id of the trained configuration: the cell's config less seed and lr (rows of its seeds and lrs share
    it; a report row is one setting_id). None in rows written before it existed: readers derive it."""
    suite: str | None = None
    scale: str | None = None
    task: str | None = None
    task_version: str | None = None
    task_setting: str | None = None
    """What tells this task config apart from others of the same task in the suite ('' if nothing)."""
    num_fewshot: int | None = None
    slice: str | None = None
    """The test setting measured, 'key=value,...' (e.g. 'seq_len=64,pairs=4'); None on a failure row."""
    metric: str | None = None
    value: float | None = None
    higher_is_better: bool | None = None
    n: int | None = None
    """Tokens, sequences or documents the value is over."""
    stderr: float | None = None
    seed: int | None = None
    model: str | None = None
    """The architecture as named on the command line (a preset or a ratio such as kda:mla=1:1)."""
    preset: str | None = None
    """The size preset (with '~1M' when sized to a parameter target)."""
    layers: str | None = None
    params: int | None = None
    non_embedding_params: int | None = None
    state_size: int | None = None
    """Numbers held per sequence at inference after the slice's length."""
    lr: float | None = None
    steps: int | None = None
    tokens_seen: int | None = None
    kernel_impl: str | None = None
    dtype: str | None = None
    device: str | None = None
    """Where the cell ran: 'cpu', or a GPU's name and which GPU of the machine ('NVIDIA H200 (GPU 1)'; rows
    written before the GPU was named carry its name alone)."""
    git_commit: str | None = None
    git_dirty: bool | None = None
    torch: str | None = None
    triton: str | None = None
    wall_s: float | None = None
    status: str = "ok"
    error: str | None = None
    checkpoint: str | None = None
    trained_run_id: str | None = None

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"row status must be one of {', '.join(STATUSES)}, got '{self.status}'")

    def with_(self, **fields: Any) -> Row:
        """A copy with `fields` changed."""
        return dataclasses.replace(self, **fields)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


COLUMNS = [f.name for f in dataclasses.fields(Row)]
"""The columns of every row, in order: what `ResultStore.read` returns."""
