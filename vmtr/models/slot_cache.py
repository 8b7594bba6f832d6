"""A preallocated KV cache with one slot per episode, for decoding many episodes together.

Why not transformers' caches: `DynamicCache` grows by concatenation every token (a profile of
the tiny model's episodes spent a third of its time in ``torch.cat``), and `StaticCache` writes
every row of a batch at the same column, so rows of different lengths need left padding and a
re-layout whenever an episode joins. Here each slot (one episode) keeps its own length; a forward
writes each row's new keys and values at that row's own next columns, and a 4-D attention mask
(built by `SlotKV.plan`) lets each query see only its row's valid columns, causally.

It is duck-typed to what transformers' attention layers call (``update`` and
``get_seq_length``), so the model's own layers, kernels and M-RoPE run unchanged; buffers are made
lazily from the first keys and values each layer hands over, so attention variants whose value
width differs from the key width (GTA's latent) fit too.
"""

from __future__ import annotations

from typing import Any

import torch


class SlotKV:
    """KV buffers ``[slots, heads, capacity, dim]`` per layer, and each slot's length."""

    def __init__(self, slots: int, capacity: int = 1024, *, eager_mask: bool = False) -> None:
        self.slots = slots
        self.capacity = capacity
        self.lengths = [0] * slots
        self.eager_mask = eager_mask  # additive float mask (eager kernel) instead of boolean
        self._keys: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []
        self._rows: torch.Tensor | None = None  # slot of each batch row; None = rows 0..n-1
        self._row_idx: torch.Tensor | None = None
        self._col_idx: torch.Tensor | None = None
        self._view = 0

    # -- planning a forward -------------------------------------------------------------------

    def plan(self, rows: list[int] | None, new_tokens: list[int], width: int) -> torch.Tensor:
        """Prepare a forward whose batch row ``b`` adds ``new_tokens[b]`` tokens to slot
        ``rows[b]`` (``rows=None``: row b is slot b), every row padded to ``width`` queries.

        Returns the attention mask ``[n, 1, width, view]``: query ``j`` of row ``b`` sees its
        slot's columns ``< length + j + 1``. Padding queries (``j >= new_tokens[b]``) write past
        the row's new length, where nothing reads them before a later write. Call `advance`
        after the forward to commit the real tokens.
        """
        slots = list(range(len(new_tokens))) if rows is None else rows
        starts = [self.lengths[s] for s in slots]
        need = max(start + width for start in starts)
        if need > self.capacity:
            self._grow(need)
        self._view = need
        device = self._keys[0].device if self._keys else torch.device("cpu")
        start_t = torch.tensor(starts, dtype=torch.long, device=device)
        steps = torch.arange(width, dtype=torch.long, device=device)
        self._col_idx = start_t[:, None] + steps[None, :]  # [n, width]
        slot_t = torch.tensor(slots, dtype=torch.long, device=device)
        self._row_idx = slot_t[:, None].expand(-1, width)
        self._rows = None if rows is None else slot_t
        cols = torch.arange(need, device=device)
        visible = cols[None, None, :] < (self._col_idx + 1)[:, :, None]  # [n, width, view]
        mask = visible[:, None]
        if self.eager_mask:
            zero = torch.zeros((), dtype=torch.float32, device=device)
            low = torch.tensor(torch.finfo(torch.float32).min, device=device)
            mask = torch.where(mask, zero, low)
        return mask

    def advance(self, rows: list[int] | None, new_tokens: list[int]) -> None:
        """Commit the real tokens of the last planned forward."""
        slots = list(range(len(new_tokens))) if rows is None else rows
        for slot, n in zip(slots, new_tokens, strict=True):
            self.lengths[slot] += n

    def reset(self, slot: int) -> None:
        """Free a slot (its contents are overwritten by the next episode)."""
        self.lengths[slot] = 0

    # -- what the attention layers call -------------------------------------------------------

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this forward's keys/values at each row's planned columns; return the row's
        whole visible cache (a view when the batch is slots 0..n-1, a gather otherwise)."""
        if layer_idx == len(self._keys):
            self._allocate(key, value)
        keys, values = self._keys[layer_idx], self._values[layer_idx]
        keys[self._row_idx, :, self._col_idx] = key.permute(0, 2, 1, 3).to(keys.dtype)
        values[self._row_idx, :, self._col_idx] = value.permute(0, 2, 1, 3).to(values.dtype)
        if self._rows is None:
            n = key.shape[0]
            return keys[:n, :, : self._view], values[:n, :, : self._view]
        return keys[self._rows, :, : self._view], values[self._rows, :, : self._view]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return max(self.lengths) if self.lengths else 0

    # -- buffers --------------------------------------------------------------------------------

    def _allocate(self, key: torch.Tensor, value: torch.Tensor) -> None:
        shape_k = (self.slots, key.shape[1], self.capacity, key.shape[3])
        shape_v = (self.slots, value.shape[1], self.capacity, value.shape[3])
        self._keys.append(torch.zeros(shape_k, dtype=key.dtype, device=key.device))
        self._values.append(torch.zeros(shape_v, dtype=value.dtype, device=value.device))

    def _grow(self, need: int) -> None:
        capacity = self.capacity
        while capacity < need:
            capacity *= 2
        pad = capacity - self.capacity
        self._keys = [torch.nn.functional.pad(k, (0, 0, 0, pad)) for k in self._keys]
        self._values = [torch.nn.functional.pad(v, (0, 0, 0, pad)) for v in self._values]
        self.capacity = capacity

    def copy_slot(self, source: int, target: int, length: int) -> None:
        """Give ``target`` the first ``length`` cached tokens of ``source`` (a shared prompt
        prefilled once)."""
        for keys, values in zip(self._keys, self._values, strict=True):
            keys[target, :, :length] = keys[source, :, :length]
            values[target, :, :length] = values[source, :, :length]
        self.lengths[target] = length
