"""Named model presets: architectures (which mixer in which layer) and sizes (how wide and deep).

A model is named on the command line as `ARCH[@SIZE]`:

    kda, gdn, mamba2, any mixer   one mixer in every layer: every registered mixer is a model of its name (a
                                  plugin's too), unless a preset below has that name
    mla                           MLA in every layer, with RoPE (a preset); mla-nope without
    kimi                          3 kda : 1 mla, NoPE (Kimi Linear)
    gdn-h                         3 gdn : 1 mla, sigmoid output gate (the Kimi report's GDN-H baseline)
    gdn-sigmoid                   gdn in every layer with KDA's sigmoid output gate: against kda, the forget gate
                                  alone differs (per head vs per channel)
    kda:mla=1:1                   any ratio of registered mixers
    kimi@kimi-synth               an explicit size; without one the suite's scale picks it
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from harness.errors import HarnessError, UnknownName
from harness.registry import ARCHITECTURES, MIXERS, SIZES, unknown_message

from .backbone import ModelConfig


@dataclass(frozen=True, kw_only=True)
class Size:
    d_model: int
    n_layers: int
    num_heads: int
    head_dim: int
    description: str = ""
    chunk_size: int | None = None
    """Tokens per chunk of the chunked recurrent mixers (kda, gdn, mamba2, ...) at this size; None: each mixer's
    own default (64)."""


# tiny trains on the CPU, through the PyTorch chunked path, whose per-chunk work grows with the chunk: one layer's
# forward and backward at batch 32 x 64 tokens, 2 heads of 32, one thread took 68 / 90 / 102 ms with a per-channel
# gate (kda) and 25 / 31 / 36 ms with a scalar gate (gdn, mamba2) at chunks of 16 / 32 / 64. The result is the same
# function of the inputs at any chunk size (up to rounding).
SIZES.add(
    "tiny",
    Size(d_model=64, n_layers=2, num_heads=2, head_dim=32, chunk_size=16, description="CPU minutes; CI"),
)
SIZES.add(
    "kimi-synth",
    Size(d_model=256, n_layers=2, num_heads=2, head_dim=128, description="Kimi report synthetic tests"),
)
SIZES.add(
    "small", Size(d_model=256, n_layers=4, num_heads=4, head_dim=64, description="one GPU, under an hour")
)
# Zoology's MQAR models (Arora et al. 2023, Figure 2): 2 layers at widths 64-512; heads of 64 channels, so that
# every recurrent state (kda/gdn H x 64 x 64, mamba2 2d x 64) grows with the width as in that figure.
for _width in (64, 128, 256, 512):
    SIZES.add(
        f"zoology-{_width}",
        Size(
            d_model=_width,
            n_layers=2,
            num_heads=_width // 64,
            head_dim=64,
            description=f"Zoology MQAR width {_width}, 2 layers",
        ),
    )
# The efficiency benchmark's width (`harness bench models`, docs/efficiency.md): the setup of the decode
# measurements in issue #19, d_model 1024, 8 layers, 8 heads of 128; 164-187M parameters with a 32K vocabulary.
SIZES.add(
    "bench-167m",
    Size(d_model=1024, n_layers=8, num_heads=8, head_dim=128, description="~167M params, vocab 32K; bench"),
)
SIZES.add(
    "lm-small",
    Size(
        d_model=384, n_layers=8, num_heads=6, head_dim=64, description="~20M parameters with an 8K vocabulary"
    ),
)


@dataclass(frozen=True, kw_only=True)
class Architecture:
    mixers: tuple[str, ...]
    """Distinct mixers, majority first."""
    ratio: tuple[int, ...]
    """How many layers of each mixer per period of the pattern."""
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Mixer config fields that differ from the mixer's defaults, by mixer name; a value may be a function of
    the Size (e.g. a RoPE width of half the head)."""
    description: str = ""

    def layers(self, n_layers: int) -> tuple[str, ...]:
        """Repeat the pattern over n_layers; the last layer is always the last mixer of the pattern.

        That is how the released Kimi-Linear places its attention layers (every 4th and the last); it also
        keeps one attention layer in a 2-layer hybrid, where 3:1 would otherwise be all KDA.
        """
        period = [name for name, count in zip(self.mixers, self.ratio, strict=True) for _ in range(count)]
        layers = [period[i % len(period)] for i in range(n_layers)]
        layers[-1] = period[-1]
        return tuple(layers)


