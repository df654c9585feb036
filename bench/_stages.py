"""Where the time of one scale search goes, stage by stage (used by bench/speed.py).

The stages are timed by wrapping the library's own functions for the duration of one call (the library has no
timing hooks): each wrapper adds its wall and CPU time (``time.process_time``: every thread of this process, so the
torch pool too) to its stage, less the time of stages nested in it, so that the stages add up to the whole. Reads
must run on the calling thread to be attributed (``prefetch=0``); the default search's overlap of reading with the
model is measured separately, as wall time.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["StageClock"]


class StageClock:
    """Exclusive wall and CPU seconds per stage; ``opaque`` stages count their nested calls as their own."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._stack: list[list[Any]] = []  # [stage, opaque, child wall, child cpu]

    def wrap(self, stage: str, fn: Callable[..., Any], *, opaque: bool = False) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._stack and self._stack[-1][1]:
                return fn(*args, **kwargs)  # inside an opaque stage: its own time
            frame = [stage, opaque, 0.0, 0.0]
            self._stack.append(frame)
            w0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                dw, dc = time.perf_counter() - w0, time.process_time() - c0
                self._stack.pop()
                self.wall[stage] = self.wall.get(stage, 0.0) + dw - frame[2]
                self.cpu[stage] = self.cpu.get(stage, 0.0) + dc - frame[3]
                self.calls[stage] = self.calls.get(stage, 0) + 1
                if self._stack:
                    self._stack[-1][2] += dw
                    self._stack[-1][3] += dc

        return timed

    @contextlib.contextmanager
    def patched(self, targets: list[tuple[Any, str, str, bool]]) -> Iterator[None]:
        """Replace ``owner.name`` by its timed wrapper for each (owner, name, stage, opaque) while inside."""
        # (owner, name, original, whether the owner itself held it: an instance's method lives on its class)
        saved = [(owner, name, getattr(owner, name), name in vars(owner)) for owner, name, _, _ in targets]
        try:
            for (owner, name, stage, opaque), (_, _, fn, _) in zip(targets, saved):
                setattr(owner, name, self.wrap(stage, fn, opaque=opaque))
            yield
        finally:
            for owner, name, fn, own in reversed(saved):
                if own:
                    setattr(owner, name, fn)
                else:
                    delattr(owner, name)
