"""Measure how long MQAR training sits on the ln(V/2) plateau, one variant per call (CPU or GPU).

The harness's own model (models.backbone.LanguageModel), data (tasks.mqar) and trainer (harness.run.train.train) are
used as they are; the variants below that the harness has no setting for (Zoology-style weight decay on every
parameter, no MLP, learned absolute positions, embedding dropout) are applied here, in this script only.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python scripts/mqar_plateau.py --arch mla --vocab 1024 --train 64,4 \
        --steps 1500 --batch 64 --tie --log /tmp/plateau.jsonl

Each call appends one JSON line to --log: the variant, the training curve (every --eval-every steps) and
`escape_step`, the first evaluation at which the validation loss is `--margin` nats below ln(V/2) (None if it
never is), and the final validation accuracy. docs/findings/mqar-plateau.md reports what this measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness.run.train as harness_train  # noqa: E402
import models  # noqa: E402, F401  (registers the mixers)
import tasks  # noqa: E402, F401  (registers the tasks)
from harness.config import apply_override  # noqa: E402
from harness.errors import HarnessError  # noqa: E402
from harness.run.device import resolve_device  # noqa: E402
from harness.run.train import TrainConfig  # noqa: E402
from models.backbone import LanguageModel  # noqa: E402
from models.presets import SIZES, Size, model_config, parse_architecture  # noqa: E402
from tasks.mqar import MQAR, MQARConfig  # noqa: E402


def pairs_list(text: str) -> tuple[tuple[int, int], ...]:
    """'64,4;128,8' -> ((64, 4), (128, 8))."""
    return tuple(tuple(int(x) for x in part.split(",")) for part in text.split(";") if part)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="mla")
    p.add_argument(
        "--size", default="tiny", help="size preset; --d-model/--layers/--heads override its fields"
    )
    p.add_argument("--d-model", type=int)
    p.add_argument("--layers", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--head-dim", type=int)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument(
        "--train", type=pairs_list, default=((64, 4),), help="seq_len,pairs;... of the training mix"
    )
    p.add_argument("--test", type=pairs_list, help="default: the training settings")
    p.add_argument("--num-train", type=int, default=20000)
    p.add_argument("--num-test", type=int, default=256)
    p.add_argument("--power-a", type=float, default=0.01)
    p.add_argument("--zero-filler", action="store_true", help="0 instead of random tokens between queries")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--beta2", type=float, default=0.95, help="AdamW beta2 (Zoology: PyTorch's default 0.999)")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-batch", type=int, default=256, help="sequences per evaluation batch")
    p.add_argument("--target", type=float, default=None, help="stop at this validation accuracy")
    p.add_argument("--tie", action="store_true", help="tie the LM head to the input embedding")
    p.add_argument("--init-std", type=float, default=0.02)
    p.add_argument("--wd-all", action="store_true", help="decay every parameter, embeddings too (Zoology)")
    p.add_argument("--no-mlp", action="store_true", help="drop the blocks' MLPs (Zoology's MQAR models)")
    p.add_argument("--abs-pos", action="store_true", help="add learned absolute position embeddings")
    p.add_argument("--embed-dropout", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--margin", type=float, default=1.0, help="nats below ln(V/2) that count as off the plateau"
    )
    p.add_argument(
        "--time-limit", type=float, help="stop after this many seconds of training (curve so far kept)"
    )
    p.add_argument(
        "--mixer-field",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a field of the mixers' configs, e.g. A_init_range=1,1 or dt_init_range=0.001,0.01 (repeatable)",
    )
    p.add_argument("--tag", default="")
    p.add_argument("--log", type=Path)
    return p


class Extras(nn.Module):
    """Learned absolute positions and dropout after the embedding, wrapped around the harness's embedding."""

    def __init__(self, embed: nn.Embedding, max_len: int, positions: bool, dropout: float, std: float):
        super().__init__()
        self.embed = embed
        self.weight = embed.weight  # the LM head may be tied to it
        self.positions = nn.Embedding(max_len, embed.embedding_dim) if positions else None
        if self.positions is not None:
            nn.init.normal_(self.positions.weight, std=std)
        self.dropout = nn.Dropout(dropout)

    def forward(self, ids):
        x = self.embed(ids)
        if self.positions is not None:
            x = x + self.positions(torch.arange(ids.shape[1], device=ids.device))
        return self.dropout(x)


class OutOfTime(Exception):
    pass


def timed_evaluate(evaluate, deadline: float | None, seen: list):
    """harness.run.train.evaluate that keeps every result in `seen` and ends training once `deadline` passed."""

    def wrapper(*args, **kwargs):
        metrics = evaluate(*args, **kwargs)
        seen.append(metrics)
        if deadline is not None and time.perf_counter() > deadline:
            raise OutOfTime
        return metrics

    return wrapper


