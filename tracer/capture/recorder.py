"""Collect tap values during a forward pass and bring them to the host in one batch per device."""

from __future__ import annotations

import ctypes
import math
from typing import Callable

import numpy as np
import torch

from tracer.nn.hooks import hooks_attached

HALF_TYPES = (torch.bfloat16, torch.float16)

# what `tracer run --store-dtype` may name: numpy holds both (it has no bfloat16)
STORE_DTYPES = {"float32": torch.float32, "float16": torch.float16}

# A CPU value at least this large that owns its memory and needs no conversion is kept as it is
# (numpy shares it), not copied: glibc's default mmap threshold, so such a block does not sit
# among the heap's small chunks. A prompt pass's values are nearly all this large (a GPT-2-small
# 128-token pattern is 786 KB) and copying them held the pass twice at the peak; a KV-cached
# step's rows are far smaller and are packed.
KEEP_AS_IS_BYTES = 128 * 1024

# Copying a pass's large values one by one (into float16, say) frees each once copied, but the
# heap keeps the freed pages until it is trimmed: trimmed after every this many bytes, a 128-token
# GPT-2-small pass converted to float16 peaks at its values plus a few MB, not plus its packed copy.
RELEASE_EVERY_BYTES = 16 * 1024 * 1024


class Recorder:
    """Attach to every HookPoint; `pass_values()` returns (name, numpy array) per tap, batch axis dropped.

    During the forward pass a tap only keeps a reference to the value it sees: no copy, no
    kernel, no host synchronisation. That is safe because the model never writes into a tensor
    after a tap has seen it (no in-place ops; tests/test_devices.py compares every trace with one
    from a recorder that clones), and a tensor we still reference is never handed out again by the
    allocator. After the pass the values are grouped by (device, dtype), in recording order
    within a group (`groups`):

    - values on the CPU: a large value that owns its memory and is already in its storage dtype
      is kept as it is (KEEP_AS_IS_BYTES: a prompt pass is never held twice); the others are
      copied into one buffer per dtype (kept one by one, a long decode's many small arrays
      fragment the C heap), each let go once copied; then the heap's free pages go back to the
      system (release_freed_memory; BENCHMARKS.md);
    - values on a device (a model spread over GPUs by accelerate's device_map has several) are
      packed per dtype into one device buffer each (one `cat` kernel), converted there to the
      storage dtype (so a float16 trace moves half the bytes), copied into pinned host memory with
      non-blocking copies, and each CUDA device is synchronised once; each buffer is then copied
      out of pinned memory into ordinary memory in one memcpy, so pinned memory never outlives the pass.

    `store_dtype` (float32 or float16, `tracer run --store-dtype`) is what floating values are
    stored as; None keeps each value's dtype, bf16/fp16 as float32 (numpy has no bfloat16).
    Integer and bool values are never converted.

    `shared` (a KV cache's `holds`): memory a value may be a view of and still be kept as it is, with
    no copy, whatever its size: a KV-cached decode's taps of the new keys and values see the cache's
    own copy of them, which never changes once written, so the trace and the cache share it.
    """

    def __init__(self, model: torch.nn.Module, select=None, store_dtype: torch.dtype | None = None):
        self.model = model
        self.select = select  # name -> bool: the taps to hook (None: every one)
        self.store_dtype = store_dtype
        self.values: list[tuple[str, torch.Tensor]] = []
        self.shared: Callable[[torch.Tensor], bool] | None = None
        # a value in a weight's or buffer's memory is always copied: the trace must not change when the model does
        self.model_memory = frozenset(t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers()))

    def record(self, name: str, value: torch.Tensor) -> None:
        self.values.append((name, value))  # batch axis and autograd are dealt with after the pass

    def attached(self):
        return hooks_attached(self.model, self.record, self.select)

    def discard(self) -> None:
        """Forget the pass just run (a decoding step a filter leaves out): nothing reaches the host."""
        self.values = []

    def pass_values(self) -> list[tuple[str, np.ndarray]]:
        """The values recorded since the last call, on the host, in recording order."""
        values, self.values = self.values, []
        if not values:
            return []
        values = [(name, (value.detach() if value.requires_grad else value)[0]) for name, value in values]
        out = values_to_host(values, self.store_dtype, model_memory=self.model_memory, shared=self.shared)
        release_freed_memory()
        return out


