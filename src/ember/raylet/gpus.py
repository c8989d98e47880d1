"""Which GPU devices a lease gets (for ``CUDA_VISIBLE_DEVICES`` and ``get_gpu_ids()``).

Whole GPUs are given out exclusively; a fraction below one shares a device
with other fractions until that device is full (first fit).
"""

from __future__ import annotations

from ember._private.resources import UNIT


class GpuAllocator:
    def __init__(self, total_fixed: int) -> None:
        self.free: dict[int, int] = {i: UNIT for i in range(total_fixed // UNIT)}

    def allocate(self, amount: int) -> list[int]:
        if amount <= 0 or not self.free:
            return []
        if amount < UNIT:
            for index, left in sorted(self.free.items()):
                if left >= amount:
                    self.free[index] = left - amount
                    return [index]
            return []
        whole = amount // UNIT
        chosen = [i for i, left in sorted(self.free.items()) if left == UNIT][:whole]
        if len(chosen) < whole:
            return []
        for index in chosen:
            self.free[index] = 0
        return chosen

    def release(self, indexes: list[int], amount: int) -> None:
        if not indexes:
            return
        share = amount if amount < UNIT else UNIT
        for index in indexes:
            if index in self.free:
                self.free[index] = min(UNIT, self.free[index] + share)
