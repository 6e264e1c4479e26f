"""The efficiency half of a comparison: prefill, decode, cache memory and training throughput against context.

    harness bench models --models mla,kimi,kda --contexts 4K,32K,128K --batched 16x32K --out results/bench

Per model (any preset, hybrid or plugin, ARCH[@SIZE], or sized to --params) and case (batch x context), on one
device, with the weights in the inference dtype (bf16 on CUDA, fp32 on the CPU):

- prefill: a prompt of random tokens through a static cache in chunks (recurrent states carry over, MLA writes its
  latents chunk by chunk; no million-square mask), timed end to end -> prefill_ms, prefill_tokens_per_s. A prompt
  past the row budget stops there (a 'failed' row says how far it got) and the rest of the cache is made up
  (`StaticCache.fill`): a decode step costs the same whatever the cache holds;
- decode: the median of N one-token steps after the prompt, each from the host's call to its logits (the step a
  CUDA graph on CUDA; eager elsewhere, and `kernel_impl` says so) -> decode_ms_per_token, decode_tokens_per_s;
  cache_bytes per sequence measured from the cache's tensors (the model's `cache_bytes` must agree; a row's
  `error` says where it does not); the memory floor -> decode_floor_ms, floor_fraction; peak_memory_gib;
- train: forward, backward and AdamW step of the trainer's loss (bf16 autocast on CUDA) at batch x context ->
  train_tokens_per_s, peak_memory_gib.

The memory floor of a decode step is every weight read once (less the input embedding table, of which a step
reads one row per sequence) plus every sequence's cache read once, at the copy bandwidth measured on the same
device at the start of the run; floor_fraction = floor / measured (1 = at the speed of memory). docs/efficiency.md
says what is and is not in it.

Out of memory is a row, not a crash: CUDA's OutOfMemoryError or a failed CPU allocation gives status 'oom', and
so does a case whose estimated memory (weights, cache, the largest activations; `estimate_gib`) exceeds what the
device has (or --memory-limit): it is refused before it runs. Each case is one cell of a results store (suite
'bench', task prefill/decode/train, slice 'context=32768,batch=1'), written as soon as it is measured; a rerun
skips the cells already there.
"""

from __future__ import annotations

import dataclasses
import gc
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.analysis.labels import length_text
from harness.config import config_hash, to_dict
from harness.errors import HarnessError
from harness.results.metrics import METRICS
from harness.results.provenance import device_name, git_state, library_versions
from harness.results.schema import Row
from harness.results.store import ResultStore
from harness.run.device import resolve_device
from harness.run.sizing import SizeMatch, match_size
from harness.run.train import TrainConfig, make_optimizer, training_loss
from models.backbone import LanguageModel, ModelConfig
from models.decoding import StaticCache, static_cache_unsupported
from models.presets import build_model_config, split_model_token

SUITE = "bench"
VERSION = "1"
"""Bumped when what a row measures changes (the task_version of every row)."""

_LENGTH = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*$")


def parse_length(text: str) -> int:
    """'4K' -> 4096, '1M' -> 1048576, '300' -> 300: contexts count in powers of two, as models see them."""
    match = _LENGTH.match(str(text))
    if not match:
        raise HarnessError(f"a context is a number of tokens such as 4096, 4K or 1M; got '{text}'")
    return int(float(match[1]) * {"": 1, "k": 1024, "m": 1024**2}[match[2].lower()])


@dataclass(frozen=True)
class Case:
    """What one cell of the benchmark measures: 'infer' (a prompt of `context` tokens, then decode steps) or
    'train' (training steps at `batch` sequences of `context` tokens)."""

    kind: str
    batch: int
    context: int

    @property
    def slice(self) -> str:
        return f"context={self.context},batch={self.batch}"

    @property
    def label(self) -> str:
        return f"{self.kind} {self.batch}x{length_text(self.context)}"


