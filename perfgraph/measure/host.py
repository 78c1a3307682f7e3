"""A description of the machine measurements come from, so data from different machines never mixes silently."""

from __future__ import annotations

import hashlib
import os
import platform
import re
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from perfgraph.features.layout import MACHINE_FEATURE_NAMES

# ISA flags of /proc/cpuinfo that change the code Halide generates or how fast it runs.
_ISA_FLAGS = re.compile(r"^(sse\d.*|ssse3|avx.*|fma|f16c|amx.*|vnni.*)$")


@dataclass(frozen=True)
class MachineInfo:
    """Hardware and software that determine a measured run time.

    ``fingerprint`` identifies one machine *configuration* (it includes the OS release); ``kind`` is
    the coarser key that samples are grouped by: the CPU model and the Halide target it was compiled
    for. Two VMs of one kind measure the same schedule alike; two kinds must never be averaged.

    >>> a = MachineInfo("AMD EPYC", 2, "x86-64-linux-tune_znver4-avx-avx2-f16c-fma-jit-sse41", "21.0.0", "h1", "L 6")
    >>> b = MachineInfo("AMD EPYC", 2, "x86-64-linux-tune_znver4-avx-avx2-f16c-fma-jit-sse41", "21.0.0", "h2", "L 7")
    >>> a.kind == b.kind, a.fingerprint == b.fingerprint
    (True, False)
    >>> a.kind
    'amd-epyc/znver4-avx2'
    """

    cpu_model: str
    logical_cores: int
    target: str
    halide_version: str
    hostname: str
    os: str
    # Read where available (older records lack them): ISA flags, cache sizes in KiB, base MHz.
    isa_flags: tuple[str, ...] = field(default=())
    cache_kib: dict[str, int] = field(default_factory=dict)
    base_mhz: float | None = None

    @property
    def fingerprint(self) -> str:
        """Identifies the machine *class*: hostnames differ between identical machines, so they are left out."""
        key = f"{self.cpu_model}|{self.logical_cores}|{self.target}|{self.halide_version}|{self.os}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    @property
    def kind(self) -> str:
        return machine_kind(self.cpu_model, self.target)

    def feature_vector(self) -> np.ndarray:
        """The machine kind as model input: :data:`~perfgraph.features.layout.MACHINE_FEATURE_NAMES`, float32.

        A function of the CPU model and the Halide target alone, which is what the :attr:`kind` is made
        of: every record of one kind, old or new, and the live host of that kind give the same vector,
        so a model never meets at prediction a vector it did not train on. The vendor, the base
        frequency the model name states (0 when it states none), the vector ISA the code is compiled
        for and the Zen generation Halide tunes for, scaled to about [0, 1]. (Core counts and cache
        sizes are recorded too, but older records lack them and VMs of one kind differ in them.)
        A machine-aware model (``machine_features=True``) reads it beside every stage, so that one
        checkpoint serves several machine kinds. With a few kinds in the training data it acts as a
        learned per-kind embedding: it tells the known kinds apart, and says little about an unseen
        CPU (``perfgraph adapt`` fine-tunes for one).

        >>> info = MachineInfo("Intel(R) Xeon(R) Processor @ 2.50GHz", 2, "x86-64-linux-avx-avx2-f16c-fma-jit-sse41",
        ...                    "21.0.0", "vm", "Linux")
        >>> {name: round(float(v), 3) for name, v in zip(MACHINE_FEATURE_NAMES, info.feature_vector())}
        ... # doctest: +NORMALIZE_WHITESPACE
        {'vendor_intel': 1.0, 'vendor_amd': 0.0, 'base_ghz': 0.5, 'target_avx512': 0.0, 'target_avx2': 1.0,
         'target_fma': 1.0, 'target_f16c': 1.0, 'tune_zen_generation': 0.0}
        """
        model = self.cpu_model.lower()
        target = self.target.lower().split("-")
        zen = [int(f.removeprefix("tune_znver")) for f in target if re.fullmatch(r"tune_znver\d+", f)]
        stated_ghz = re.search(r"@\s*([\d.]+)\s*ghz", model)
        values = {
            "vendor_intel": float("intel" in model),
            "vendor_amd": float("amd" in model),
            "base_ghz": float(stated_ghz.group(1)) / 5.0 if stated_ghz else 0.0,
            "target_avx512": float(any(f.startswith("avx512") for f in target)),
            "target_avx2": float("avx2" in target),
            "target_fma": float("fma" in target),
            "target_f16c": float("f16c" in target),
            "tune_zen_generation": zen[0] / 8.0 if zen else 0.0,
        }
        return np.array([values[name] for name in MACHINE_FEATURE_NAMES], dtype=np.float32)

    def to_json(self) -> dict:
        return {**asdict(self), "isa_flags": list(self.isa_flags), "fingerprint": self.fingerprint, "kind": self.kind}

    @classmethod
    def from_json(cls, data: dict) -> MachineInfo:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["isa_flags"] = tuple(known.get("isa_flags", ()))
        return cls(**known)


def machine_kind(cpu_model: str, target: str) -> str:
    """A short, stable, readable key for a CPU model and the Halide target its samples were compiled for.

    ``vendor-model/tune-widest-vector-ISA``: the model name as ``/proc/cpuinfo`` gives it (VMs often
    hide the generation), then the target's ``tune_`` CPU and its widest vector ISA.

    >>> machine_kind("Intel(R) Xeon(R) Processor @ 2.50GHz", "x86-64-linux-avx-avx2-f16c-fma-jit-sse41")
    'intel-xeon-2.50ghz/avx2'
    """
    words = re.sub(r"\((R|TM|tm)\)|\bprocessor\b|\bcpu\b|@", " ", cpu_model, flags=re.IGNORECASE).split()
    model = "-".join(w.lower() for w in words)[:40] or "unknown-cpu"
    features = target.split("-")
    tune = [f.removeprefix("tune_") for f in features if f.startswith("tune_")]
    widest = next((isa for isa in ("avx512", "avx2", "avx", "sse41") if isa in features), features[0])
    return f"{model}/{'-'.join([*tune, widest])}"


def cpu_model() -> str:
    for line in _cpuinfo_lines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def isa_flags() -> tuple[str, ...]:
    for line in _cpuinfo_lines():
        if line.startswith("flags"):
            return tuple(sorted(f for f in line.split(":", 1)[1].split() if _ISA_FLAGS.match(f)))
    return ()


def cache_sizes_kib() -> dict[str, int]:
    """Per-core cache sizes of CPU 0 (``L1d``, ``L1i``, ``L2``, ``L3``) from sysfs, in KiB."""
    sizes: dict[str, int] = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        name = f"L{level}" + {"Data": "d", "Instruction": "i"}.get(kind, "")
        number = int(re.sub(r"\D", "", size) or 0)
        sizes[name] = number * 1024 if size.endswith("M") else number
    return sizes


def base_mhz() -> float | None:
    """The base frequency where the kernel says it (``cpufreq/base_frequency``, else the model name's GHz)."""
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/cpufreq/base_frequency").read_text()) / 1000
    except (OSError, ValueError):
        found = re.search(r"@\s*([\d.]+)\s*GHz", cpu_model())
        return float(found.group(1)) * 1000 if found else None


def halide_version() -> str:
    from importlib.metadata import version

    return version("halide")


def current_machine(target: str) -> MachineInfo:
    return MachineInfo(
        cpu_model(),
        os.cpu_count() or 1,
        target,
        halide_version(),
        socket.gethostname(),
        f"{platform.system()} {platform.release()}",
        isa_flags(),
        cache_sizes_kib(),
        base_mhz(),
    )
