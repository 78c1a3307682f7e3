"""A description of the machine measurements come from, so data from different machines never mixes silently."""

from __future__ import annotations

import hashlib
import os
import platform
import socket
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class MachineInfo:
    """Hardware and software that determine a measured run time."""

    cpu_model: str
    logical_cores: int
    target: str
    halide_version: str
    hostname: str
    os: str

    @property
    def fingerprint(self) -> str:
        """Identifies the machine *class*: hostnames differ between identical machines, so they are left out."""
        key = f"{self.cpu_model}|{self.logical_cores}|{self.target}|{self.halide_version}|{self.os}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def to_json(self) -> dict:
        return {**asdict(self), "fingerprint": self.fingerprint}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
    )
