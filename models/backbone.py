"""The shared language-model backbone: only the sequence mixer changes between architectures (Zoology's frame).

    embedding -> n x [RMSNorm -> mixer -> + -> RMSNorm -> SwiGLU MLP -> +] -> RMSNorm -> LM head

A mixer is any registered `Mixer` subclass; the backbone never branches on a mixer's name. A mixer whose
config has `block_mlp = False` gets a block without the MLP (Mamba2 as in its paper).

Decoding: `LanguageModel.forward(ids, cache=ModelCache(...), attention_mask=...)` runs a prompt and then one token
at a time, each mixer keeping what it needs in its layer's dict of the cache. Without a cache and a mask the
forward is the training path, unchanged. A static cache (`models/decoding.py: StaticCache`) preallocates every
tensor for a maximum length, so that the one-token step can be captured as a CUDA graph and replayed.

Packed documents: `LanguageModel.forward(ids, segment_ids=...)` keeps documents packed into one row apart (a token
mixes only with earlier tokens of its own document). Mixers that say `supports_segments` do it themselves
(variable-length kernels, block-diagonal attention masks); for a model with any other mixer the backbone cuts
the rows into one sequence per document instead, which resets every state at a boundary at the cost of padding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.registry import MIXERS

from .layers import PackedDocuments, RMSNorm


class Mixer(nn.Module):
    """A sequence mixer: (B, T, D) -> (B, T, D), causal.

    Subclasses set `Config` (a frozen dataclass with a `from_size` classmethod), are registered with
    `@MIXERS.register(name)` and take `(d_model, config, kernel_impl)` in their constructor.

    `forward(x, state=None, attention_mask=None)`: `state` is this layer's dict of the decoding cache (None when
    training): the mixer continues from what it holds and updates it in place. `attention_mask` (B, past + T) marks
    real tokens 1 and pads 0 for every token seen so far (left padding); pads must leave the outputs of real tokens
    as they are without them. Training calls `forward(x)` alone, so a new mixer can be trained and compared before
    it supports decoding (generate() then fails on it with a TypeError).
    """

    Config: ClassVar[type]
    supports_segments: ClassVar[bool] = False
    """True if `forward(x, documents=PackedDocuments(...))` keeps documents packed into a row apart; otherwise the
    backbone runs each document as its own sequence."""

    def init_weights(self, std: float) -> None:
        """Initialise plain weights (special parameters such as A_log were set in __init__). Default: normal(0, std)
        linear weights and zero biases, as the backbone; a mixer whose paper initialises otherwise overrides this."""
        normal_init_linears(self, std)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def state_size(self, seq_len: int) -> int:
        """Numbers this mixer holds per sequence at inference after `seq_len` tokens (recurrent state or cache)."""
        raise NotImplementedError

    def cache_bytes(self, seq_len: int, dtype: torch.dtype) -> int:
        """Bytes of this mixer's decoding cache per sequence after `seq_len` tokens, activations in `dtype`."""
        raise NotImplementedError

    def kernel_name(self, device: torch.device | str) -> str:
        """The compute path this mixer's forward takes on `device`, recorded in results (e.g. 'gdr:torch')."""
        raise NotImplementedError

    # A static cache (models/decoding.py): optional; a mixer without `allocate_cache` decodes with the dynamic one.
    growing_cache_keys: ClassVar[tuple[str, ...]] = ()
    """Keys of this mixer's cache tensors that grow with the sequence (token axis 1), e.g. MLA's latents."""

    def allocate_cache(
        self, batch: int, max_len: int, dtype: torch.dtype, device: torch.device
    ) -> dict[str, Tensor]:
        """Every tensor this mixer's decoding state will hold, preallocated (zeros) for `batch` sequences of up to
        `max_len` tokens. With a static cache the mixer must update them in place (`put_state`), and its
        one-token step must read the position from `state.position` (a tensor), not from Python numbers, so that
        the step can be captured in a CUDA graph."""
        raise NotImplementedError(
            f"{type(self).__name__} has no static cache (Mixer.allocate_cache); decode it with model.new_cache()"
        )

    def fill_cache(self, state: dict[str, Tensor], start: int, end: int) -> None:
        """Fill positions [start, end) of a static cache with made-up values instead of computing them (for
        benchmarks: a decode step costs the same whatever the cache holds). A state of fixed size needs nothing."""


def put_state(state: dict[str, Tensor], key: str, value: Tensor) -> None:
    """state[key] = value; in a static cache, a copy into the preallocated tensor (whose address a captured CUDA
    graph reads and writes)."""
    if getattr(state, "static", False):
        if key not in state:
            raise KeyError(f"static cache has no '{key}': the mixer's allocate_cache must preallocate it")
        state[key].copy_(value)
    else:
        state[key] = value


def normal_init_linears(module: nn.Module, std: float) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


# Metadata of a mixer-config field added after results were stored: left out of config hashes while it holds its
# default, so that cells planned before it existed keep their ids (harness.config.ADDED_LATER, spelt out here
# because models do not import the harness's config module; a test checks the two agree).
ADDED_LATER = {"hash_when_default": False}


