"""Hand-made samples for the model tests that need many pipelines or exact control over run times."""

from __future__ import annotations

import numpy as np

from perfgraph.data.records import Sample
from perfgraph.features.layout import NUM_EDGE_FEATURES, NUM_PIPELINE_FEATURES, NUM_SCHEDULE_FEATURES


def synthetic_samples(
    num_pipelines: int, num_schedules: int, num_stages: int | None = 3, seed: int = 0, runtime: str = "points"
) -> list[Sample]:
    """Random non-negative featurizations of chain-shaped pipelines.

    ``num_stages=None`` gives pipelines of 2-4 stages. ``runtime="points"`` makes run time grow with the
    points computed (schedule feature 4, +-10%); ``"uniform"`` draws it from 0.5-20 ms (float32-exact,
    as a ``.sample`` file stores it).
    """
    rng = np.random.default_rng(seed)
    samples = []
    for pipeline_id in range(num_pipelines):
        stages = num_stages if num_stages is not None else 2 + pipeline_id % 3
        pipeline_part = rng.integers(0, 20, (stages, NUM_PIPELINE_FEATURES)).astype(np.float32)
        for schedule_id in range(num_schedules):
            schedule_part = rng.integers(1, 4096, (stages, NUM_SCHEDULE_FEATURES)).astype(np.float32)
            if runtime == "points":
                runtime_ms = float(1e-3 * schedule_part[:, 4].sum() * rng.uniform(0.9, 1.1))
            else:
                runtime_ms = float(np.float32(rng.uniform(0.5, 20.0)))
            samples.append(
                Sample(
                    pipeline_id,
                    schedule_id,
                    f"p{pipeline_id}",
                    "test",
                    np.concatenate([schedule_part, pipeline_part], axis=1),
                    np.array([np.arange(1, stages), np.arange(stages - 1)], dtype=np.int64),
                    np.zeros((stages - 1, NUM_EDGE_FEATURES), np.float32),
                    (),
                    runtime_ms,
                )
            )
    return samples
