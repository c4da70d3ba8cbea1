"""The cores a process may use (cgroup limits included) and the frontend workers they pay for."""

from __future__ import annotations

import os

import pytest

from server.config import ServerConfig
from server.cores import auto_frontend_workers, available_cores, cgroup_cpu_limit


def test_auto_keeps_two_cores_for_the_device_process_and_caps_at_eight():
    assert [auto_frontend_workers(n) for n in (1, 2, 3, 4, 10, 64)] == [0, 0, 1, 2, 8, 8]
    assert ServerConfig(frontend_workers="auto").frontend_worker_count(6) == 4
    assert ServerConfig(frontend_workers=" AUTO ").frontend_worker_count(2) == 0
    assert ServerConfig(frontend_workers="3").frontend_worker_count(2) == 3


@pytest.mark.parametrize("value", ["-1", "two", ""])
def test_a_frontend_count_that_is_neither_auto_nor_a_count_names_the_flag(value):
    with pytest.raises(ValueError, match="--frontend-workers"):
        ServerConfig(frontend_workers=value).frontend_worker_count(4)


def test_cgroup_cpu_max_is_read_as_whole_cores():
    assert cgroup_cpu_limit("max 100000\n") is None
    assert cgroup_cpu_limit("200000 100000\n") == 2
    assert cgroup_cpu_limit("150000 100000") == 2  # 1.5 cores: two threads, part-time
    assert cgroup_cpu_limit("10000 100000") == 1
    assert cgroup_cpu_limit("garbage") is None
    assert cgroup_cpu_limit("0 100000") is None


def test_available_cores_takes_the_least_of_machine_affinity_and_quota(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("100000 100000\n")
    assert available_cores(cpu_max) == 1
    cpu_max.write_text("max 100000\n")
    assert available_cores(cpu_max) == min(affinity, os.cpu_count())
    assert available_cores(tmp_path / "absent") == min(affinity, os.cpu_count())
