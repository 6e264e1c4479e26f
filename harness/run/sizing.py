"""Matched sizes: widen or narrow each architecture until its parameter count is within a tolerance of a target.

A fair comparison holds the parameter budget fixed (Zoology, MAD). Architectures differ in what a layer of the
same width costs (MLA's latent projections, Mamba2's expanded inner width, KDA's low-rank gates), so each gets
its own width. The search keeps the size preset's depth and number of heads and changes, in this order:

1. the width: head_dim in steps of 8, d_model in proportion (d_model = heads x head_dim for every preset);
2. only if no width lands within the tolerance, the MLP's hidden width (mlp_ratio, in steps of 8 units),
   at the width closest to the target.

What is matched is the non-embedding parameter count by default: at the small widths of synthetic tasks an
embedding of a large vocabulary would otherwise be most of the budget (V 8192 x d 64 x 2 is ~1M) and the
match would say little about the sequence mixers. `count="total"` matches everything.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import torch

from harness.errors import HarnessError
from harness.registry import SIZES
from models.backbone import LanguageModel, ModelConfig
from models.presets import Size, model_config, parse_architecture, split_model_token

_COUNT = re.compile(r"^\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([kmg]?)\s*$", re.IGNORECASE)


def parse_count(text: str) -> int:
    """'1M' -> 1_000_000, '250k' -> 250_000, '1.5e6' -> 1_500_000."""
    match = _COUNT.match(str(text))
    if not match:
        raise HarnessError(f"--params expects a count such as 1M, 250K or 1500000, got '{text}'")
    scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[match[2].lower()]
    return int(round(float(match[1]) * scale))


@dataclass(frozen=True, kw_only=True)
class SizeMatch:
    """A parameter target for every model of a run."""

    params: int
    """Target parameter count."""
    tolerance: float = 0.05
    """Accepted relative deviation from the target (0.05 = ±5%)."""
    count: str = "non-embedding"
    """'non-embedding' or 'total' parameters."""

    def __post_init__(self):
        if self.params <= 0 or not 0 < self.tolerance < 1:
            raise HarnessError(f"--params must be positive and --tolerance in (0, 1), got {self}")
        if self.count not in ("non-embedding", "total"):
            raise HarnessError(f"--count must be non-embedding or total, got '{self.count}'")

    @property
    def label(self) -> str:
        return f"~{_short(self.params)}"


@dataclass(frozen=True, kw_only=True)
class Sized:
    token: str
    config: ModelConfig
    size: Size
    params: int
    non_embedding_params: int
    counted: int
    """The count that was matched."""

    def state_size(self, seq_len: int) -> int:
        return _meta_model(self.config).state_size(seq_len)


def match_size(token: str, default_size: str, vocab_size: int, target: SizeMatch) -> Sized:
    """The config of model `token` whose parameter count is within the tolerance of the target.

    Raises HarnessError (naming the closest count found) if neither width nor MLP width can reach it."""
    arch_name, size_name = split_model_token(token, default_size)
    arch, base = parse_architecture(arch_name), SIZES.get(size_name)

    def at(head_dim: int, mlp_ratio: float | None = None) -> Sized:
        d_model = max(8, 8 * round(base.d_model * head_dim / base.head_dim / 8))
        size = dataclasses.replace(
            base, d_model=d_model, head_dim=head_dim, description=f"sized {target.label}"
        )
        fields = {} if mlp_ratio is None else {"mlp_ratio": mlp_ratio}
        config = model_config(arch, size, vocab_size, **fields)
        model = _meta_model(config)
        total, non_embedding = model.num_params(), model.num_params(non_embedding=True)
        counted = non_embedding if target.count == "non-embedding" else total
        return Sized(
            token=token,
            config=config,
            size=size,
            params=total,
            non_embedding_params=non_embedding,
            counted=counted,
        )

    def error(candidate: Sized) -> float:
        return candidate.counted / target.params - 1

    # params grow with head_dim: walk up in steps of 8 until past the target, keep the closest
    best, head_dim = at(8), 8
    while best.counted < target.params and head_dim < 4096:
        head_dim += 8
        candidate = at(head_dim)
        if abs(error(candidate)) < abs(error(best)):
            best = candidate
        if candidate.counted >= target.params:
            break
    if abs(error(best)) <= target.tolerance:
        return best
    # between two widths: close the gap with the MLP (3 matrices of d_model x hidden per block with an MLP)
    config = best.config
    mlp_blocks = sum(1 for name in config.layers if getattr(config.mixers[name], "block_mlp", True))
    if mlp_blocks:
        d = config.d_model
        hidden = 8 * -(-int(config.mlp_ratio * 2 / 3 * d) // 8)
        wanted = hidden + (target.params - best.counted) / (3 * d * mlp_blocks)
        for new_hidden in sorted({8 * max(1, int(wanted // 8)), 8 * max(1, -(-int(wanted) // 8))}):
            # the backbone computes hidden = 8 * ceil(int(ratio * 2/3 * d) / 8): aim half a unit below
            candidate = at(best.size.head_dim, round((new_hidden - 0.5) * 1.5 / d, 6))
            if abs(error(candidate)) < abs(error(best)):
                best = candidate
    if abs(error(best)) > target.tolerance:
        raise HarnessError(
            f"cannot size {token} to {_short(target.params)} {target.count} parameters within "
            f"±{target.tolerance:.0%}: the closest is {_short(best.counted)} ({error(best):+.1%}); "
            "widen the tolerance or pick another size preset"
        )
    return best


def _meta_model(config: ModelConfig) -> LanguageModel:
    # parameters on the meta device: counted and shaped, never allocated
    with torch.device("meta"):
        return LanguageModel(config)


def _short(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= 0.9995 * size:  # 999_600 is 1M, not 1e+03K
            return f"{n / size:.3g}{unit}"
    return str(int(n))


def size_table(sized: list[Sized], target: SizeMatch, seq_len: int) -> str:
    """Markdown table: each model's width, parameter counts, deviation from the target and state size."""
    import pandas as pd  # slow to import; only the table needs it

    rows = []
    for item in sized:
        config = item.config
        rows.append(
            {
                "model": item.token,
                "d_model": config.d_model,
                "heads x dim": f"{item.size.num_heads} x {item.size.head_dim}",
                "mlp_ratio": f"{config.mlp_ratio:.3g}",
                "params": _short(item.params),
                "non-emb params": _short(item.non_embedding_params),
                "vs target": f"{item.counted / target.params - 1:+.1%}",
                f"state @ {seq_len}": _short(item.state_size(seq_len)),
            }
        )
    return pd.DataFrame(rows).to_markdown(index=False)
