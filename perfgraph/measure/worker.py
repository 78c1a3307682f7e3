"""The isolated worker process: one job (analyse a pipeline, or measure one candidate) per process.

The Adams2019 autoscheduler can abort its process and a bad schedule can run for minutes, so every
job runs in a fresh ``python -m perfgraph.measure.worker`` process that the parent can time out and
kill. A fresh process also makes Halide's automatic Func names (``f0``, ``f1`` ...) deterministic.

Protocol: the parent writes one JSON job on stdin; the worker writes events as JSON lines prefixed by
``EVENT_PREFIX`` on stdout (Halide writes its diagnostics to stderr, which the parent captures). A
candidate job waits after autoscheduling for a one-line reply (``{"go": true}``) so that the parent
can skip benchmarking a schedule whose features were already measured.
"""

from __future__ import annotations

import base64
import ctypes
import fcntl
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

EVENT_PREFIX = "@@perfgraph "


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(EVENT_PREFIX + json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


#: Adams2019 sometimes unrolls a loop whose extent is only constant under the estimates
#: (halide/Halide#4271), and lowering then fails with "Can only unroll for loops over a constant
#: extent". Halide's own autotuning loop (``src/autoschedulers/adams2019/autotune_loop.sh``) sets this
#: variable so that such a loop stays serial (with a warning on stderr) and the schedule is measured.
PERMIT_FAILED_UNROLL = ("HL_PERMIT_FAILED_UNROLL", "1")


def _compile(built, target):  # type: ignore[no-untyped-def]
    """Compile ``built``'s pipeline for ``target``; returns the callable and its argument names in order."""
    os.environ.setdefault(*PERMIT_FAILED_UNROLL)  # read by Halide's UnrollLoops when it lowers
    arguments = built.pipeline.infer_arguments()
    callable_ = built.pipeline.compile_to_callable(arguments, target)
    return callable_, [a.name for a in arguments]


def lock_if_free(lock) -> bool:  # type: ignore[no-untyped-def]
    """Take the exclusive ``flock`` on ``lock`` if nobody holds it; ``False`` (without waiting) otherwise."""
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _run(callable_, names, buffers) -> None:  # type: ignore[no-untyped-def]
    callable_(*[buffers.inputs[n] for n in names], *buffers.outputs)


def _outputs_as_numpy(buffers) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    return [np.array(buffer, copy=True) for buffer in buffers.outputs]


def analyze(job: dict) -> None:
    """Describe a pipeline (the stage graph goes to stderr) and save its reference output."""
    import halide as hl

    from perfgraph.schedules.autoscheduler import AutoschedulerConfig, benchmark_target, load_adams2019
    from perfgraph.workloads.base import build_pipeline

    target = benchmark_target()
    built = build_pipeline(job["uri"])
    emit(
        "built",
        inputs=[vars(s) for s in built.input_buffers],
        scalars=[vars(s) for s in built.input_scalars],
        outputs=[vars(s) for s in built.output_buffers],
    )
    load_adams2019()
    emit("phase", phase="autoschedule")
    config = AutoschedulerConfig(beam_size=1, random_dropout=1, random_dropout_seed=1, disable_subtiling=True)
    result = built.pipeline.apply_autoscheduler(target, hl.AutoschedulerParams("Adams2019", config.to_halide_params()))
    featurization = bytes(result.featurization)
    emit("analyzed", featurization=base64.b64encode(featurization).decode())
    if job.get("reference_path"):
        save_reference(job["uri"], job["input_seed"], Path(job["reference_path"]), target)


def save_reference(uri: str, input_seed: int, path: Path, target) -> None:  # type: ignore[no-untyped-def]
    """Compute a pipeline's reference output under an independent schedule and save it to ``path``.

    The same algorithm under another autoscheduler (Mullapudi2016), on a freshly built copy of the
    pipeline. (Li2018's fused parallel loops made bounds inference read weights far outside their
    estimates on conv pipelines, so it is not used.) Deterministic: a missing reference (a store
    rebuilt from shards on a fresh machine) is rebuilt on demand by the candidate that needs it.
    """
    import halide as hl

    from perfgraph.measure.inputs import make_buffers
    from perfgraph.workloads.base import build_pipeline

    emit("phase", phase="reference")
    built = build_pipeline(uri)
    hl.load_plugin(os.path.join(hl.install_dir(), "lib64", "libautoschedule_mullapudi2016.so"))
    built.pipeline.apply_autoscheduler(target, hl.AutoschedulerParams("Mullapudi2016", {"parallelism": "1"}))
    callable_, names = _compile(built, target)
    buffers = make_buffers(built, input_seed)
    _run(callable_, names, buffers)
    reference = _outputs_as_numpy(buffers)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npz")  # two workers may rebuild one reference at once
    np.savez_compressed(tmp, *reference)
    tmp.replace(path)
    emit("reference_saved", path=str(path))


def featurize(job: dict) -> None:
    """Autoschedule each config of ``job["configs"]`` and report its featurization; compile nothing.

    The builder role (TVM MetaSchedule's split): candidates for prediction only need Halide's
    featurization and schedule source. Each config starts from a freshly built pipeline; the
    ``phase`` event before each restarts the parent's autoschedule time limit.
    """
    import halide as hl

    from perfgraph.schedules.autoscheduler import AutoschedulerConfig, benchmark_target, load_adams2019
    from perfgraph.workloads.base import build_pipeline

    target = benchmark_target()
    load_adams2019()
    for position, data in enumerate(job["configs"]):
        config = AutoschedulerConfig.from_json(data)
        built = build_pipeline(job["uri"])
        emit("phase", phase="autoschedule")
        started = time.perf_counter()
        params = hl.AutoschedulerParams("Adams2019", config.to_halide_params())
        try:
            result = built.pipeline.apply_autoscheduler(target, params)
        except hl.HalideError as error:  # e.g. "Ran out of legal states": this config only
            emit("unscheduled", position=position, message=f"{type(error).__name__}: {error}")
            continue
        emit(
            "scheduled",
            position=position,
            featurization=base64.b64encode(bytes(result.featurization)).decode(),
            schedule_source=result.schedule_source,
            autoschedule_s=time.perf_counter() - started,
        )


INTEGER_OUTPUT_TOLERANCE = 1  # units: an integer output computed in float may round the other way
# Float outputs: at most this share of values may lie outside the tolerance (but within OUTLIER_FACTOR
# times it): a deep chain of reductions re-associated by the schedule can lose a few more digits on a
# handful of ill-conditioned values, while a wrong schedule (wrong bounds, a missed update, a race)
# spoils whole rows or tiles, far more values by far more.
FLOAT_OUTLIER_SHARE = 1e-3
OUTLIER_FACTOR = 10.0


def _matches(actual: np.ndarray, expected: np.ndarray) -> str | None:
    """``None`` if an output equals the reference within a tolerance that fits its type, else why not.

    Schedules change the order and fusion of float operations (FMA contraction, vectorised reductions),
    so float outputs may differ in their last bits, and an integer output computed in float (an 8-bit
    image through a tone curve) by one unit where a value lies near a rounding boundary. Float outputs
    are compared with a relative tolerance (``rtol`` 1e-3, ``atol`` 1e-4 of the output's largest
    magnitude), of which a share of at most ``FLOAT_OUTLIER_SHARE`` of the values may be up to
    ``OUTLIER_FACTOR`` times out; integer outputs within one unit, booleans exactly.

    >>> _matches(np.array([10, 200], np.uint8), np.array([11, 200], np.uint8)) is None
    True
    >>> _matches(np.array([10, 200], np.uint8), np.array([12, 200], np.uint8))
    '1 of 2 values differ from the reference (by up to 2)'
    >>> reference = np.linspace(1, 2, 2000, dtype=np.float32)
    >>> nudged = reference.copy(); nudged[7] *= 1.004
    >>> _matches(nudged, reference) is None  # one value in 2000, 3x the tolerance out
    True
    >>> nudged[8:10] *= 1.004; _matches(nudged, reference)  # three values in 2000
    '3 of 2000 values differ from the reference (by up to 0.004018 where 0.001205 is allowed)'
    >>> nudged = reference.copy(); nudged[5] *= 1.05; _matches(nudged, reference)  # one, 40x out
    '1 of 2000 values differ from the reference (by up to 0.05013 where 0.001203 is allowed)'
    >>> _matches(np.array([1.0, np.inf, np.nan]), np.array([1.0, np.inf, np.nan])) is None
    True
    >>> _matches(np.array([np.nan]), np.array([1.0]))
    '1 of 1 values differ from the reference (NaN or infinite where it is not)'
    >>> _matches(np.array([1e30]), np.array([np.inf]))
    '1 of 1 values differ from the reference (NaN or infinite where it is not)'
    """
    if actual.shape != expected.shape:
        return f"shape {actual.shape} != reference {expected.shape}"
    if actual.dtype.kind == "f":
        finite = np.abs(expected[np.isfinite(expected)])
        scale = float(finite.max()) if finite.size else 0.0
        magnitude = np.abs(np.where(np.isfinite(expected), expected, 0.0).astype(np.float64))
        allowed = 1e-4 * max(scale, 1.0) + 1e-3 * magnitude  # an infinity must be matched exactly
        with np.errstate(invalid="ignore"):  # inf - inf: equal infinities are caught by == below
            difference = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
        exact = (actual == expected) | (np.isnan(actual) & np.isnan(expected))
        close = exact | (difference <= allowed)
        tolerable = exact | (difference <= OUTLIER_FACTOR * allowed)
        if tolerable.all() and (~close).sum() <= FLOAT_OUTLIER_SHARE * close.size:
            return None
    elif actual.dtype.kind in "iu":
        wide = np.int64 if actual.dtype.itemsize < 8 else object  # differences without wrap-around
        difference = np.abs(actual.astype(wide) - expected.astype(wide))
        close = np.asarray(difference <= INTEGER_OUTPUT_TOLERANCE, dtype=bool)
    else:
        close = actual == expected
    if close.all():
        return None
    bad = int((~close).sum())
    if actual.dtype.kind in "iu":
        return f"{bad} of {close.size} values differ from the reference (by up to {difference[~close].max()})"
    if actual.dtype.kind == "f":
        measurable = ~close & np.isfinite(difference)
        if not measurable.any():  # every difference is a NaN or an infinity on one side only
            return f"{bad} of {close.size} values differ from the reference (NaN or infinite where it is not)"
        worst = int(np.argmax(np.where(measurable, difference / allowed, -np.inf)))
        return (
            f"{bad} of {close.size} values differ from the reference (by up to "
            f"{difference.flat[worst]:.4g} where {allowed.flat[worst]:.4g} is allowed)"
        )
    return f"{bad} of {close.size} values differ from the reference"


def measure(job: dict) -> None:
    """Autoschedule one candidate, compile it, benchmark it on the benchmark cores, check its output."""
    import halide as hl

    from perfgraph.measure.inputs import BUFFER_ALIGNMENT, call_widening_inputs, make_buffers
    from perfgraph.measure.timing import Calibration, TimingPolicy, benchmark
    from perfgraph.schedules.autoscheduler import AutoschedulerConfig, benchmark_target, load_adams2019
    from perfgraph.workloads.base import build_pipeline

    target = benchmark_target()
    built = build_pipeline(job["uri"])
    load_adams2019()
    config = AutoschedulerConfig.from_json(job["config"])
    emit("phase", phase="autoschedule")
    started = time.perf_counter()
    result = built.pipeline.apply_autoscheduler(target, hl.AutoschedulerParams("Adams2019", config.to_halide_params()))
    emit(
        "scheduled",
        featurization=base64.b64encode(bytes(result.featurization)).decode(),
        schedule_source=result.schedule_source,
        autoschedule_s=time.perf_counter() - started,
    )
    reply = json.loads(sys.stdin.readline() or "{}")
    if not reply.get("go"):
        return
    reference_path = Path(job["reference_path"])
    if not reference_path.is_file():
        save_reference(job["uri"], job["input_seed"], reference_path, target)
    with open(job["lock_path"], "w") as lock:
        # The lock gives one candidate at a time the benchmark cores. Compiling (seconds of LLVM) is the
        # collector's bottleneck and a benchmark takes well under a second, so the benchmark cores are
        # mostly idle: with ``compile_on_idle_benchmark_cpus``, a candidate that finds nobody holding
        # them takes them already for its compile and keeps them through its benchmark. A compile then
        # never runs beside a benchmark on its cores (with two workers this added no measurable noise: README).
        on_benchmark_cpus = job["compile_on_idle_benchmark_cpus"] and lock_if_free(lock)
        if on_benchmark_cpus:
            os.sched_setaffinity(0, set(job["benchmark_cpus"]))
        emit("phase", phase="compile")
        started = time.perf_counter()
        callable_, names = _compile(built, target)
        policy = TimingPolicy(**job["timing"])
        buffers = make_buffers(built, job["input_seed"], BUFFER_ALIGNMENT if policy.aligned_buffers else None)
        compile_s = time.perf_counter() - started
        if not on_benchmark_cpus:
            emit("phase", phase="wait")
            fcntl.flock(lock, fcntl.LOCK_EX)
            os.sched_setaffinity(0, set(job["benchmark_cpus"]))
        emit("phase", phase="run")
        fixed_layout = policy.fixed_layout and layout_is_fixed()
        calibration = Calibration(Path(job["lock_path"]).with_suffix(".calibration.json"))
        steal_before = steal_ms(job["benchmark_cpus"])
        timing, _ = call_widening_inputs(
            lambda: benchmark(lambda: _run(callable_, names, buffers), policy, calibration), buffers
        )
        steal = steal_ms(job["benchmark_cpus"]) - steal_before
    reference = np.load(reference_path)
    mismatch = next(
        (
            f"output {i}: {reason}"
            for i, out in enumerate(_outputs_as_numpy(buffers))
            if (reason := _matches(out, reference[f"arr_{i}"])) is not None
        ),
        None,
    )
    if mismatch:
        emit("wrong_output", message=mismatch)
        return
    emit(
        "measured",
        repeats_ms=list(timing.repeats_ms),
        min_ms=timing.min_ms,
        median_ms=timing.median_ms,
        cv=timing.cv,
        compile_s=compile_s,
        compiled_on_benchmark_cpus=on_benchmark_cpus,
        protocol=policy.recorded_protocol(fixed_layout),
        conditions={**timing.conditions(), "steal_ms": steal, "fixed_layout": fixed_layout}
        | {"buffer_alignment": buffers.alignment}
        | ({"layout_offset": policy.layout_offset} if fixed_layout else {}),
    )


#: Linux personality flag (linux/personality.h): no address-space layout randomisation.
ADDR_NO_RANDOMIZE = 0x0040000


def layout_is_fixed() -> bool:
    """Whether this process runs without address-space layout randomisation (``ADDR_NO_RANDOMIZE``)."""
    try:
        with open("/proc/self/personality") as flags:
            return bool(int(flags.read(), 16) & ADDR_NO_RANDOMIZE)
    except (OSError, ValueError):
        return False


def steal_ms(cpus: list[int]) -> float:
    """Milliseconds the hypervisor has run others on ``cpus`` since boot (``/proc/stat`` steal column).

    0.0 where ``/proc/stat`` is missing (not Linux).
    """
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    wanted = {f"cpu{cpu}" for cpu in cpus}
    rows = [fields for fields in map(str.split, lines) if fields and fields[0] in wanted and len(fields) > 8]
    total = sum(int(fields[8]) for fields in rows)
    return total * 1000.0 / ticks


_on_terminate = None  # the installed handler, kept alive as long as the process


def _report_uncaught_cxx_exceptions() -> None:
    """Make an uncaught ``Halide::Error`` print its message before the worker aborts.

    Adams2019 can throw where no caller catches (an exception that leaves a ``noexcept`` function, or a
    second one thrown while unwinding): C++ then calls ``std::terminate``, whose default handler says only
    "terminate called after throwing an instance of 'Halide::Error'", because ``Halide::Error`` does not
    derive from ``std::exception`` and the handler cannot read its text. This installs a terminate handler
    that adds the ``what()`` of a Halide error, on stderr, which the runner reads back
    (:func:`perfgraph.measure.runner.last_words`). Off where libstdc++ or Halide's symbols are missing.
    """
    global _on_terminate
    import halide as hl

    try:
        cxx = ctypes.CDLL("libstdc++.so.6")
        halide = ctypes.CDLL(os.path.join(hl.install_dir(), "lib64", "libHalide.so"))
        exception_type, current_exception = cxx.__cxa_current_exception_type, cxx._ZSt17current_exceptionv
        set_terminate, what = cxx._ZSt13set_terminatePFvvE, halide._ZNK6Halide5Error4whatEv
        demangle = cxx.__cxa_demangle
    except (OSError, AttributeError):
        return
    exception_type.restype = ctypes.c_void_p
    current_exception.argtypes, current_exception.restype = [ctypes.c_void_p], ctypes.c_void_p
    what.argtypes, what.restype = [ctypes.c_void_p], ctypes.c_char_p
    set_terminate.argtypes, set_terminate.restype = [ctypes.c_void_p], ctypes.c_void_p
    demangle.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    demangle.restype = ctypes.c_char_p  # leaks a malloc'd string, once, in a process about to abort

    @ctypes.CFUNCTYPE(None)
    def on_terminate() -> None:  # std::abort follows when it returns
        type_info = exception_type()
        if not type_info:
            os.write(2, b"terminate called without an active exception\n")
            return
        # A std::type_info is a vtable pointer, then the mangled name ("N6Halide12CompileErrorE").
        mangled = ctypes.cast(ctypes.c_void_p.from_address(type_info + 8).value, ctypes.c_char_p).value or b""
        name = (demangle(mangled, None, None, None) or mangled).decode(errors="replace")
        message = f"terminate called after throwing an instance of '{name}'\n"
        if name.startswith("Halide::") and name.endswith("Error"):
            exception_ptr = ctypes.c_void_p()  # std::exception_ptr: the thrown object's address
            current_exception(ctypes.addressof(exception_ptr))
            if exception_ptr.value:
                text = (what(exception_ptr.value) or b"").decode(errors="replace")
                message += f"  what():  {text.strip()}\n"
        os.write(2, message.encode())

    _on_terminate = on_terminate
    set_terminate(ctypes.cast(on_terminate, ctypes.c_void_p))


def main() -> None:
    job = json.loads(sys.stdin.readline())
    _report_uncaught_cxx_exceptions()
    from perfgraph.workloads.base import WorkloadError

    try:
        {"analyze": analyze, "measure": measure, "featurize": featurize}[job["kind"]](job)
    except WorkloadError as error:
        emit("workload_error", message=str(error))
        sys.exit(3)
    except Exception as error:  # Halide errors (hl.HalideError) and anything else: reported, not fatal
        emit("error", message=f"{type(error).__name__}: {error}")
        sys.exit(2)


if __name__ == "__main__":
    main()