def require_sizes(config: Any, *names: str, minimum: int = 1) -> None:
    """Raise ValueError for the first of the fields `names` of `config` below `minimum` (widths, head counts,
    kernel and chunk sizes; None passes, for optional sizes). Configs call it in __post_init__, so that an
    impossible size is refused when the sweep is planned, not as a shape error deep in a cell."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value < minimum:
            raise ValueError(f"{name} must be at least {minimum}, got {value}")


def require_range(config: Any, name: str, low: float = 0.0) -> None:
    """Raise ValueError unless the field `name` is a pair low < a <= b < inf (an initialisation range)."""
    a, b = getattr(config, name)
    if not (low < a <= b and math.isfinite(b)):
        raise ValueError(f"{name} must be a range {low} < a <= b (finite), got ({a}, {b})")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    vocab_size: int = 8192
    """Token vocabulary, set by the task."""
    d_model: int = 64
    """Width of the residual stream."""
    layers: tuple[str, ...] = ("kda", "kda")
    """Mixer name of every layer, first to last (a hybrid is just a mixed list)."""
    mixers: dict[str, Any] = field(default_factory=dict)
    """Config of each mixer named in `layers` (a dataclass per name; defaults from the size preset)."""
    mlp_ratio: float = 4.0
    """SwiGLU hidden width is mlp_ratio * 2/3 * d_model, rounded up to a multiple of 8 (parameters of a 4x MLP)."""
    norm_eps: float = 1e-6
    """RMSNorm epsilon."""
    tie_embeddings: bool = False
    """Share the input embedding with the LM head."""
    init_std: float = 0.02
    """Standard deviation of the normal initialisation of linear and embedding weights."""
    kernel_impl: Literal["auto", "torch", "triton", "reference"] = "auto"
    """Kernels of the gated delta rule and of MLA's decode attention: auto, torch, triton or reference."""

    def __post_init__(self):
        if not self.layers:
            raise ValueError("a model needs at least one layer")
        require_sizes(self, "vocab_size", "d_model")
        for name in ("mlp_ratio", "norm_eps"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        if not 0 <= self.init_std < math.inf:
            raise ValueError(f"init_std must be a finite number >= 0, got {self.init_std}")
        missing = [name for name in dict.fromkeys(self.layers) if name not in self.mixers]
        if missing:
            raise ValueError(f"no config for mixer(s) {missing} named in layers")


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, ratio: float):
        super().__init__()
        hidden = 8 * -(-int(ratio * 2 / 3 * d_model) // 8)
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        name = config.layers[layer_idx]
        mixer_config = config.mixers[name]
        self.mixer_name = name
        self.mixer_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mixer = MIXERS.get(name)(config.d_model, mixer_config, kernel_impl=config.kernel_impl)
        self.mlp = None
        if getattr(mixer_config, "block_mlp", True):
            self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
            self.mlp = SwiGLU(config.d_model, config.mlp_ratio)

    def forward(
        self,
        x: Tensor,
        state: dict[str, Tensor] | None = None,
        attention_mask: Tensor | None = None,
        documents: PackedDocuments | None = None,
    ) -> Tensor:
        if documents is not None:
            x = x + self.mixer(self.mixer_norm(x), documents=documents)
        elif state is None and attention_mask is None:
            # training and plain scoring: a mixer needs no decoding support to be trained and evaluated
            x = x + self.mixer(self.mixer_norm(x))
        else:
            x = x + self.mixer(self.mixer_norm(x), state=state, attention_mask=attention_mask)
        if self.mlp is not None:
            x = x + self.mlp(self.mlp_norm(x))
        return x


class LayerState(dict):
    """One layer's part of a decoding cache: name -> tensor, filled by that layer's mixer, plus what the mixer may
    ask of the cache: `past` (tokens seen before this call), and for a static cache `static`, `position` (the
    same count as a (1,) tensor on the device: what a captured graph step reads) and `pad` ((B,) leading pads of
    every row, set from the prompt's attention mask)."""

    def __init__(self, cache: ModelCache):
        super().__init__()
        self._cache = cache

    @property
    def past(self) -> int:
        return self._cache.seen_tokens

    @property
    def static(self) -> bool:
        return self._cache.static

    @property
    def position(self) -> Tensor | None:
        return self._cache.position

    @property
    def pad(self) -> Tensor | None:
        return self._cache.pad


class ModelCache:
    """What a model keeps between calls when decoding: one dict of tensors per layer, filled by that layer's mixer
    (recurrent and convolution states, or MLA's latent cache), and the number of tokens seen (pads included).
    Tensors are replaced as they grow; `models/decoding.py: StaticCache` preallocates them instead."""

    # read by transformers' generate(): this cache cannot be compiled or cropped
    is_compileable = False
    is_croppable = False
    static = False
    position: Tensor | None = None
    pad: Tensor | None = None

    def __init__(self, num_layers: int):
        self.layers: list[LayerState] = [LayerState(self) for _ in range(num_layers)]
        self.seen_tokens = 0

    def begin(self, input_ids: Tensor, attention_mask: Tensor | None) -> None:
        """Called by the model before a forward continues from this cache (a static cache checks the fit)."""

    def advance(self, tokens: int) -> None:
        """Called by the model after a forward of `tokens` new tokens."""
        self.seen_tokens += tokens

    def replay(self, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor | None:
        """The logits of a step run by a captured graph, or None: the model runs the step itself."""
        return None

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    @property
    def is_linear(self) -> list[bool]:
        # read by transformers' generate() for a cache it is given: every layer counts the tokens seen, so the
        # prompt is cut to what the cache has not seen yet
        return [False] * len(self.layers)

    def reorder_cache(self, beam_idx: Tensor) -> None:
        """Keep the rows of beam_idx (beam search)."""
        for state in self.layers:
            for key, tensor in state.items():
                state[key] = tensor.index_select(0, beam_idx.to(tensor.device))

    def nbytes(self) -> int:
        """Bytes held, all sequences of the batch together."""
        return sum(t.numel() * t.element_size() for state in self.layers for t in state.values())


class LanguageModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(len(config.layers)))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self._init_weights()
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def _init_weights(self) -> None:
        std = self.config.init_std
        nn.init.normal_(self.embed.weight, std=std)
        nn.init.normal_(self.lm_head.weight, std=std)
        for block in self.blocks:
            block.mixer.init_weights(std)
            if block.mlp is not None:
                normal_init_linears(block.mlp, std)

    def forward(
        self,
        input_ids: Tensor,
        cache: ModelCache | None = None,
        attention_mask: Tensor | None = None,
        segment_ids: Tensor | None = None,
    ) -> Tensor:  # (B, T) -> (B, T, vocab)
        """Logits. With a cache, continue from it (and update it); attention_mask (B, past + T): 1 real, 0 pad.
        segment_ids (B, T): documents packed into a row, kept apart (see the module docstring)."""
        if cache is not None and (logits := cache.replay(input_ids, attention_mask)) is not None:
            return logits  # a static cache's captured one-token step
        return self.lm_head(self.hidden_states(input_ids, cache, attention_mask, segment_ids))

    def hidden_states(
        self,
        input_ids: Tensor,
        cache: ModelCache | None = None,
        attention_mask: Tensor | None = None,
        segment_ids: Tensor | None = None,
    ) -> Tensor:  # (B, T) -> (B, T, D)
        """The final normalised hidden states, before the LM head: what scoring a few positions needs (the head
        over every position of a long batch is most of the memory of an evaluation)."""
        if segment_ids is not None:
            if cache is not None or attention_mask is not None:
                raise ValueError(
                    "segment_ids is for training and scoring packed rows, not with a cache or mask"
                )
            if not all(block.mixer.supports_segments for block in self.blocks):
                return per_document(self, input_ids, segment_ids)
        documents = None if segment_ids is None else PackedDocuments(segment_ids)
        if cache is not None:
            cache.begin(input_ids, attention_mask)
        x = self.embed(input_ids)
        for i, block in enumerate(self.blocks):
            if documents is not None:
                x = block(x, documents=documents)
                continue
            x = block(x, None if cache is None else cache.layers[i], attention_mask)
        if cache is not None:
            cache.advance(input_ids.shape[1])
        return self.norm(x)

    def new_cache(self) -> ModelCache:
        return ModelCache(len(self.blocks))

    def num_params(self, non_embedding: bool = False) -> int:
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= self.embed.weight.numel()
            if not self.config.tie_embeddings:
                total -= self.lm_head.weight.numel()
        return total

    def state_size(self, seq_len: int) -> int:
        """Numbers held per sequence at inference after seq_len tokens, summed over layers."""
        return sum(block.mixer.state_size(seq_len) for block in self.blocks)

    def cache_bytes(self, seq_len: int, dtype: torch.dtype = torch.float32) -> int:
        """Bytes of the decoding cache per sequence after seq_len tokens (activations in dtype), summed over layers."""
        return sum(block.mixer.cache_bytes(seq_len, dtype) for block in self.blocks)

    def kernel_names(self, device: torch.device | str) -> str:
        """The distinct compute paths of this model's mixers, e.g. 'gdr:torch+sdpa'."""
        return "+".join(dict.fromkeys(block.mixer.kernel_name(device) for block in self.blocks))


def per_document(model: LanguageModel, input_ids: Tensor, segment_ids: Tensor) -> Tensor:
    """model.hidden_states(input_ids) with every document of the packed rows run as its own sequence (right-padded
    to the longest; a causal model's outputs do not see pads that come after them), put back in place."""
    B, T = input_ids.shape
    flat_starts = PackedDocuments(segment_ids).cu_seqlens.tolist()
    pieces = list(zip(flat_starts[:-1], flat_starts[1:], strict=True))
    longest = max(end - start for start, end in pieces)
    flat_ids = input_ids.flatten()
    docs = flat_ids.new_zeros(len(pieces), longest)
    for i, (start, end) in enumerate(pieces):
        docs[i, : end - start] = flat_ids[start:end]
    hidden = model.hidden_states(docs)
    return torch.cat([hidden[i, : end - start] for i, (start, end) in enumerate(pieces)]).view(B, T, -1)