def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc; elsewhere (macOS, musl) there is none
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's malloc_trim, ~0.3 ms), after a pass.

    A pass's tensors are freed into the heap when it ends, but the heap keeps their pages: a
    KV-cached step reallocates its cache a little longer each time, and the holes left behind
    fit nothing; a GPT-2-small 128 + 40 decode's resident memory grew ~8 MB a step that way
    (BENCHMARKS.md). Trimming returns every whole free page, holes included."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def stored_dtype(dtype: torch.dtype, store_dtype: torch.dtype | None = None) -> torch.dtype:
    """What a value of `dtype` is stored as: floating values as `store_dtype` (None: as they
    are, half types as float32), others unchanged."""
    if not dtype.is_floating_point:
        return dtype
    if store_dtype is not None:
        return store_dtype
    return torch.float32 if dtype in HALF_TYPES else dtype


def groups(values: list[tuple[str, torch.Tensor]]) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    """(device, dtype) -> the indices of its values, in recording order; groups in order of first use."""
    out: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for index, (_, value) in enumerate(values):
        out.setdefault((value.device, value.dtype), []).append(index)
    return out


def _new_buffer(numel: int, dtype: torch.dtype) -> torch.Tensor:
    """A new 1-D host buffer, numpy's own memory (so numpy's accounting, tracemalloc included, sees the trace)."""
    return torch.from_numpy(np.empty(numel, dtype=torch.empty(0, dtype=dtype).numpy().dtype))


def values_to_host(values: list[tuple[str, torch.Tensor]], store_dtype: torch.dtype | None = None,
                   pin: bool = True, model_memory: frozenset[int] = frozenset(),
                   shared: Callable[[torch.Tensor], bool] | None = None) -> list[tuple[str, np.ndarray]]:
    """Tensors (batch axis already dropped) on any mix of devices -> numpy, in recording order:
    one packed copy per (device, dtype) and one synchronisation per CUDA device (see Recorder).

    `values` is emptied as the CPU values are copied (so that each is freed then); pass a copy to keep it.
    `model_memory`: the storages (data pointers) of the model's weights and buffers, which a value
    is never kept in; `shared`: memory a value is kept in even as a view (see Recorder)."""
    found = groups(values)
    out: list[np.ndarray | None] = [None] * len(values)
    staged = []  # (indices, shapes, host buffer that a non-blocking copy is filling)
    devices = set()
    for (device, dtype), indices in found.items():
        if device.type == "cpu":
            continue
        staged.append(_stage(values, indices, stored_dtype(dtype, store_dtype), pin=pin and device.type == "cuda"))
        devices.add(device)
    for (device, dtype), indices in found.items():  # host copies while the device copies run
        if device.type == "cpu":
            _pack_on_host(values, indices, stored_dtype(dtype, store_dtype), out, model_memory, shared)
    for device in devices:
        if device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()  # the one synchronisation of this device's pass
    for indices, shapes, buffer in staged:
        flat = _new_buffer(buffer.numel(), buffer.dtype)
        flat.copy_(buffer)  # out of pinned memory in one memcpy
        _unpack(flat.numpy(), indices, shapes, out)
    names = [name for name, _ in values]
    values.clear()
    return list(zip(names, out))


