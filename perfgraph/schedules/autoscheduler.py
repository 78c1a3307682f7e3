"""Candidate schedules from Halide's real Adams2019 autoscheduler, sampled like Halide's own loop.

Halide's ``adams2019_autotune_loop.sh`` draws, per batch, one beam-search schedule
(``beam_size=32, random_dropout=100``) and many random ones (``beam_size=1, random_dropout=1`` with
distinct seeds). We do the same, and widen the spread of run times by mixing the full search space
with the narrower ``disable_subtiling=1`` space and by using random cost-model weights for some
candidates, so that both fast and slow schedules appear in the data.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import halide as hl

# A weights path that does not exist makes Adams2019 fall back to random weights.
RANDOM_WEIGHTS_PATH = "/nonexistent/perfgraph-random-weights.weights"

# Beam search with beam 32 took ~10 minutes for a 13-stage pipeline on this machine class; the beam
# candidate uses a smaller beam for larger pipelines (the beam used is recorded with the schedule).
_BEAM_BY_STAGES = ((3, 32), (8, 8), (10**9, 2))


@dataclass(frozen=True)
class AutoschedulerConfig:
    """Every Adams2019 parameter perfgraph sets for one candidate (recorded with its schedule)."""

    beam_size: int = 1
    random_dropout: int = 1
    random_dropout_seed: int = 1
    disable_subtiling: bool = False
    random_weights: bool = False
    parallelism: int = 1
    weights_path: str | None = None  # a .weights file (``perfgraph export --format weights``); None: Halide's own

    def __post_init__(self) -> None:
        if self.random_dropout_seed <= 0:
            raise ValueError(
                f"random_dropout_seed must be > 0 (0 means 'use the time'), got {self.random_dropout_seed}"
            )
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.random_weights and self.weights_path:
            raise ValueError("random_weights and weights_path exclude each other")

    def to_halide_params(self) -> dict[str, str]:
        """The exact key/value strings passed to ``hl.AutoschedulerParams`` (unknown keys abort Halide)."""
        params = {
            "parallelism": str(self.parallelism),
            "beam_size": str(self.beam_size),
            "random_dropout": str(self.random_dropout),
            "random_dropout_seed": str(self.random_dropout_seed),
            "disable_subtiling": "1" if self.disable_subtiling else "0",
        }
        if self.random_weights:
            params["weights_path"] = RANDOM_WEIGHTS_PATH
        elif self.weights_path:
            params["weights_path"] = self.weights_path
        return params

    def to_json(self) -> dict:
        """Every field and the exact Halide parameters (``weights_path`` only when set, so stored configs stay)."""
        fields = {k: v for k, v in asdict(self).items() if k != "weights_path" or v is not None}
        return {**fields, "halide_params": self.to_halide_params()}

    @classmethod
    def from_json(cls, data: dict) -> AutoschedulerConfig:
        return cls(**{k: v for k, v in data.items() if k != "halide_params"})


def beam_size_for(num_stages: int) -> int:
    """The beam used for the beam-search candidate of a pipeline with ``num_stages`` stages."""
    return next(beam for limit, beam in _BEAM_BY_STAGES if num_stages <= limit)


# The core count the autoscheduler tunes for, varied across random candidates: on small DL layers
# the random search alone finds only a handful of distinct schedules, while a schedule tuned for 8 or
# 32 cores (outer parallel loops, other tile sizes) is still valid, and timed as it runs here.
_ASSUMED_CORES = (1, 4, 16, 2, 8, 32)


def sampling_plan(
    num_schedules: int, num_stages: int, parallelism: int = 1, max_beam_size: int | None = None
) -> list[AutoschedulerConfig]:
    """Candidate 0 is a beam search; candidates 1..K-1 are random, cycling through search spaces.

    ``max_beam_size`` caps the beam of candidate 0 (tests and quick demos use a small one).
    The cycle is: narrow space, full space, narrow space with random weights, narrow space. The
    narrow space (``disable_subtiling``) is ~8x faster to search; random weights spread run times.
    After each cycle the assumed core count (``parallelism``) changes: 1, 4, 16, 2, 8, 32 times
    ``parallelism``; the beam-search candidate keeps ``parallelism``.

    >>> [(c.beam_size, c.disable_subtiling, c.random_weights) for c in sampling_plan(5, 3)]
    [(32, False, False), (1, True, False), (1, False, False), (1, True, True), (1, True, False)]
    """
    if num_schedules < 1:
        raise ValueError(f"num_schedules must be >= 1, got {num_schedules}")
    beam = min(beam_size_for(num_stages), max_beam_size or 10**9)
    plan = [AutoschedulerConfig(beam_size=beam, random_dropout=100, parallelism=parallelism)]
    cycle = ((True, False), (False, False), (True, True), (True, False))
    for index in range(1, num_schedules):
        narrow, random_weights = cycle[(index - 1) % len(cycle)]
        cores = _ASSUMED_CORES[((index - 1) // len(cycle)) % len(_ASSUMED_CORES)] * parallelism
        plan.append(
            AutoschedulerConfig(
                beam_size=1,
                random_dropout=1,
                random_dropout_seed=index,
                disable_subtiling=narrow,
                random_weights=random_weights,
                parallelism=cores,
            )
        )
    return plan


def search_configs(count: int, first_seed: int = 1, parallelism: int = 1) -> list[AutoschedulerConfig]:
    """Deterministic random candidates for a model-guided search: ``count`` configs, seeds from ``first_seed``.

    Only what can be rebuilt exactly is proposed: ``beam_size=1, random_dropout=1`` with an explicit
    seed, never clock-seeded random weights. Two of three use the narrow space (``disable_subtiling``,
    ~8x faster to search), one the full space; the assumed core count cycles like :func:`sampling_plan`'s.

    >>> [(c.random_dropout_seed, c.disable_subtiling, c.parallelism) for c in search_configs(4, first_seed=7)]
    [(7, True, 1), (8, False, 1), (9, True, 1), (10, True, 4)]
    """
    if count < 0 or first_seed < 1:
        raise ValueError(f"count must be >= 0 and first_seed >= 1, got {count} and {first_seed}")
    return [
        AutoschedulerConfig(
            beam_size=1,
            random_dropout=1,
            random_dropout_seed=first_seed + i,
            disable_subtiling=i % 3 != 1,
            parallelism=_ASSUMED_CORES[(i // 3) % len(_ASSUMED_CORES)] * parallelism,
        )
        for i in range(count)
    ]


def load_adams2019() -> None:
    """Load the Adams2019 plugin shipped in the ``halide`` wheel (idempotent)."""
    hl.load_plugin(os.path.join(hl.install_dir(), "lib64", "libautoschedule_adams2019.so"))


def benchmark_target() -> hl.Target:
    """The JIT target schedules are compiled for: the host, without AVX-512, as Halide's loop trains.

    Halide's ``adams2019_autotune_loop.sh`` removes AVX-512 features; we do the same so that the
    data matches what Halide's own cost model was designed for.
    """
    return without_avx512(hl.get_jit_target_from_environment())


def without_avx512(target: hl.Target) -> hl.Target:
    """``target`` with every AVX-512 feature removed, whatever this Halide release calls them.

    Every ``hl.TargetFeature`` whose name starts with ``AVX512`` is removed, so that a feature added
    by a later release (``AVX512_Zen5`` came with Halide 19) is not missed.

    >>> str(without_avx512(hl.Target("x86-64-linux-avx-avx2-avx512-avx512_skylake-avx512_zen5-fma-sse41")))
    'x86-64-linux-avx-avx2-fma-sse41'
    """
    for name in dir(hl.TargetFeature):
        if name.upper().startswith("AVX512"):
            target = target.without_feature(getattr(hl.TargetFeature, name))
    return target
