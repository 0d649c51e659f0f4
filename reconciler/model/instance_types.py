"""The default instance-type table: Azure VM sizes with their cores, memory and GPUs.

Targets map instance_type to CPU and memory limits with it (scaled by a factor for a small
host); planning uses the cores for the quota figure ceil(1.2 x instances) x cores.
A target's configuration may add or override entries.

The rows are the SKUs Azure ML supports for managed online endpoints (its documentation page
"Managed online endpoints SKU list": cores and GPUs), with each size's memory from Azure's VM
size pages. Names are matched case-insensitively, as Azure matches them (`STANDARD_DS3_V2` is
`Standard_DS3_v2`); the names below are the canonical spelling a loaded spec carries.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from reconciler.model.specs import Resources


@dataclass(frozen=True, slots=True)
class InstanceType:
    """An instance type's cores, memory and GPUs (quota figures, resources)."""

    name: str
    cores: int
    memory_gb: float
    gpus: int = 0


# Kubernetes compute always has this instance type (Azure ML's extension creates it); its
# resources are the cluster's defaults, so it needs no row in any table.
KUBERNETES_DEFAULT_INSTANCE_TYPE: Final = "defaultinstancetype"


def _table(*rows: InstanceType) -> dict[str, InstanceType]:
    return {row.name: row for row in rows}


def _family(pattern: str, rows: tuple[tuple[int, float, int], ...]) -> list[InstanceType]:
    """Sizes of one family: pattern holds {n} for the vCPU count."""
    return [InstanceType(pattern.format(n=n), n, memory, gpus) for n, memory, gpus in rows]


def _per_core(pattern: str, memory_per_core: float, *cores: int) -> list[InstanceType]:
    return _family(pattern, tuple((n, n * memory_per_core, 0) for n in cores))


DEFAULT_INSTANCE_TYPES: Mapping[str, InstanceType] = _table(
    # General purpose
    *_per_core("Standard_D{n}as_v4", 4, 2, 4, 8, 16, 32, 48, 64, 96),
    *_per_core("Standard_D{n}a_v4", 4, 2, 4, 8, 16, 32, 48, 64, 96),
    InstanceType("Standard_DS1_v2", 1, 3.5),
    InstanceType("Standard_DS2_v2", 2, 7),
    InstanceType("Standard_DS3_v2", 4, 14),
    InstanceType("Standard_DS4_v2", 8, 28),
    InstanceType("Standard_DS5_v2", 16, 56),
    # Memory optimised
    *_per_core("Standard_E{n}s_v3", 8, 2, 4, 8, 16, 32, 48),
    InstanceType("Standard_E64s_v3", 64, 432),
    *_family(
        "Standard_FX{n}mds",
        ((4, 84, 0), (12, 252, 0), (24, 504, 0), (36, 756, 0), (48, 1008, 0)),
    ),
    # Compute optimised
    *_per_core("Standard_F{n}s_v2", 2, 2, 4, 8, 16, 32, 48, 64, 72),
    # Storage optimised
    *_per_core("Standard_L{n}as_v3", 8, 8, 16, 32, 48, 64, 80),
    *_per_core("Standard_L{n}s_v2", 8, 8, 16, 32, 48, 64, 80),
    *_per_core("Standard_L{n}s_v3", 8, 8, 16, 32, 48, 64, 80),
    # GPU
    *_family("Standard_NC{n}ads_A100_v4", ((24, 220, 1), (48, 440, 2), (96, 880, 4))),
    *_family("Standard_NC{n}as_T4_v3", ((4, 28, 1), (8, 56, 1), (16, 110, 1), (64, 440, 4))),
    *_family("Standard_NC{n}s_v2", ((6, 112, 1), (12, 224, 2), (24, 448, 4))),
    *_family("Standard_NC{n}s_v3", ((6, 112, 1), (12, 224, 2), (24, 448, 4))),
    InstanceType("Standard_NC40ads_H100_v5", 40, 320, gpus=1),
    InstanceType("Standard_NC80adis_H100_v5", 80, 640, gpus=2),
    InstanceType("Standard_ND96amsr_A100_v4", 96, 1900, gpus=8),
    InstanceType("Standard_ND96asr_v4", 96, 900, gpus=8),
    InstanceType("Standard_ND40rs_v2", 40, 672, gpus=8),
    InstanceType("Standard_ND96is_H100_v5", 96, 1900, gpus=8),
    InstanceType("Standard_ND96isr_H100_v5", 96, 1900, gpus=8),
    # A10 sizes smaller than 36 cores get a slice of one GPU (1/6, 1/3, 1/2): a container
    # still needs the whole device, so they count as one GPU here.
    *_family(
        "Standard_NV{n}ads_A10_v5",
        ((6, 55, 1), (12, 110, 1), (18, 220, 1), (36, 440, 1), (72, 880, 2)),
    ),
    InstanceType("Standard_NV36adms_A10_v5", 36, 880, gpus=1),
)


def canonical_instance_type(name: str, table: Mapping[str, InstanceType]) -> str | None:
    """The table's spelling of an instance type matched without regard to case, or None."""
    if name in table:
        return name
    folded = name.casefold()
    return next((known for known in table if known.casefold() == folded), None)


def quota_cores(instance_count: int, cores: int) -> int:
    """Cores a managed deployment reserves: Azure keeps 20% extra for upgrades."""
    return math.ceil(1.2 * instance_count) * cores


_CPU: Final = re.compile(r"^([0-9]+(?:\.[0-9]+)?|\.[0-9]+)(m?)$")


def cpu_cores(quantity: str) -> float | None:
    """Cores of a Kubernetes CPU quantity ("0.5", "500m", "2"); None when not one."""
    match = _CPU.match(quantity.strip())
    if match is None:
        return None
    value = float(match.group(1))
    return value / 1000 if match.group(2) else value


def resource_cores(resources: Resources | None) -> int | None:
    """Cores of one instance sized by Kubernetes `resources` (no instance type), for the
    quota figure: its CPU request, else its limit (Kubernetes requests what it limits
    then); a part of a core counts whole. None when neither is given or readable."""
    if resources is None:
        return None
    cpu = dict(resources.requests).get("cpu", dict(resources.limits).get("cpu"))
    cores = cpu_cores(cpu) if cpu is not None else None
    return math.ceil(cores) if cores else None
