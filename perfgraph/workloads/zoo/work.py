"""A rough, schedule-free estimate of how long a zoo workload runs, used to pick its shape variants.

The collector wants measurements between about 0.5 ms and 30 ms on one core: shorter ones drown in
timer noise and longer ones make collection slow (and a bad schedule can take seconds). Rather than
repeat every layer's shape arithmetic in a per-entry cost formula, each layer reports its
multiply-accumulates and the elements it moves while it is being built; building a candidate shape
inside :func:`estimating_work` therefore yields its estimate from the one place shapes are computed.

>>> with estimating_work() as work:
...     count_work(macs=2_000_000, elements=100_000)
>>> work.macs, work.elements
(2000000, 100000)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

# Rates measured on the development machine (AMD EPYC, Zen 4, AVX2 target) with greedy Adams2019
# schedules (beam 1) on one core: 3x3 convolutions ran at 2-3 GMAC/s, 1x1 convolutions and matrix
# products at 4-13 GMAC/s; memory-bound stages on tensors larger than the L3 cache moved about 5
# million elements per millisecond (tensors that fit in cache ran several times faster).

#: Multiply-accumulates per millisecond of a decent schedule on one core (float32).
MACS_PER_MS = 5e6
#: Tensor elements (float32) read or written per millisecond by a memory-bound stage on one core.
ELEMENTS_PER_MS = 5e6


@dataclass
class Work:
    """Work accumulated while building a pipeline: multiply-accumulates and elements moved."""

    macs: int = 0
    elements: int = 0

    @property
    def estimated_ms(self) -> float:
        """The run time in milliseconds this much work takes under a decent single-core schedule."""
        return self.macs / MACS_PER_MS + self.elements / ELEMENTS_PER_MS


_current: ContextVar[Work | None] = ContextVar("perfgraph_zoo_work", default=None)


def count_work(*, macs: int = 0, elements: int = 0) -> None:
    """Add a stage's work to the estimate being collected (a no-op outside :func:`estimating_work`)."""
    work = _current.get()
    if work is not None:
        work.macs += macs
        work.elements += elements


@contextlib.contextmanager
def estimating_work() -> Iterator[Work]:
    """Collect the work of every layer built inside the block."""
    work = Work()
    token = _current.set(work)
    try:
        yield work
    finally:
        _current.reset(token)
