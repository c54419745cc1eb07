"""Whether a model fits this machine: the RAM it needs at the configured context, free disk.

The estimate is the file the engine serves (on a CPU with `model.quantize_q8`, its Q8_0 copy),
plus an f16 KV cache of `model.n_ctx` tokens, plus `model.park_mb`, plus llama.cpp's compute
buffers. It errs high by design: "fits" should mean it loads with room to spare.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from bots.modelhub.catalogue import CatalogueEntry
from bots.settings import ModelSettings

# Scratch buffers llama.cpp allocates for a decode step, above weights and KV cache.
COMPUTE_BYTES = 256 * 2**20
# Bits per weight of the common quantizations (llama.cpp's figures), to size the Q8_0 copy.
BITS_PER_WEIGHT = {
    "Q4_0": 4.5,
    "Q4_1": 5.0,
    "Q4_K_S": 4.6,
    "Q4_K_M": 4.85,
    "Q5_K_M": 5.7,
    "Q6_K": 6.56,
    "Q8_0": 8.5,
    "F16": 16.0,
}
MEMINFO = Path("/proc/meminfo")


@dataclass(frozen=True)
class Machine:
    """What this machine has free now."""

    free_ram_bytes: int
    free_disk_bytes: int


@dataclass(frozen=True)
class Fit:
    """How one model fits the machine."""

    ram_bytes: int
    disk_bytes: int
    ram_ok: bool
    disk_ok: bool
    q8_copy: bool

    @property
    def ok(self) -> bool:
        return self.ram_ok and self.disk_ok


def free_ram_bytes() -> int:
    """Memory available to a new process (Linux MemAvailable; else total physical memory)."""
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def free_disk_bytes(path: Path) -> int:
    """Free bytes on the file system that holds `path` (or its nearest existing parent)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return shutil.disk_usage(candidate).free
    return 0


def this_machine(download_dir: Path) -> Machine:
    return Machine(free_ram_bytes(), free_disk_bytes(download_dir))


def q8_copy_applies(entry: CatalogueEntry, model: ModelSettings) -> bool:
    """Whether the engine would serve a Q8_0 copy of this model (CPU and model.quantize_q8)."""
    bits = BITS_PER_WEIGHT.get(entry.quant.upper(), 0.0)
    return model.quantize_q8 and model.n_gpu_layers == 0 and 0 < bits < BITS_PER_WEIGHT["Q8_0"]


def estimate(entry: CatalogueEntry, model: ModelSettings, machine: Machine, *, here: bool) -> Fit:
    """The RAM and disk `entry` needs under `model`'s settings, and whether the machine has it."""
    q8 = q8_copy_applies(entry, model)
    served = entry.size_bytes
    if q8:
        served = int(
            entry.size_bytes * BITS_PER_WEIGHT["Q8_0"] / BITS_PER_WEIGHT[entry.quant.upper()]
        )
    ram = served + entry.kv_bytes(model.n_ctx) + model.park_mb * 2**20 + COMPUTE_BYTES
    disk = (0 if here else entry.size_bytes) + (served if q8 else 0)
    return Fit(ram, disk, ram <= machine.free_ram_bytes, disk <= machine.free_disk_bytes, q8)


def human_bytes(n: int) -> str:
    """1.2 GB, 386 MB: decimal units, as download sizes are usually quoted."""
    if n >= 10**9:
        return f"{n / 10**9:.1f} GB"
    return f"{n / 10**6:.0f} MB"