def plan_cases(
    contexts: str, batched: str = "", train_contexts: str = "", train_tokens: int = 0
) -> list[Case]:
    """Inference at batch 1 at every context of `contexts`, at every 'BxCONTEXT' of `batched` (e.g. '64x4K'), and
    training at every context of `train_contexts` with max(1, train_tokens // context) sequences per step."""
    cases = [Case("infer", 1, parse_length(c)) for c in _items(contexts)]
    for item in _items(batched):
        batch, sep, context = item.lower().partition("x")
        if not sep or not batch.strip().isdigit() or int(batch) < 1:
            raise HarnessError(f"--batched takes BATCHxCONTEXT items such as 64x4K; got '{item}'")
        cases.append(Case("infer", int(batch), parse_length(context)))
    for c in _items(train_contexts):
        context = parse_length(c)
        cases.append(Case("train", max(1, train_tokens // context), context))
    if not cases:
        raise HarnessError("nothing to measure: give --contexts, --batched or --train-contexts")
    if bad := [case for case in cases if case.context < 2]:
        raise HarnessError(f"a context needs at least 2 tokens; got {bad[0].context}")
    return list(dict.fromkeys(cases))


def _items(text: str) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


@dataclass(frozen=True, kw_only=True)
class BenchSettings:
    """How every case is measured (part of each cell's id, except where a field says otherwise)."""

    decode_steps: int = 20
    """One-token steps timed after the prompt (their median is the row)."""
    warmup_steps: int = 2
    """Steps run before the timed ones (eager paths compile and warm up there)."""
    train_steps: int = 3
    """Training steps timed (their median), after one untimed."""
    prefill_chunk: int = 65536
    """Prompt tokens per forward of the prefill."""
    row_budget_s: float = 60.0
    """Seconds a prefill may take; past it the rest of the cache is made up (see the module docstring)."""
    graphs: bool = True
    """Capture the decode step as a CUDA graph (on CUDA; the CPU runs it eagerly either way)."""
    dtype: str = "auto"
    """Weights and activations for prefill and decode: 'auto' (bf16 on CUDA, fp32 on the CPU), bf16, fp16, fp32.
    Training keeps fp32 weights with bf16 autocast on CUDA, as the trainer does."""
    device: str = "auto"
    kernel_impl: str = "auto"
    """The models' kernel_impl (auto, torch, triton, reference)."""
    memory_limit_gib: float | None = field(default=None, compare=False)
    """Refuse cases estimated above this (default: what the device has). Not part of a cell's id."""
    vocab_size: int = 32768


@dataclass(frozen=True, kw_only=True)
class BenchModel:
    token: str
    """The architecture as named (a preset, a ratio such as kda:mla=3:1, or a plugin's mixer)."""
    size: str
    """The size preset (with '~167M' when sized to a parameter target)."""
    config: ModelConfig

    @property
    def label(self) -> str:
        return f"{self.token}@{self.size}"


def resolve_models(
    tokens: list[str], size: str, settings: BenchSettings, match: SizeMatch | None = None
) -> list[BenchModel]:
    """The configs of `tokens` (ARCH or ARCH@SIZE; `size` where none is named), sized to `match` if given."""
    resolved = []
    for token in tokens:
        arch, size_name = split_model_token(token, size)
        if match is not None:
            config = match_size(token, size, settings.vocab_size, match).config
            size_name += match.label
        else:
            config = build_model_config(token, size, settings.vocab_size)
        config = dataclasses.replace(config, kernel_impl=settings.kernel_impl)
        resolved.append(BenchModel(token=arch, size=size_name, config=config))
    return resolved


# ------------------------------------------------------------------------------------------- measurement helpers


def inference_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if setting not in dtypes:
        raise HarnessError(f"--dtype must be auto, bf16, fp16 or fp32; got '{setting}'")
    return dtypes[setting]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_bandwidth(device: torch.device, reps: int = 5) -> float:
    """Bytes per second (read + written) of a large copy on `device`: the ceiling of the memory floor."""
    count = (
        2**27 if device.type == "cuda" else 2**24
    ) // 4  # 128 MiB on a GPU, 16 MiB on a CPU: past the caches
    x = torch.ones(count, device=device)
    y = torch.empty_like(x)
    times = []
    for _ in range(reps + 1):
        _sync(device)
        start = time.perf_counter()
        y.copy_(x)
        _sync(device)
        times.append(time.perf_counter() - start)
    return 2 * x.numel() * x.element_size() / statistics.median(times[1:])


def weight_bytes(model: LanguageModel) -> int:
    """Bytes a decode step reads of the weights: every parameter once, less the input embedding table (a step
    reads one row of it per sequence) unless the LM head shares it."""
    unique = {id(p): p for p in model.parameters()}
    total = sum(p.numel() * p.element_size() for p in unique.values())
    if not model.config.tie_embeddings:
        total -= model.embed.weight.numel() * model.embed.weight.element_size()
    return total


def peak_gib(device: torch.device) -> float:
    """Peak CUDA memory allocated since the last reset; on a CPU this process's peak resident size (it only grows:
    on a CPU the column says the most any case needed so far)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource  # POSIX only; the CPU's measure

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def available_gib(device: torch.device) -> float:
    """What a case may use: the GPU's total memory, or the CPU's available memory (MemAvailable)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / 2**30
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("inf")


def estimate_gib(
    config: ModelConfig, case: Case, settings: BenchSettings, dtype: torch.dtype, device: torch.device
) -> float:
    """A rough upper estimate of the memory a case needs (weights, cache, the largest live activations), to refuse
    what cannot fit before trying. Attention layers count their keys and values expanded over the whole context
    during the prefill (the chunk's scores too: the CPU's attention may materialise them)."""
    with torch.device("meta"):
        model = LanguageModel(config)
    params = model.num_params()
    B, T, d, V = case.batch, case.context, config.d_model, config.vocab_size
    mla = [block.mixer.config for block in model.blocks if block.mixer_name == "mla"]
    heads = max((m.num_heads for m in mla), default=0)
    head_width = max((m.qk_nope_head_dim + m.qk_rope_head_dim + m.v_head_dim for m in mla), default=0)
    if case.kind == "train":
        size = 4  # fp32 weights; activations counted at 4 bytes (autocast keeps some in bf16, some not)
        activations = B * T * d * len(config.layers) * 40 * size + 3 * B * T * V * 4
        attention = (4 * B * heads * T * head_width * size) if mla else 0
        return (16 * params + activations + attention) / 2**30
    size = dtype.itemsize
    chunk = min(T, settings.prefill_chunk)
    cache = B * model.cache_bytes(T + settings.warmup_steps + settings.decode_steps + 1, dtype)
    activations = B * chunk * d * 24 * size + B * V * 4
    attention = 0
    if mla:
        attention = 3 * B * T * heads * head_width * size  # keys and values expanded for a chunk
        attention += B * heads * chunk * T * 4 if device.type != "cuda" else 0
        attention = max(attention, 3 * B * heads * T * 4)  # the PyTorch decode path's scores
    return (params * size + cache + activations + attention) / 2**30


def _is_oom(error: BaseException) -> bool:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


def _message(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".splitlines()[0][:300]


# ------------------------------------------------------------------------------------------------ the runner


@dataclass
class Outcome:
    """One measured cell: its rows (dicts of the Row schema) and notes for the store's meta file."""

    rows: list[dict[str, Any]]
    meta: dict[str, Any]


class Bench:
    """Runs the cases of every model on one device and writes each cell to a store as soon as it is measured."""

    def __init__(
        self,
        settings: BenchSettings,
        store: ResultStore,
        on_line: Callable[[str], None] = print,
        time_budget_s: float | None = None,
        profile_contexts: tuple[int, ...] = (),
    ):
        """`time_budget_s`: cases not started by then are skipped (listed at the end). `profile_contexts`: profile
        the decode step of the batch-1 cases at these contexts (CUDA)."""
        self.settings, self.store, self.on_line = settings, store, on_line
        self.device = resolve_device(settings.device)
        self.dtype = inference_dtype(settings.dtype, self.device)
        self.time_budget_s, self.profile_contexts = time_budget_s, set(profile_contexts)
        self.bandwidth = measure_bandwidth(self.device)
        self.started = time.perf_counter()
        commit, dirty = git_state()
        self.provenance = dict(
            git_commit=commit, git_dirty=dirty, device=device_name(self.device), **library_versions()
        )
        self.not_run: list[str] = []

    # --------------------------------------------------------------------------------------------- planning

    def cell_id(self, model: BenchModel, case: Case) -> str:
        return config_hash(self._identity(model, case))

    def _identity(self, model: BenchModel, case: Case | None) -> dict[str, Any]:
        settings = {k: v for k, v in to_dict(self.settings).items() if k != "memory_limit_gib"}
        return dict(
            bench="models",
            version=VERSION,
            model=model.token,
            size=model.size,
            config=to_dict(model.config),
            settings=settings,
            device=self.provenance["device"],
            case=None if case is None else dataclasses.asdict(case),
        )

    def run(self, models: list[BenchModel], cases: list[Case]) -> list[dict[str, Any]]:
        """Measure every (model, case) not in the store yet; returns the rows written."""
        self.on_line(
            f"device: {self.provenance['device']}, copy bandwidth {self.bandwidth / 1e9:.1f} GB/s, "
            f"inference dtype {str(self.dtype).removeprefix('torch.')}"
        )
        written = []
        # every model's inference first, then training: a run cut short by its time budget keeps the decode rows
        for kind in ("infer", "train"):
            for model in models:
                todo = []
                for case in (c for c in cases if c.kind == kind):
                    if self.store.has(self.cell_id(model, case)):
                        self.on_line(f"{model.label} {case.label}: already in {self.store.root}/")
                    else:
                        todo.append(case)
                if todo and self._over_budget():
                    self.not_run += [f"{model.label} {case.label}" for case in todo]
                    continue
                if not todo:
                    continue
                built = self._infer_model(model) if kind == "infer" else None
                written += self._cases(model, todo, built, self.infer if kind == "infer" else self.train)
                del built
        if self.not_run:
            self.on_line(f"time budget reached; not run: {', '.join(self.not_run)}")
        return written

    def _cases(self, model: BenchModel, cases: list[Case], built, measure) -> list[dict[str, Any]]:
        written = []
        for case in cases:
            if self._over_budget():
                self.not_run.append(f"{model.label} {case.label}")
                continue
            start = time.perf_counter()
            outcome = self._guarded(model, case, built, measure)
            wall = round(time.perf_counter() - start, 3)
            rows = [dict(row, wall_s=wall) for row in outcome.rows]
            meta = dict(outcome.meta, config=self._identity(model, case), label=f"{model.label} {case.label}")
            self.store.write(self.cell_id(model, case), rows, meta)
            self.on_line(_summary_line(model, case, rows, wall))
            written += rows
        return written

    def _over_budget(self) -> bool:
        return self.time_budget_s is not None and time.perf_counter() - self.started > self.time_budget_s

    def _guarded(self, model: BenchModel, case: Case, built, measure) -> Outcome:
        """measure(...), with a refusal when the estimate does not fit and a row for running out of memory."""
        tasks = ("prefill", "decode") if case.kind == "infer" else ("train",)
        limit = self.settings.memory_limit_gib or available_gib(self.device)
        estimate = estimate_gib(model.config, case, self.settings, self.dtype, self.device)
        if estimate > limit:
            error = (
                f"refused: estimated {estimate:.3g} GiB > {limit:.3g} GiB "
                f"({'--memory-limit' if self.settings.memory_limit_gib else 'available on ' + self.device.type})"
            )
            return Outcome(self._failure(model, case, tasks, "oom", error), {"estimate_gib": estimate})
        try:
            outcome = measure(model, case, built)
        except Exception as error:  # noqa: BLE001 - a failed case is a row; the benchmark goes on
            status = "oom" if _is_oom(error) else "failed"
            outcome = Outcome(self._failure(model, case, tasks, status, _message(error)), {})
        finally:
            _reset_peak(self.device)
        outcome.meta["estimate_gib"] = estimate
        return outcome

    # ----------------------------------------------------------------------------------------------- rows

    def _base(self, model: BenchModel, case: Case, task: str, built: LanguageModel | None) -> Row:
        config = model.config
        with torch.device("meta"):
            meta_model = built if built is not None else LanguageModel(config)
            state = meta_model.state_size(case.context)
        identity = self._identity(model, None)
        return Row(
            run_id=self.cell_id(model, case),
            setting_id=config_hash(identity),
            suite=SUITE,
            scale=model.size,
            task=task,
            task_version=VERSION,
            task_setting="",
            slice=case.slice,
            seed=0,
            model=model.token,
            preset=model.size,
            layers=",".join(config.layers),
            params=meta_model.num_params(),
            non_embedding_params=meta_model.num_params(non_embedding=True),
            state_size=state,
            dtype=str(self.dtype if case.kind == "infer" else torch.float32).removeprefix("torch."),
            **self.provenance,
        )

    def _failure(self, model, case, tasks, status, error) -> list[dict[str, Any]]:
        return [
            self._base(model, case, task, None).with_(status=status, error=error).to_dict() for task in tasks
        ]

    @staticmethod
    def _metric(base: Row, name: str, value: float, n: int, **extra: Any) -> dict[str, Any]:
        spec = METRICS[name]  # a metric missing from the table is an error, not a dropped value
        return base.with_(
            metric=name, value=float(value), higher_is_better=spec.higher_is_better, n=n, **extra
        ).to_dict()

    # ------------------------------------------------------------------------------------------ inference

    def _infer_model(self, model: BenchModel) -> LanguageModel:
        torch.manual_seed(0)
        built = LanguageModel(model.config).to(self.device, self.dtype).eval()
        # compile and warm every kernel a case uses (a prompt of two chunks, the graph), untimed
        warm = min(self.settings.prefill_chunk, 1024)
        try:
            self.infer(model, Case("infer", 1, 2 * warm), built, warmup=True)
        except Exception as error:  # noqa: BLE001 - the cases themselves will report it
            self.on_line(f"{model.label}: warm-up failed ({_message(error)})")
        _reset_peak(self.device)
        return built

    def infer(self, model: BenchModel, case: Case, built: LanguageModel, warmup: bool = False) -> Outcome:
        settings, device = self.settings, self.device
        B, T = case.batch, case.context
        notes: list[str] = []
        steps = settings.warmup_steps + settings.decode_steps
        profiled = not warmup and B == 1 and T in self.profile_contexts
        room = steps + 1 + (7 if profiled else 0)  # decode steps (and profiled ones) after the prompt
        gen = torch.Generator(device=device).manual_seed(0)
        prompt = torch.randint(model.config.vocab_size, (B, T), device=device, generator=gen)
        with torch.no_grad():
            cache = StaticCache(built, B, T + room, dtype=self.dtype, device=device)
            if settings.graphs:
                cache.capture(built)
            else:
                cache.mode = "eager (graphs off)"
            # the prompt in chunks, stopped at the row budget
            _sync(device)
            start = time.perf_counter()
            done = 0
            while done < T:
                end = min(T, done + settings.prefill_chunk)
                hidden = built.hidden_states(prompt[:, done:end], cache)
                done = end
                _sync(device)
                if done < T and time.perf_counter() - start > settings.row_budget_s and not warmup:
                    break
            prefill_s = time.perf_counter() - start
            logits = built.lm_head(hidden[:, -1])
            if done < T:
                cache.fill(built, T)
                notes.append(
                    f"prefill stopped at {done} of {T} tokens (row budget); the rest of the cache made up"
                )
            measured = cache.nbytes() // B  # per sequence, from the tensors, at T tokens
            expected = built.cache_bytes(T, self.dtype)
            prefill_peak = peak_gib(device)
            # decode: the next token of every sequence, one step at a time
            ids = logits.argmax(-1, keepdim=True)  # (B, 1)
            times = []
            for i in range(steps):
                _sync(device)
                step_start = time.perf_counter()
                built(ids, cache=cache)
                _sync(device)
                if i >= settings.warmup_steps:
                    times.append(time.perf_counter() - step_start)
            profile = self._profile(built, cache, ids) if profiled else None
        if warmup:
            return Outcome([], {})
        step_ms = 1e3 * statistics.median(times)
        floor_ms = 1e3 * (weight_bytes(built) + B * measured) / self.bandwidth
        mismatch = None
        if measured != expected:
            mismatch = f"the cache holds {measured} bytes per sequence; cache_bytes says {expected}"
            notes.append(mismatch)
        kernels = built.kernel_names(device)
        pre = self._base(model, case, "prefill", built).with_(kernel_impl=kernels)
        dec = self._base(model, case, "decode", built).with_(kernel_impl=f"{kernels}+{cache.mode}")
        rows = []
        if done == T:
            rows += [
                self._metric(pre, "prefill_ms", 1e3 * prefill_s, B * T),
                self._metric(pre, "prefill_tokens_per_s", B * T / prefill_s, B * T),
                self._metric(pre, "peak_memory_gib", prefill_peak, B * T),
            ]
        else:
            error = f"over the {settings.row_budget_s:g} s prefill budget: {done} of {T} tokens in {prefill_s:.1f} s"
            rows.append(pre.with_(status="failed", error=error).to_dict())
        rows += [
            self._metric(dec, "decode_ms_per_token", step_ms, len(times)),
            self._metric(dec, "decode_tokens_per_s", B * 1e3 / step_ms, len(times)),
            self._metric(dec, "cache_bytes", measured, B, error=mismatch),
            self._metric(dec, "decode_floor_ms", floor_ms, len(times)),
            self._metric(dec, "floor_fraction", floor_ms / step_ms, len(times)),
            self._metric(dec, "peak_memory_gib", peak_gib(device), len(times)),
        ]
        meta = dict(
            notes=notes,
            decode_ms=[round(1e3 * t, 4) for t in times],
            prefilled_tokens=done,
            bandwidth_Bps=self.bandwidth,
            weight_bytes=weight_bytes(built),
            decode_mode=cache.mode,
        )
        if profile is not None:
            meta["profile"] = profile
        del cache
        return Outcome(rows, meta)

    def _profile(self, built: LanguageModel, cache: StaticCache, ids: torch.Tensor, steps: int = 3) -> dict:
        """Where a decode step's time goes: device time by kernel over a few steps as measured (graph replays on
        CUDA) and the same steps run eagerly, each against its wall time (the rest is launch and host overhead)."""
        if self.device.type != "cuda" or cache.seen_tokens + 2 * steps + 1 > cache.max_len:
            return {}
        runs = {
            "measured": lambda: built(ids, cache=cache),
            "eager": lambda: built.lm_head(built.hidden_states(ids, cache)),  # no graph replay
        }
        return {name: self._profile_steps(step, steps) for name, step in runs.items()}

    def _profile_steps(self, step: Callable[[], object], steps: int) -> dict:
        from torch.profiler import ProfilerActivity, profile  # only profiled runs need the profiler

        try:
            _sync(self.device)
            start = time.perf_counter()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(steps):
                    step()
                _sync(self.device)
            wall_ms = 1e3 * (time.perf_counter() - start) / steps
        except Exception as error:  # noqa: BLE001 - a profile that fails leaves a note, not a failed case
            return dict(error=_message(error))
        kernels = []
        for event in prof.key_averages():
            us = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0)
            if us > 0:
                kernels.append(dict(kernel=event.key[:70], calls=event.count / steps, ms=us / steps / 1e3))
        kernels.sort(key=lambda k: -k["ms"])
        launches = sum(k["calls"] for k in kernels)
        return dict(
            wall_ms=wall_ms, device_ms=sum(k["ms"] for k in kernels), launches=launches, kernels=kernels[:20]
        )

    # ------------------------------------------------------------------------------------------- training

    def train(self, model: BenchModel, case: Case, built=None) -> Outcome:
        device, B, T = self.device, case.batch, case.context
        torch.manual_seed(0)
        net = LanguageModel(model.config).to(device).train()
        optimizer = make_optimizer(net, TrainConfig())
        amp = torch.bfloat16 if device.type == "cuda" else None
        gen = torch.Generator(device=device).manual_seed(0)
        tokens = torch.randint(model.config.vocab_size, (B, T + 1), device=device, generator=gen)
        inputs, labels = tokens[:, :-1], tokens[:, 1:]
        _reset_peak(device)
        times = []
        for i in range(self.settings.train_steps + 1):
            _sync(device)
            start = time.perf_counter()
            loss = training_loss(net, inputs, labels, None, amp)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            _sync(device)
            if i:  # the first step compiles and allocates
                times.append(time.perf_counter() - start)
        step_s = statistics.median(times)
        base = self._base(model, case, "train", net).with_(
            kernel_impl=net.kernel_names(device), dtype="bf16-autocast" if amp else "float32"
        )
        n = B * T * len(times)
        rows = [
            self._metric(base, "train_tokens_per_s", B * T / step_s, n),
            self._metric(base, "peak_memory_gib", peak_gib(device), n),
        ]
        del net, optimizer
        return Outcome(rows, dict(step_ms=[round(1e3 * t, 3) for t in times], loss=float(loss.detach())))


def _summary_line(model: BenchModel, case: Case, rows: list[dict[str, Any]], wall: float) -> str:
    values = {(r["task"], r["metric"]): r["value"] for r in rows if r["status"] == "ok"}
    bad = [f"{r['task']} {r['status']}: {r['error']}" for r in rows if r["status"] != "ok"]
    parts = []
    if (v := values.get(("prefill", "prefill_ms"))) is not None:
        parts.append(f"prefill {v / 1e3:.2f} s")
    if (v := values.get(("decode", "decode_ms_per_token"))) is not None:
        frac = values[("decode", "floor_fraction")]
        parts.append(f"decode {v:.3f} ms/token ({frac:.0%} of the floor)")
        parts.append(f"cache {values[('decode', 'cache_bytes')] / 1e6:.3g} MB/seq")
    if (v := values.get(("train", "train_tokens_per_s"))) is not None:
        parts.append(f"train {v / 1e3:.1f}K tokens/s")
    return f"{model.label} {case.label}: " + "; ".join(parts + bad) + f" [{wall:.1f} s]"


def check_models(models: list[BenchModel]) -> None:
    """Fail early, before any timing, for a model whose mixers cannot run a static cache."""
    for model in models:
        with torch.device("meta"):
            unsupported = static_cache_unsupported(LanguageModel(model.config))
        if unsupported:
            raise HarnessError(
                f"{model.label}: mixer(s) {', '.join(unsupported)} have no static cache (Mixer.allocate_cache); "
                "the benchmark's decode needs one"
            )


__all__ = [
    "Bench",
    "BenchModel",
    "BenchSettings",
    "Case",
    "check_models",
    "estimate_gib",
    "measure_bandwidth",
    "parse_length",
    "plan_cases",
    "resolve_models",
    "weight_bytes",
]
