"""Time one training step of the lm suite's small models on a GPU and list where the GPU time goes.

    python scripts/profile_lm_step.py --models kda,gdn,mla --batch 32 --seq-len 1024

Per model, with packed documents (segment ids: the lm suite's training batches) and without: median step time
(forward, backward, AdamW) over a few steps after warm-up, tokens/s, then the top CUDA kernels of one profiled
step by total time.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from models.backbone import LanguageModel
from models.presets import build_model_config


def make_batch(batch: int, seq_len: int, vocab: int, mean_doc: int, device):
    ids = torch.randint(0, vocab, (batch, seq_len), device=device)
    # document boundaries: a new document starts after each token with probability 1 / mean_doc
    starts = torch.rand(batch, seq_len, device=device) < 1 / mean_doc
    starts[:, 0] = True
    segments = starts.long().cumsum(1)
    return ids, segments


def step_fn(model, optimizer, ids, segments):
    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(ids) if segments is None else model(ids, segment_ids=segments)
        loss = F.cross_entropy(logits.float().flatten(0, 1), ids.roll(-1, 1).flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="kda,gdn,mla")
    parser.add_argument("--size", default="lm-small")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--mean-doc", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    device = torch.device("cuda")
    for name in args.models.split(","):
        model = LanguageModel(build_model_config(name, args.size, vocab_size=args.vocab)).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        ids, segments = make_batch(args.batch, args.seq_len, args.vocab, args.mean_doc, device)
        for label, segs in (("packed", segments), ("plain", None)):
            step = step_fn(model, optimizer, ids, segs)
            for _ in range(3):
                step()
            torch.cuda.synchronize()
            times = []
            for _ in range(args.steps):
                start = time.perf_counter()
                step()
                torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            median = sorted(times)[len(times) // 2]
            print(
                f"{name:7s} {label:6s} step {median * 1e3:8.1f} ms  {args.batch * args.seq_len / median / 1e3:8.1f} K tok/s"
                f"  ({model.kernel_names(device)}, {model.num_params() / 1e6:.1f}M params)",
                flush=True,
            )
            with torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CUDA, torch.profiler.ProfilerActivity.CPU]
            ) as prof:
                step()
                torch.cuda.synchronize()
            print(
                prof.key_averages().table(
                    sort_by="self_cuda_time_total", row_limit=args.top, max_name_column_width=60
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