def decay_everything(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on every parameter (Zoology's trainer); the harness spares embeddings and vectors."""
    return torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
    )


def bad_input(message: str) -> None:
    """One line on stderr and exit 2, before anything is trained or written."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def with_mixer_fields(config, assignments: list[str]):
    """`config` with FIELD=VALUE set on every mixer config that has FIELD, the value parsed to the field's type
    as `harness run --set model.MIXER.FIELD=VALUE` parses it."""
    for assignment in assignments:
        name, _, value = assignment.partition("=")
        hits = [m for m, c in config.mixers.items() if name in {f.name for f in dataclasses.fields(c)}]
        if not hits:
            bad_input(f"--mixer-field {assignment}: no mixer of this model has a field '{name}'")
        try:
            for mixer in hits:
                config = apply_override(config, ("mixers", mixer, name), value)
        except HarnessError as err:
            bad_input(f"--mixer-field {assignment}: {err}")
    return config


def build_model(args) -> LanguageModel:
    base = SIZES.get(args.size)
    size = Size(
        d_model=args.d_model or base.d_model,
        n_layers=args.layers or base.n_layers,
        num_heads=args.heads or base.num_heads,
        head_dim=args.head_dim or base.head_dim,
    )
    config = model_config(
        parse_architecture(args.arch),
        size,
        args.vocab,
        tie_embeddings=args.tie,
        init_std=args.init_std,
    )
    if args.mixer_field:
        config = with_mixer_fields(config, args.mixer_field)
    torch.manual_seed(args.seed)
    model = LanguageModel(config)
    if args.no_mlp:
        for block in model.blocks:
            block.mlp = None
    if args.abs_pos or args.embed_dropout:
        max_len = max(length for length, _ in (*args.train, *(args.test or ())))
        model.embed = Extras(model.embed, max_len, args.abs_pos, args.embed_dropout, args.init_std)
    return model


def run(args) -> dict:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    task_config = MQARConfig(
        vocab_size=args.vocab,
        train_settings=args.train,
        test_settings=args.test or args.train,
        num_train=args.num_train,
        num_test=args.num_test,
        power_a=args.power_a,
        random_non_queries=not args.zero_filler,
    )
    task = MQAR()
    train_slices = task.generate(task_config, "train", args.seed)
    valid_slices = task.generate(task_config, "valid", args.seed)
    model = build_model(args)
    train_config = TrainConfig(
        lr=args.lr,
        weight_decay=args.wd,
        warmup_steps=args.warmup,
        min_lr_ratio=args.min_lr_ratio,
        max_steps=args.steps,
        batch_size=args.batch,
        grad_clip=args.clip,
        betas=(0.9, args.beta2),
        eval_every=args.eval_every,
        eval_batch_size=args.eval_batch,
        target_accuracy=args.target,
        device=args.device,
    )
    original_optimizer, original_evaluate = harness_train.make_optimizer, harness_train.evaluate
    if args.wd_all:
        harness_train.make_optimizer = decay_everything
    seen: list[dict] = []
    deadline = None if args.time_limit is None else time.perf_counter() + args.time_limit
    harness_train.evaluate = timed_evaluate(original_evaluate, deadline, seen)
    start = time.perf_counter()
    history, out_of_time = [], False
    try:
        outcome = harness_train.train(
            model, train_slices, valid_slices, train_config, args.seed, resolve_device(args.device)
        )
        history = outcome.history
    except OutOfTime:
        out_of_time = True
    finally:
        harness_train.make_optimizer, harness_train.evaluate = original_optimizer, original_evaluate
    wall = time.perf_counter() - start
    if out_of_time:  # the trainer's history is lost with it: rebuild the validation curve from what was seen
        history = [
            dict(
                step=(i + 1) * args.eval_every,
                train_loss=float("nan"),
                valid_loss=float(np.nanmean([m["loss"] for m in metrics.values()])),
                valid_accuracy=float(np.nanmean([m["accuracy"] for m in metrics.values()])),
            )
            for i, metrics in enumerate(seen)
        ]
    plateau = math.log(args.vocab // 2)
    curve = [
        dict(
            step=p["step"],
            train_loss=round(p["train_loss"], 4),
            valid_loss=round(p["valid_loss"], 4),
            valid_accuracy=round(p["valid_accuracy"], 4),
        )
        for p in history
    ]
    escape = next((p["step"] for p in curve if p["valid_loss"] < plateau - args.margin), None)
    variant = {k: v for k, v in vars(args).items() if k not in ("log",)}
    return dict(
        variant=variant,
        plateau=round(plateau, 4),
        escape_step=escape,
        final_accuracy=curve[-1]["valid_accuracy"] if curve else None,
        best_accuracy=max((p["valid_accuracy"] for p in curve), default=None),
        steps=curve[-1]["step"] if curve else 0,
        out_of_time=out_of_time,
        wall_s=round(wall, 1),
        curve=curve,
    )


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    start = time.time()
    record = run(args)
    line = json.dumps(record, default=str)
    if args.log:
        args.log.parent.mkdir(parents=True, exist_ok=True)
        with args.log.open("a") as f:
            f.write(line + "\n")
    changed = {
        f.dest: getattr(args, f.dest)
        for f in build_parser()._actions
        if f.dest not in ("help", "log") and getattr(args, f.dest) != f.default
    }
    print(
        f"{args.tag or ''} {changed} escape_step={record['escape_step']} final_acc={record['final_accuracy']}"
        f" best_acc={record['best_accuracy']} steps={record['steps']} ({time.time() - start:.0f} s)"
    )


if __name__ == "__main__":
    main()
