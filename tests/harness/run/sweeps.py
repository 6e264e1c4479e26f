"""Small cells shared by the sweep tests: MLA (the fastest mixer on the CPU) on a 320-example MQAR."""

from harness.run.sweep import plan_cells

FAST = (
    "train.max_steps=16", "train.eval_every=8", "train.batch_size=16", "train.warmup_steps=4",
    "train.target_accuracy=none", "task.num_train=320", "task.num_test=32",
)  # fmt: skip


def small_cells(lrs=(1e-3, 3e-3), seeds=(0,), models=("mla",), extra=()):
    return plan_cells(list(models), "smoke", "tiny", (*FAST, *extra), seeds=list(seeds), lrs=list(lrs))


def comparable(rows):
    """Rows without what differs between two runs of the same cell (timing)."""
    return sorted(
        (tuple(sorted((k, repr(v)) for k, v in row.items() if k != "wall_s")) for row in rows), key=repr
    )
