"""Decoding at the speed of memory: a static cache whose one-token step is captured as a CUDA graph, and prefill
in chunks.

A decode step of a small model moves little data (every weight once, the cache once) but launches hundreds of
small kernels; run from Python, the launches are the step's cost. A CUDA graph records the step's kernels once
and replays them with one launch. That needs fixed addresses and no host decisions in the step, hence
`StaticCache`:

- every tensor of every layer's state is preallocated for `batch` sequences of up to `max_len` tokens
  (`Mixer.allocate_cache`) and updated in place (`put_state`);
- the position is a device tensor (`cache.position`) that the step reads and advances itself; the rows' leading
  pads (`cache.pad`, left padding only) are set once from the prompt's attention mask;
- `capture(model)` runs the step a few times (compiling and initialising kernels), records it in a graph
  (after which the cache is reset to empty), and `model(ids, cache=cache)` then replays the graph for every
  one-token call: the token is copied into the graph's input buffer, the logits are read from its output.

Without CUDA, or for a mixer without `allocate_cache`, nothing is captured and the step runs eagerly; `mode` says
which ran, for results to record. `prefill` feeds a long prompt in chunks (recurrent states carry over; MLA
writes its latents chunk by chunk), so a million-token prompt needs no million-token activations.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .backbone import LanguageModel, Mixer, ModelCache

GRAPH_WARMUP_STEPS = 2
"""Eager steps before the capture: Triton compiles, cuBLAS picks its kernels, lazy buffers get allocated."""


def static_cache_unsupported(model: LanguageModel) -> list[str]:
    """The mixers of `model` without a static cache (no `allocate_cache`); empty when every layer has one."""
    return sorted(
        {
            block.mixer_name
            for block in model.blocks
            if type(block.mixer).allocate_cache is Mixer.allocate_cache
        }
    )


class StaticCache(ModelCache):
    """A decoding cache of preallocated tensors for `batch` sequences of up to `max_len` tokens (module docstring);
    a drop-in for `model.new_cache()` wherever the batch and the final length are known in advance."""

    static = True

    def __init__(
        self,
        model: LanguageModel,
        batch: int,
        max_len: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ):
        unsupported = static_cache_unsupported(model)
        if unsupported:
            raise ValueError(
                f"mixer(s) {', '.join(unsupported)} have no static cache (Mixer.allocate_cache); "
                "decode them with model.new_cache()"
            )
        weight = model.embed.weight
        dtype, device = dtype or weight.dtype, torch.device(device or weight.device)
        super().__init__(len(model.blocks))
        self.batch, self.max_len = batch, max_len
        self.growing: list[tuple[str, ...]] = []
        for state, block in zip(self.layers, model.blocks, strict=True):
            state.update(block.mixer.allocate_cache(batch, max_len, dtype, device))
            self.growing.append(type(block.mixer).growing_cache_keys)
        self.position = torch.zeros(1, dtype=torch.long, device=device)  # tokens seen, for captured steps
        self.pad = torch.zeros(batch, dtype=torch.long, device=device)  # leading pads of every row
        self.graph: torch.cuda.CUDAGraph | None = None
        self.mode = "eager"
        """How one-token steps run: 'cuda-graph', or 'eager' and why (recorded in benchmark rows)."""
        self._capturing = False
        self._ids: Tensor | None = None  # the graph's input (B, 1)
        self._logits: Tensor | None = None  # its output (B, 1, V)

    # ------------------------------------------------------------------------------------- the cache protocol

    def begin(self, input_ids: Tensor, attention_mask: Tensor | None) -> None:
        B, T = input_ids.shape
        if self.batch != B:
            raise ValueError(f"this static cache holds {self.batch} sequences; got a batch of {B}")
        if self.seen_tokens + T > self.max_len:
            raise ValueError(
                f"this static cache holds {self.max_len} tokens; {self.seen_tokens} + {T} do not fit "
                "(make it longer: StaticCache(model, batch, max_len))"
            )
        if attention_mask is None or self._capturing:
            return
        mask = attention_mask.bool()
        if self.seen_tokens == 0:
            pads = (~mask[:, :T]).cumsum(-1).eq(torch.arange(1, T + 1, device=mask.device)).sum(-1)
            left = torch.arange(T, device=mask.device)[None] >= pads[:, None]
            if not torch.equal(left, mask[:, :T]):
                raise ValueError(
                    "a static cache takes left padding only (pads before a row's first token); "
                    "use model.new_cache() for other masks"
                )
            self.pad.copy_(pads)
        elif not bool(mask[:, -T:].all()):
            raise ValueError("a static cache takes pads in the prompt only: every later token must be real")

    def advance(self, tokens: int) -> None:
        self.seen_tokens += tokens
        self.position.add_(tokens)  # in place: a captured step advances it on every replay

    def replay(self, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor | None:
        if self.graph is None or self.seen_tokens == 0 or input_ids.shape != self._ids.shape:
            return None  # a prompt (or an odd shape) runs eagerly
        self.begin(input_ids, attention_mask)
        self._ids.copy_(input_ids)
        self.graph.replay()
        self.seen_tokens += 1  # the graph advanced `position` itself
        # a copy: the next replay overwrites the graph's output buffer
        return self._logits.clone()

    def nbytes(self) -> int:
        """Bytes held for the tokens seen, all sequences together: the filled part of the growing buffers."""
        total = 0
        for state, growing in zip(self.layers, self.growing, strict=True):
            for key, tensor in state.items():
                held = tensor[:, : self.seen_tokens] if key in growing else tensor
                total += held.numel() * held.element_size()
        return total

    def reorder_cache(self, beam_idx: Tensor) -> None:
        for state in self.layers:
            for tensor in state.values():
                tensor.copy_(tensor.index_select(0, beam_idx.to(tensor.device)))
        self.pad.copy_(self.pad.index_select(0, beam_idx.to(self.pad.device)))

    def reset(self) -> None:
        """Empty again: every tensor zero, no token seen (a captured graph stays valid)."""
        for state in self.layers:
            for tensor in state.values():
                tensor.zero_()
        self.seen_tokens = 0
        self.position.zero_()
        self.pad.zero_()

    def fill(self, model: LanguageModel, length: int) -> None:
        """Make the cache hold `length` tokens without computing the ones past what it holds: growing buffers get
        made-up values (`Mixer.fill_cache`), fixed-size states keep theirs. For benchmarks only: a decode step
        costs the same whatever the cache holds."""
        if not self.seen_tokens <= length <= self.max_len:
            raise ValueError(f"fill to {length} tokens: must lie in [{self.seen_tokens}, {self.max_len}]")
        for state, block in zip(self.layers, model.blocks, strict=True):
            block.mixer.fill_cache(state, self.seen_tokens, length)
        self.position.fill_(length)
        self.seen_tokens = length

    # ------------------------------------------------------------------------------------------ the graph

    def capture(self, model: LanguageModel, warmup: int = GRAPH_WARMUP_STEPS) -> StaticCache:
        """Record the one-token step as a CUDA graph (module docstring); then the cache is empty again. Without
        CUDA, or with too short a cache to warm up in, the step stays eager and `mode` says why."""
        device = self.position.device
        if device.type != "cuda":
            self.mode = "eager (no CUDA)"
            return self
        if self.max_len < warmup + 2:
            self.mode = f"eager (max_len {self.max_len} too short to capture)"
            return self
        if self.seen_tokens:
            raise ValueError("capture a graph on an empty cache (it is reset afterwards)")
        self._ids = torch.zeros(self.batch, 1, dtype=torch.long, device=device)
        # a step after one token: the decode path, not the prompt's (what the warm-up writes is reset below)
        self.advance(1)
        with torch.no_grad():
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    model.lm_head(model.hidden_states(self._ids, self))
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            self._capturing = True
            try:
                with torch.cuda.graph(graph):
                    self._logits = model.lm_head(model.hidden_states(self._ids, self))
            finally:
                self._capturing = False
        self.graph, self.mode = graph, "cuda-graph"
        self.reset()
        return self


def prefill(
    model: LanguageModel,
    cache: ModelCache,
    input_ids: Tensor,
    chunk: int,
    attention_mask: Tensor | None = None,
) -> Tensor:  # (B, T) -> (B, V) logits of the last position
    """Run a prompt into `cache` in chunks of `chunk` tokens; only the last position goes through the LM head
    (the head over every position of a long prompt would be most of the memory)."""
    T = input_ids.shape[1]
    hidden = None
    for start in range(0, T, chunk):
        end = min(T, start + chunk)
        mask = None if attention_mask is None else attention_mask[:, :end]
        hidden = model.hidden_states(input_ids[:, start:end], cache, mask)
    return model.lm_head(hidden[:, -1])
