"""The 'still improving' mark: which curves count as cut short by their budget, and where the report shows it."""

import pandas as pd

from harness.analysis.convergence import MARK, cell_still_improving, still_improving
from harness.analysis.report import best_lr, pivot_markdown, summarize


def curve(accuracies, losses, every=250, valid_losses=None):
    return [
        dict(step=every * (i + 1), valid_accuracy=a, train_loss=l, **({"valid_loss": valid_losses[i]} if valid_losses else {}))
        for i, (a, l) in enumerate(zip(accuracies, losses, strict=True))
    ]  # fmt: skip


def test_a_curve_still_rising_at_its_last_step_is_improving():
    rising = curve([0.1, 0.5, 0.8, 0.90, 0.94, 0.96, 0.97, 0.975], [5, 3, 1, 0.6, 0.4, 0.3, 0.25, 0.22])
    assert still_improving(rising, max_steps=2000) is True


def test_a_flat_curve_and_a_converged_one_are_not():
    flat = curve([0.0] * 8, [8.32, 8.32, 8.31, 8.32, 8.32, 8.31, 8.32, 8.31])
    converged = curve(
        [0.9, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], [0.5, 0.02, 0.012, 0.011, 0.010, 0.010, 0.009, 0.009]
    )
    assert still_improving(flat, max_steps=2000) is False
    assert still_improving(converged, max_steps=2000) is False  # 0.010 -> 0.009 is 10% but not 0.02 nats


def test_a_cell_that_stopped_early_met_its_target_and_is_not_marked():
    rising = curve([0.1, 0.5, 0.8, 0.99], [5, 3, 1, 0.1])
    assert still_improving(rising, max_steps=3000) is False
    assert still_improving(rising) is True  # without its budget, only the curve speaks


def test_the_validation_loss_decides_over_the_training_loss():
    # memorising the training set: training loss falls, validation loss does not, accuracy stays at chance
    memorising = curve(
        [0.0] * 8,
        [8.3, 8.2, 8.1, 8.0, 7.9, 7.8, 7.6, 7.5],
        valid_losses=[8.3, 8.4, 8.4, 8.45, 8.5, 8.5, 8.55, 8.6],
    )
    assert still_improving(memorising, max_steps=2000) is False
    assert (
        still_improving([{k: v for k, v in p.items() if k != "valid_loss"} for p in memorising], 2000) is True
    )


def test_too_short_a_history_is_unknown():
    assert still_improving(curve([0.1, 0.2], [5, 4]), max_steps=500) is None
    assert cell_still_improving({}) is None
    meta = {"history": curve([0.1, 0.5, 0.8, 0.9], [5, 3, 1, 0.5]), "config": {"train": {"max_steps": 1000}}}
    assert cell_still_improving(meta) is True


def test_the_table_marks_the_steps_of_a_configuration_still_improving():
    rows = pd.DataFrame(
        [dict(run_id=f"{m}-0", setting_id=m, label=m, suite="s", scale="tiny", model=m, preset="", task="mqar",
              task_setting="", task_variant="", task_version="1", slice="seq_len=64", metric="accuracy", value=v,
              higher_is_better=True, seed=0, params=1000, state_size=64, lr=1e-3, steps=3000,
              kernel_impl="gdr:torch", status="ok", still_improving=flag)
         for m, v, flag in (("kda", 0.5, True), ("mla", 1.0, False))]
    )  # fmt: skip
    text = pivot_markdown(best_lr(summarize(rows)))
    kda, mla = (
        next(line for line in text.splitlines() if line.startswith(f"| {m} ")) for m in ("kda", "mla")
    )
    assert f"3000 {MARK}" in kda and MARK not in mla
    assert "still improving when its steps ran out" in text
    rows["still_improving"] = False
    assert MARK not in pivot_markdown(best_lr(summarize(rows)))