# The full-attention baseline gets decoupled RoPE (half a head wide, as DeepSeek-V2's 64 of 128): a model of
# attention layers alone has no convolution or recurrence to tell it token order. Measured on the smoke MQAR
# (tiny, CPU): with RoPE 0.99/1.00 accuracy at 2/4 pairs after 400 steps; NoPE 0.90/0.68 after all 1500 steps.
# The NoPE variant is kept under its own name; in the hybrids the linear layers supply order and MLA is NoPE, as
# in Kimi Linear.
ARCHITECTURES.add(
    "mla",
    Architecture(
        mixers=("mla",),
        ratio=(1,),
        overrides={"mla": {"qk_rope_head_dim": lambda size: size.head_dim // 2}},
        description="MLA in every layer, decoupled RoPE (full-attention baseline)",
    ),
)
ARCHITECTURES.add(
    "mla-nope", Architecture(mixers=("mla",), ratio=(1,), description="MLA in every layer, NoPE")
)
ARCHITECTURES.add(
    "kimi", Architecture(mixers=("kda", "mla"), ratio=(3, 1), description="Kimi Linear: 3 kda : 1 mla, NoPE")
)
ARCHITECTURES.add(
    "gdn-h",
    Architecture(
        mixers=("gdn", "mla"),
        ratio=(3, 1),
        overrides={"gdn": {"output_gate": "sigmoid"}},
        description="Kimi report's GDN-H: 3 gdn : 1 mla, sigmoid output gate",
    ),
)

# GDN's SiLU output gate (its paper's) starts near zero with a random sign per channel, and on MQAR at V 8192 it
# kept GDN at chance where the same model with a sigmoid gate learnt like KDA (docs/findings/mqar-plateau.md).
# This preset is that model, so that a comparison of the two forget gates is one command (--models kda,gdn-sigmoid).
ARCHITECTURES.add(
    "gdn-sigmoid",
    Architecture(
        mixers=("gdn",),
        ratio=(1,),
        overrides={"gdn": {"output_gate": "sigmoid"}},
        description="gdn in every layer with a sigmoid output gate (as KDA's): the forget gate alone differs",
    ),
)

_RATIO = re.compile(r"^(?P<names>[\w-]+(?::[\w-]+)+)=(?P<counts>\d+(?::\d+)+)$")


def parse_architecture(name: str) -> Architecture:
    """A registered architecture (a preset), a mixer name (that mixer in every layer), or a ratio pattern such as
    'kda:mla=3:1'."""
    match = _RATIO.match(name)
    if not match:
        if name in ARCHITECTURES:
            return ARCHITECTURES.get(name)
        if name in MIXERS:
            return Architecture(mixers=(name,), ratio=(1,), description=f"{name} in every layer")
        raise UnknownName(unknown_message("model", name, [*ARCHITECTURES.names(), *MIXERS.names()]))
    names, counts = match["names"].split(":"), [int(c) for c in match["counts"].split(":")]
    if len(names) != len(counts) or min(counts) < 1:
        raise HarnessError(f"bad hybrid '{name}': give one positive count per mixer, e.g. kda:mla=3:1")
    for mixer in names:
        MIXERS.get(mixer)
    return Architecture(mixers=tuple(names), ratio=tuple(counts), description=f"hybrid {name}")


def split_model_token(token: str, default_size: str) -> tuple[str, str]:
    """'kimi@small' -> ('kimi', 'small'); 'kimi' -> ('kimi', default_size)."""
    arch, _, size = token.partition("@")
    return arch, size or default_size


def build_model_config(token: str, default_size: str, vocab_size: int, **fields: Any) -> ModelConfig:
    """The ModelConfig a model token stands for at a size."""
    arch_name, size_name = split_model_token(token, default_size)
    return model_config(parse_architecture(arch_name), SIZES.get(size_name), vocab_size, **fields)


def model_config(arch: Architecture, size: Size, vocab_size: int, **fields: Any) -> ModelConfig:
    """The ModelConfig of an architecture at a size (a registered one or one made up, e.g. by sizing)."""
    mixers = {}
    for mixer in arch.mixers:
        config_cls = MIXERS.get(mixer).Config
        config = config_cls.from_size(size.d_model, size.num_heads, size.head_dim)
        if size.chunk_size is not None and "chunk_size" in {f.name for f in dataclasses.fields(config)}:
            config = dataclasses.replace(config, chunk_size=size.chunk_size)
        fields_for_size = {k: v(size) if callable(v) else v for k, v in arch.overrides.get(mixer, {}).items()}
        mixers[mixer] = dataclasses.replace(config, **fields_for_size)
    return ModelConfig(
        vocab_size=vocab_size,
        d_model=size.d_model,
        layers=arch.layers(size.n_layers),
        mixers=mixers,
        **fields,
    )
