"""Which counted outcome ids are old enough to forget, without reading every id.

The ``insights_seen`` table keeps an id per outcome counted, for the horizon plus a window
(16 minutes by default): about a million ids at 1,000 outcomes/s. Forgetting them by
scanning the whole table took about 1.3 s of the worker's loop there (every command
waited). This index holds each id under its tenant and window start, so a sweep looks only
at a tenant's windows past its cutoff.

It is this worker's memory, not the table's: the table changes under it when partitions
are recovered, so it is rebuilt from the table (one full scan) after every rebalance and
after a sweep whose deletions were undone. An id it holds that the table no longer has
(a failed batch undone) is dropped when its window comes due.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

__all__ = ["SeenIndex"]

_NOT_BUILT = object()


class SeenIndex:
    """Counted ids by tenant, then window start: id → its table partition."""

    def __init__(self) -> None:
        self._ids: dict[str, dict[int, dict[str, int]]] = {}
        self._built_for: object = _NOT_BUILT

    def add(self, tenant_id: str, window_start: int, key: str, partition: int) -> None:
        self._ids.setdefault(tenant_id, {}).setdefault(window_start, {})[key] = partition

    def current(self, generation: object) -> bool:
        """Built from the table since the rebalance ``generation`` began."""
        return self._built_for is not _NOT_BUILT and self._built_for == generation

    def invalidate(self) -> None:
        self._built_for = _NOT_BUILT

    def rebuild(self, entries: Iterable[tuple[Any, Any, int]], generation: object) -> None:
        """From the table's (key, value, partition): value = [window start, offset, partition]."""
        self._ids = {}
        for key, value, partition in entries:
            if isinstance(value, list) and value and isinstance(value[0], int):
                self.add(str(key).split(":", 1)[0], value[0], str(key), partition)
        self._built_for = generation

    def due_count(self, cutoffs: Mapping[str, int], default_cutoff: int) -> int:
        """How many ids ``due`` would yield."""
        return sum(
            len(ids)
            for tenant_id, windows in self._ids.items()
            for start, ids in windows.items()
            if start < cutoffs.get(tenant_id, default_cutoff)
        )

    def due(
        self, cutoffs: Mapping[str, int], default_cutoff: int
    ) -> Iterator[tuple[str, int, dict[str, int]]]:
        """Each window (tenant, start, its ids) that starts before its tenant's cutoff (the
        tenant's own, else ``default_cutoff``); a window the caller empties is dropped."""
        for tenant_id in list(self._ids):
            windows = self._ids[tenant_id]
            cutoff = cutoffs.get(tenant_id, default_cutoff)
            for start in [s for s in windows if s < cutoff]:
                ids = windows[start]
                yield tenant_id, start, ids
                if not ids:
                    del windows[start]
            if not windows:
                del self._ids[tenant_id]

    def __len__(self) -> int:
        return sum(len(ids) for windows in self._ids.values() for ids in windows.values())
