"""The default instance-type table: Azure VM sizes with their cores, memory and GPUs.

Targets map instance_type to CPU and memory limits with it (scaled by a factor for a small
host); planning uses the cores for the quota figure ceil(1.2 x instances) x cores.
A target's configuration may add or override entries.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class InstanceType:
    name: str
    cores: int
    memory_gb: float
    gpus: int = 0


def _table(*rows: InstanceType) -> dict[str, InstanceType]:
    return {row.name: row for row in rows}


DEFAULT_INSTANCE_TYPES: Mapping[str, InstanceType] = _table(
    InstanceType("Standard_DS1_v2", 1, 3.5),
    InstanceType("Standard_DS2_v2", 2, 7),
    InstanceType("Standard_DS3_v2", 4, 14),
    InstanceType("Standard_DS4_v2", 8, 28),
    InstanceType("Standard_DS5_v2", 16, 56),
    InstanceType("Standard_F2s_v2", 2, 4),
    InstanceType("Standard_F4s_v2", 4, 8),
    InstanceType("Standard_F8s_v2", 8, 16),
    InstanceType("Standard_F16s_v2", 16, 32),
    InstanceType("Standard_F32s_v2", 32, 64),
    InstanceType("Standard_E2s_v3", 2, 16),
    InstanceType("Standard_E4s_v3", 4, 32),
    InstanceType("Standard_E8s_v3", 8, 64),
    InstanceType("Standard_E16s_v3", 16, 128),
    InstanceType("Standard_NC4as_T4_v3", 4, 28, gpus=1),
    InstanceType("Standard_NC8as_T4_v3", 8, 56, gpus=1),
    InstanceType("Standard_NC6s_v3", 6, 112, gpus=1),
    InstanceType("Standard_NC12s_v3", 12, 224, gpus=2),
    InstanceType("Standard_NC24s_v3", 24, 448, gpus=4),
    InstanceType("Standard_NC24ads_A100_v4", 24, 220, gpus=1),
)


def quota_cores(instance_count: int, cores: int) -> int:
    """Cores a managed deployment reserves: Azure keeps 20% extra for upgrades."""
    return math.ceil(1.2 * instance_count) * cores
