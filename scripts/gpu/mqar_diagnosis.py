"""MQAR at V 8192 on one GPU: the old settings against the fixed ones, many cells at once (docs/findings/mqar-plateau.md).

Every variant is one process of scripts/mqar_plateau.py (the harness's model, data and trainer, bf16 autocast on
CUDA), all sharing the GPU; each stops at --budget-s seconds of training if its steps are not done by then. The
summary table gives, per variant, the first evaluated step whose validation loss is 1 nat below the ln(V/2)
plateau ('escape'), the best and final validation accuracy and the steps reached.

    OUT=/tmp/mqar python3 scripts/gpu/mqar_diagnosis.py            # one H200, about 8 minutes
    python3 scripts/gpu/mqar_diagnosis.py --quick                  # CPU check of the script: tiny sizes, a minute

Writes $OUT/mqar_diagnosis.json (every variant's record with its curve) and $OUT/mqar_diagnosis.md (the table).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "scripts" / "mqar_plateau.py"

ZOOLOGY_MIX = "64,4;128,8;256,16"
RECALL_SMALL = [
    "--size",
    "small",
    "--train",
    "64,4;128,8;256,16;512,32",
    "--num-train",
    "50000",
    "--eval-batch",
    "64",
]
COMMON = ["--vocab", "8192", "--eval-every", "100", "--num-test", "200", "--steps", "3000"]


def variants(group: str) -> dict[str, list[str]]:
    """name -> arguments of scripts/mqar_plateau.py."""
    out: dict[str, list[str]] = {}
    if group in ("confirm", "all"):
        # The recall suite's small MQAR (d 256, 4 layers, lengths to 512, 50K examples): batch 64 as before, 256 now
        # (tasks/suites.py, _RECALL_SMALL_TRAIN).
        out["recall-small-mla-b64-old"] = ["--arch", "mla", *RECALL_SMALL, "--batch", "64"]
        for arch in ("mla", "kda", "gdn"):
            out[f"recall-small-{arch}-b256-new"] = ["--arch", arch, *RECALL_SMALL, "--batch", "256"]
        # The kimi suite's small MQAR (kimi-synth: d 256, 2 layers, 2 heads of 128; L/16 pairs, 100K examples):
        # before, one length at batch 32; now the mixture of lengths up to L, batch 128, 3000 steps.
        kimi = ["--size", "kimi-synth", "--num-train", "100000", "--eval-batch", "32"]
        out["kimi-256-mla-b32-old"] = ["--arch", "mla", *kimi, "--train", "256,16", "--batch", "32"]
        for length, arch in [(1024, "mla"), (1024, "kda"), (2048, "mla")]:
            mix = ";".join(f"{n},{n // 16}" for n in (64, 128, 256, 512, 1024, 2048) if n <= length)
            out[f"kimi-{length}-{arch}-b128-mix-new"] = [
                *["--arch", arch, *kimi, "--train", mix, "--test", f"{length},{length // 16}"],
                *["--batch", "128", "--steps", "3000", "--eval-every", "250"],
            ]
    if group in ("beta2", "all"):
        # the old batches with Zoology's AdamW beta2 (PyTorch's default 0.999) instead of the harness's 0.95
        out["recall-small-mla-b64-beta2"] = [
            "--arch",
            "mla",
            *RECALL_SMALL,
            "--batch",
            "64",
            "--beta2",
            "0.999",
        ]
        out["recall-small-kda-b64-beta2"] = [
            "--arch",
            "kda",
            *RECALL_SMALL,
            "--batch",
            "64",
            "--beta2",
            "0.999",
        ]
        for length in (256, 1024):
            kimi = ["--size", "kimi-synth", "--train", f"{length},{length // 16}", "--num-train", "100000"]
            out[f"kimi-{length}-mla-b32-beta2"] = [
                "--arch",
                "mla",
                *kimi,
                "--batch",
                "32",
                "--beta2",
                "0.999",
            ]
    if group in ("explore", "all"):
        # the recall suite's small MQAR (d 256, 4 layers, lengths to 512) and a Zoology-sized model (d 128, 2 layers)
        small = RECALL_SMALL
        z = ["--size", "tiny", "--d-model", "128", "--heads", "2", "--head-dim", "64"]
        z += ["--train", ZOOLOGY_MIX, "--num-train", "60000"]
        for name, base, arch, batch, tie in [
            ("recall-small-mla", small, "mla", 64, False),
            ("recall-small-mla-tied", small, "mla", 64, True),
            ("recall-small-mla-b256", small, "mla", 256, False),
            ("recall-small-mla-tied-b256", small, "mla", 256, True),
            ("recall-small-kda", small, "kda", 64, False),
            ("recall-small-kda-tied-b256", small, "kda", 256, True),
            ("z128-mla-b64", z, "mla", 64, False),
            ("z128-mla-b256", z, "mla", 256, False),
            ("z128-mla-b64-tied", z, "mla", 64, True),
            ("z128-mla-b256-tied", z, "mla", 256, True),
            ("z128-kda-b256", z, "kda", 256, False),
            ("z128-kda-b256-tied", z, "kda", 256, True),
        ]:
            out[name] = ["--arch", arch, *base, "--batch", str(batch), *(["--tie"] if tie else [])]
    return {name: [*COMMON, *args] for name, args in out.items()}


def quick(args: list[str]) -> list[str]:
    """The same variant at CPU size: V 256, tiny model, 40 steps of batch 16, lengths 64 and 128."""
    swap = {
        "--vocab": "256",
        "--steps": "40",
        "--batch": "16",
        "--num-train": "1000",
        "--eval-every": "20",
        "--num-test": "32",
        "--size": "tiny",
        "--d-model": "32",
        "--head-dim": "16",
        "--train": "64,4;128,8",
        "--test": "128,8",
    }
    out = []
    for flag, value in zip(args, [*args[1:], None], strict=True):
        if flag.startswith("--") and value is not None and not value.startswith("--"):
            out += [flag, swap.get(flag, value)]
        elif flag.startswith("--"):
            out.append(flag)
    return out


def run_all(
    table: dict[str, list[str]], device: str, parallel: int, budget_s: float, out: Path
) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ, TQDM_DISABLE="1", PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    )
    if device == "cpu":
        env["OMP_NUM_THREADS"] = "1"
    pending = list(table.items())
    running: dict[str, tuple[subprocess.Popen, Path]] = {}
    records = []
    while pending or running:
        while pending and len(running) < parallel:
            name, args = pending.pop(0)
            log = out / f"{name}.jsonl"
            log.unlink(missing_ok=True)
            cmd = [sys.executable, str(DRIVER), *args, "--device", device, "--tag", name, "--log", str(log)]
            cmd += ["--time-limit", str(budget_s)]
            stderr = (out / f"{name}.err").open("w")
            running[name] = (subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr), log)
            print(f"started {name}: {' '.join(args)}", flush=True)
        time.sleep(2)
        for name, (proc, log) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            if proc.returncode == 0 and log.exists():
                record = json.loads(log.read_text().splitlines()[-1])
            else:
                tail = (out / f"{name}.err").read_text()[-2000:]
                record = dict(variant=dict(tag=name), error=f"exit {proc.returncode}: {tail}")
            record["name"] = name
            records.append(record)
            print(f"done {name}: {summary_row(record)}", flush=True)
    return sorted(records, key=lambda r: list(table).index(r["name"]))


def summary_row(record: dict) -> str:
    if "error" in record:
        return f"| {record['name']} | failed | | | | |"
    return (
        f"| {record['name']} | {record['escape_step']} | {record['best_accuracy']:.3f} | {record['final_accuracy']:.3f}"
        f" | {record['steps']}{' (time)' if record.get('out_of_time') else ''} | {record['wall_s']:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--group", default="confirm", choices=("confirm", "beta2", "kimi-mix", "explore", "all")
    )
    parser.add_argument("--only", help="comma-separated variant names to run (default: the whole group)")
    parser.add_argument("--quick", action="store_true", help="tiny CPU-sized versions of the variants")
    parser.add_argument("--device", help="default: cuda if available, else cpu")
    parser.add_argument("--parallel", type=int, help="processes at once (default: all on a GPU, 2 on a CPU)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="training seconds per variant at most")
    args = parser.parse_args()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    table = variants(args.group)
    if args.only:
        table = {k: v for k, v in table.items() if k in args.only.split(",")}
    if args.quick:
        table = {k: quick(v) for k, v in table.items()}
    parallel = args.parallel or (len(table) if device.startswith("cuda") else 2)
    out = Path(os.environ.get("OUT", "/tmp/mqar_diagnosis"))
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    # the per-variant logs stay outside $OUT (only a few files come back from a lent machine)
    records = run_all(table, device, parallel, args.budget_s, Path(tempfile.mkdtemp(prefix="mqar_runs_")))
    lines = [
        f"MQAR diagnosis on {device}{' (quick)' if args.quick else ''}: {len(records)} variants,"
        f" {time.time() - start:.0f} s wall",
        "",
        "| variant | escape step | best acc | final acc | steps | train s |",
        "|---|---|---|---|---|---|",
        *[summary_row(r) for r in records],
    ]
    text = "\n".join(lines)
    print("\n" + text)
    (out / "mqar_diagnosis.md").write_text(text + "\n")
    (out / "mqar_diagnosis.json").write_text(json.dumps(dict(device=device, records=records), indent=1))


if __name__ == "__main__":
    main()
