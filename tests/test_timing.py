"""The timing protocols: quiet-v2's slow bursts dropped, a bounded wait, the calibration reference kept;
quiet-v3's fixed memory layout."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from perfgraph.data.store import Store
from perfgraph.measure.inputs import BUFFER_ALIGNMENT
from perfgraph.measure.runner import LAYOUT_PAD_BYTES, fixed_layout_environment
from perfgraph.measure.timing import Calibration, TimingPolicy, benchmark


class ScriptedCalibration(Calibration):
    """The real calibration bookkeeping, with the kernel's times replaced by a script (ms per call)."""

    def __init__(self, times_ms, then_ms: float, reference_ms: float = 1.0) -> None:
        super().__init__()
        self.reference_ms = reference_ms  # as read from the reference file of earlier measurements
        self._times = list(times_ms)
        self._then = then_ms

    def measure_ms(self) -> float:
        value = self._times.pop(0) if self._times else self._then
        self.reference_ms = min(self.reference_ms, value)
        self.slow = value > 1.5
        return value


def _runner(calibration: ScriptedCalibration):
    """A candidate that runs 20 ms while the core is contended and 1 ms while it is quiet."""
    return lambda: time.sleep(0.02 if calibration.slow else 0.001)


def test_bursts_run_while_the_core_is_contended_are_dropped():
    # Four contended bursts (calibration 2.0 ms before and after each, against a reference of 1.0 ms
    # from earlier measurements), then a quiet core.
    calibration = ScriptedCalibration([2.0] * 8, then_ms=1.0)
    calibration.slow = True
    policy = TimingPolicy(warmup_runs=0, min_repeats=5, min_duration_s=0.03, burst_s=0.01)
    timing = benchmark(_runner(calibration), policy, calibration)
    assert timing.quiet and timing.rejected_bursts == 4 and timing.waited_s > 0
    assert timing.calibration_ms == 1.0
    assert max(timing.repeats_ms) < 15.0 and len(timing.repeats_ms) >= 5  # no contended repeat was kept


def test_with_no_quiet_period_the_wait_is_bounded_and_the_measurement_marked():
    calibration = ScriptedCalibration([], then_ms=2.0)  # contended for good
    policy = TimingPolicy(warmup_runs=0, min_repeats=5, min_duration_s=0.05, burst_s=0.01, max_wait_s=0.2)
    started = time.perf_counter()
    timing = benchmark(_runner(calibration), policy, calibration)
    assert time.perf_counter() - started < 1.0
    assert not timing.quiet and timing.rejected_bursts == 0  # every repeat kept, and said so
    assert timing.conditions()["quiet"] is False and min(timing.repeats_ms) >= 20.0


def test_the_window_protocol_is_one_window_of_repeats():
    timing = benchmark(lambda: time.sleep(0.001), TimingPolicy(quiet=False, min_repeats=3, min_duration_s=0.02))
    assert timing.protocol == "window-v1" and timing.calibration_ms is None and len(timing.repeats_ms) >= 3


def test_the_fastest_calibration_is_shared_across_processes_through_its_file(tmp_path):
    path = tmp_path / "cpus-1.calibration.json"
    first = Calibration(path)
    assert first.reference_ms is None
    measured = min(first.measure_ms() for _ in range(3))
    first.save()
    second = Calibration(path)
    assert second.reference_ms == measured
    path.write_text("{not json")
    assert Calibration(path).reference_ms is None  # a damaged reference is relearned, not a crash
    path.write_text(json.dumps({"calibration_ms": -1}))
    assert Calibration(path).reference_ms is None


def test_the_policy_names_its_protocol_and_refuses_a_layout_offset_outside_a_page():
    assert TimingPolicy().protocol == "quiet-v4"
    assert TimingPolicy(aligned_buffers=False).protocol == "quiet-v3"
    assert TimingPolicy(fixed_layout=False).protocol == "quiet-v2"
    assert TimingPolicy(quiet=False).protocol == "window-v1"
    for bad in (-1, 4096, 1.5, True):
        with pytest.raises(ValueError, match="layout_offset"):
            TimingPolicy(layout_offset=bad)


#: A child that prints where its stack starts (/proc/self/stat field 28, startstack).
STACK_START_ARGV = [sys.executable, "-c", "print(open('/proc/self/stat').read().rsplit(')', 1)[1].split()[25])"]


def _stack_start(env: dict[str, str]) -> int:
    """Where the child, run under ``setarch -R`` (as the runner starts a fixed-layout worker), starts its stack."""
    result = subprocess.run(["setarch", "-R", *STACK_START_ARGV], env=env, capture_output=True, text=True, check=True)
    return int(result.stdout)


def test_a_fixed_layout_worker_starts_its_stack_at_the_same_place_whatever_the_environment_holds():
    try:
        subprocess.run(["setarch", "-R", "true"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("this host cannot run a process without address-space randomisation")
    argv = STACK_START_ARGV
    base = {"PATH": "/usr/bin:/bin", "HOME": "/root"}
    longer = {**base, "UNRELATED": "y" * 333}
    padded = _stack_start(fixed_layout_environment(argv, base))
    assert padded == _stack_start(fixed_layout_environment(argv, longer))  # the padding absorbs the difference
    assert _stack_start(base) != _stack_start(longer)  # without it the environment moves the stack
    moved = _stack_start(fixed_layout_environment(argv, base, offset=512))
    assert (padded - moved) % LAYOUT_PAD_BYTES == 512  # another offset: another, equally fixed, stack start


def test_collected_measurements_say_whether_their_layout_was_fixed(tiny_db):
    with Store(tiny_db) as store:
        rows = store.execute("SELECT protocol, conditions FROM measurements").fetchall()
    assert rows
    for protocol, conditions in rows:
        fixed = json.loads(conditions)["fixed_layout"]
        assert protocol == ("quiet-v4" if fixed else "quiet-v2")
        assert ("layout_offset" in json.loads(conditions)) == fixed
        assert json.loads(conditions)["buffer_alignment"] == BUFFER_ALIGNMENT
