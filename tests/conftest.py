"""Shared fixtures: a tiny dataset really collected with Halide on this machine (about a minute)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from perfgraph.data.records import Sample
from perfgraph.data.store import Store
from perfgraph.measure.collector import CollectOptions, Collector
from perfgraph.measure.timing import TimingPolicy
from perfgraph.workloads.base import zoo_uri

PIPELINES_DIR = Path(__file__).parent / "pipelines"
USER_PIPELINES = PIPELINES_DIR / "user_pipelines.py"

# Small but measurable shapes (tenths of a millisecond and up), three graph shapes.
TINY_WORKLOADS = (
    zoo_uri("conv2d", w=32, h=32, c_in=16, c_out=16, kernel=3, stride=1, padding=1),
    zoo_uri("resnet_basic_block", w=16, h=16, c_in=8, c_out=8, stride=1),
    f"file:{USER_PIPELINES}:blur",
)
# The quiet protocol as collected, with short bursts and at most a second of waiting for a quiet core.
FAST_TIMING = TimingPolicy(min_repeats=3, max_repeats=30, min_duration_s=0.05, burst_s=0.02, max_wait_s=1.0)
TINY_SCHEDULES = 8  # Halide's trainer skips pipelines with fewer than 8 schedules


def collect_tiny(db: Path, uris=TINY_WORKLOADS, schedules: int = TINY_SCHEDULES, **options) -> Store:
    store = Store(db)
    defaults = {
        "schedules_per_pipeline": schedules,
        "workers": 2,
        "max_beam_size": 2,
        "remeasure_fraction": 0.25,
        "show_progress": False,
        "timing": FAST_TIMING,
    }
    Collector(store, CollectOptions(**{**defaults, **options})).collect(list(uris))
    return store


@pytest.fixture(scope="session")
def tiny_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a SQLite store with 3 pipelines x 8 candidates, measured for real."""
    db = tmp_path_factory.mktemp("tiny") / "tiny.db"
    collect_tiny(db).close()
    return db


@pytest.fixture(scope="session")
def real_samples(tiny_db: Path) -> list[Sample]:
    with Store(tiny_db) as store:
        samples = store.samples()
    assert len({s.pipeline_id for s in samples}) == len(TINY_WORKLOADS)
    return samples


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run torch on ``count`` threads inside the block (for module fixtures that train)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Core 1 is reserved for measurements: keep torch on one thread (``pytestmark`` of the model tests)."""
    with torch_threads(1):
        yield
