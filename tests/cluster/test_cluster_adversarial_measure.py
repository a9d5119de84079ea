"""Adversarial measurements (break-10): partitions of 6 s and 20 s with a 1 s lease,
blackhole and reset, through `test_cluster_partitions.partition` (which asserts the
invariant and prints a MEASURED line). Slow: run on demand."""

from __future__ import annotations

import pytest

from .test_cluster_partitions import partition, proxy  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(200)


@pytest.mark.parametrize("seconds", [6.0, 20.0])
@pytest.mark.parametrize("fault", ["blackhole", "reset"])
def test_long_partition(cluster, redis, proxy, tmp_path, fault, seconds):  # noqa: F811
    partition(cluster, proxy, redis, tmp_path, fault, seconds=seconds)