def _pack_on_host(values: list, indices: list[int], dtype: torch.dtype, out: list,
                  model_memory: frozenset[int] = frozenset(), shared: Callable[[torch.Tensor], bool] | None = None) -> None:
    """CPU values -> views of one new numpy buffer, converted to `dtype` as they are copied.

    A large value that owns its memory and needs no conversion is not copied (see `kept_as_is`), nor
    is a contiguous value in `shared` memory that needs none; other large ones are copied one by one, each reference in `values` dropped once copied so that
    it can be freed at once; the small ones, most of a KV-cached step, go in with one `cat`."""
    small, large = [], []
    for i in indices:
        name, value = values[i]
        if (kept_as_is(value, dtype) and value.untyped_storage().data_ptr() not in model_memory) or (
                shared is not None and value.dtype == dtype and value.is_contiguous() and shared(value)):
            out[i] = value.numpy()
            values[i] = (name, None)
        else:
            (large if value.numel() * value.element_size() >= KEEP_AS_IS_BYTES else small).append(i)
    indices = small + large
    shapes = [tuple(values[i][1].shape) for i in indices]
    sizes = [values[i][1].numel() for i in indices]
    flat = _new_buffer(sum(sizes), dtype)
    offset = sum(sizes[:len(small)])
    if small:
        torch.cat([values[i][1].reshape(-1) for i in small], out=flat[:offset])  # converts as it copies
    copied = 0  # bytes of values copied and let go since the heap last gave its free pages back
    for i, n in zip(large, sizes[len(small):]):
        name, value = values[i]
        flat[offset:offset + n].copy_(value.reshape(-1))
        copied += value.numel() * value.element_size()
        values[i] = (name, None)
        del value
        offset += n
        if copied >= RELEASE_EVERY_BYTES:
            release_freed_memory()
            copied = 0
    for i in small:
        values[i] = (values[i][0], None)
    _unpack(flat.numpy(), indices, shapes, out)


def kept_as_is(value: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether a CPU value can become the trace's array without a copy: already `dtype`, at least
    KEEP_AS_IS_BYTES, contiguous and the whole of its storage (a slice of a larger tensor would keep
    all of that alive)."""
    nbytes = value.numel() * value.element_size()
    return (value.dtype == dtype and nbytes >= KEEP_AS_IS_BYTES and value.is_contiguous()
            and value.storage_offset() == 0 and value.untyped_storage().nbytes() == nbytes)


def _stage(values: list, indices: list[int], dtype: torch.dtype, pin: bool):
    """One device's values of one dtype -> one packed device buffer in `dtype`, its copy to the host started."""
    parts = [values[i][1].reshape(-1) for i in indices]
    packed = torch.cat(parts) if len(parts) > 1 else parts[0]
    packed = packed.to(dtype)  # on the device: a float16 trace moves half the bytes
    host = torch.empty(packed.shape, dtype=dtype, pin_memory=pin)
    host.copy_(packed, non_blocking=pin)
    return indices, [tuple(values[i][1].shape) for i in indices], host


def _unpack(flat: np.ndarray, indices: list[int], shapes: list[tuple[int, ...]], out: list) -> None:
    offset = 0
    for i, shape in zip(indices, shapes):
        size = math.prod(shape)
        out[i] = flat[offset:offset + size].reshape(shape)
        offset += size


def host_array(value: torch.Tensor, store_dtype: torch.dtype | None = None) -> np.ndarray:
    """A CPU tensor as numpy in its stored dtype (shares memory where it can)."""
    if value.requires_grad:
        value = value.detach()
    target = stored_dtype(value.dtype, store_dtype)
    if value.dtype != target:
        value = value.to(target)
    return value.numpy()


def batched_to_host(values: list[tuple[str, torch.Tensor]], pin: bool = True,
                    store_dtype: torch.dtype | None = None) -> list[tuple[str, np.ndarray]]:
    """One device's tensors -> numpy with one packed copy per dtype and a single synchronisation
    (the device path of `values_to_host`, whatever the device: CPU tensors too).

    `pin=False` stages in ordinary memory: only for exercising the packing on a machine without CUDA."""
    staged = [_stage(values, indices, stored_dtype(dtype, store_dtype), pin)
              for (_, dtype), indices in groups(values).items()]
    for device in {value.device for _, value in values}:
        if device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()
    out: list[np.ndarray | None] = [None] * len(values)
    for indices, shapes, buffer in staged:
        _unpack(buffer.numpy().copy(), indices, shapes, out)
    return [(name, array) for (name, _), array in zip(values, out)]
