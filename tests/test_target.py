"""The benchmark target: the host without AVX-512, on any x86-64 CPU Halide knows."""

from __future__ import annotations

import halide as hl

from perfgraph.schedules.autoscheduler import benchmark_target, without_avx512

ALL_AVX512 = [name for name in dir(hl.TargetFeature) if name.upper().startswith("AVX512")]


def test_every_avx512_feature_of_this_halide_is_removed():
    assert len(ALL_AVX512) >= 7  # AVX512, _Cannonlake, _KNL, _SapphireRapids, _Skylake, _Zen4, _Zen5 in Halide 21
    full = hl.Target("x86-64-linux-avx-avx2-f16c-fma-sse41").with_feature(hl.TargetFeature.JIT)
    for name in ALL_AVX512:
        full = full.with_feature(getattr(hl.TargetFeature, name))
    stripped = without_avx512(full)
    assert "avx512" not in str(stripped)
    assert str(stripped) == "x86-64-linux-avx-avx2-f16c-fma-jit-sse41"


def test_the_benchmark_target_keeps_the_host_but_not_its_avx512():
    host = hl.get_jit_target_from_environment()
    target = benchmark_target()
    assert "avx512" not in str(target)
    assert target.arch == host.arch and target.os == host.os and target.bits == host.bits
