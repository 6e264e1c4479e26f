"""What a cell needs of memory, estimated when the sweep is planned, so that a setting that cannot fit (a 10^7-token
sequence, a batch of 10^8) is refused in one line before anything runs instead of failing minutes later.

The estimate is a lower bound: only what must exist at once is counted.

    data      the task's examples in host memory: inputs and labels as int64 (16 bytes a token), training,
              validation and test together (Task.data_size)
    training  parameters, gradients and AdamW's two moments (16 bytes a parameter), and for one batch the logits
              with their gradient (8 bytes a token and vocabulary entry) and a few activations per layer
              (32 bytes a token, layer and width), float32

Data must fit the machine's memory; training must fit the device's (a GPU's memory, or the host's on a CPU,
together with the data).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from harness.errors import HarnessError
from harness.registry import TASKS


@dataclass(frozen=True)
class Estimate:
    data: int
    """Bytes of task data in host memory."""
    training: int
    """Bytes on the training device."""


def estimate(cell, params: int) -> Estimate | None:
    """The memory `cell` needs (its model has `params` parameters); None if its task cannot say its size."""
    size = TASKS.get(cell.task_name)().data_size(cell.task)
    if size is None:
        return None
    model = cell.model
    per_token = 8 * model.vocab_size + 32 * model.d_model * len(model.layers)
    batch = max(
        cell.train.batch_size * size.train_len * per_token,
        cell.train.eval_batch_size * size.eval_len * 4 * model.vocab_size,  # logits, no gradients
    )
    return Estimate(data=16 * (size.train_tokens + size.eval_tokens), training=16 * params + batch)


def check_fits(cell, params: int) -> None:
    """Raise HarnessError, with the estimate, if `cell` cannot fit this machine's memory or its device's."""
    need = estimate(cell, params)
    if need is None:
        return
    host = _host_memory()
    device = _device_memory(cell.train.device)
    if device is None:  # training on the CPU: data and training share the host's memory
        over = need.data + need.training > host
        have = f"this machine has {_gib(host)}"
    else:
        over = need.data > host or need.training > device
        have = f"this machine has {_gib(host)}, its GPU {_gib(device)}"
    if over:
        raise HarnessError(
            f"{cell.label} needs an estimated {_gib(need.data)} of task data and {_gib(need.training)} to train"
            f" (batch_size {cell.train.batch_size}); {have}. Lower the sequence lengths, the example counts or"
            " train.batch_size, or pass --force to run it anyway"
        )


def _host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _device_memory(name: str) -> int | None:
    """Total memory of the GPU that `name` trains on; None for the CPU."""
    index = int(name.partition(":")[2] or 0)
    if name == "cpu" or not torch.cuda.is_available() or index >= torch.cuda.device_count():
        return None
    return torch.cuda.get_device_properties(index).total_memory


def _gib(size: int) -> str:
    return f"{size / 2**30:,.1f} GiB"
