"""The CPUs and memory a job may use: affinity and cgroup limits (v1 and v2)."""
from __future__ import annotations

from pathlib import Path


def test_cpu_limit_follows_the_affinity_and_the_cgroup_quota(tmp_path: Path) -> None:
    """Decode processes are counted from the CPUs a job may use, not from the machine's."""
    import os

    from shared.resources import cpu_limit

    usable = cpu_limit(tmp_path / 'none', tmp_path / 'none')
    assert usable == len(os.sched_getaffinity(0))
    v2 = tmp_path / 'v2'
    (v2 / 'docker' / 'abc').mkdir(parents=True)
    (v2 / 'cpu.max').write_text('max 100000\n')
    (tmp_path / 'cg2').write_text('0::/docker/abc\n')
    assert cpu_limit(v2, tmp_path / 'cg2') == usable  # no quota
    (v2 / 'docker' / 'abc' / 'cpu.max').write_text('50000 100000\n')  # half a CPU: one process
    assert cpu_limit(v2, tmp_path / 'cg2') == 1
    (v2 / 'docker' / 'abc' / 'cpu.max').write_text('150000 100000\n')  # one and a half CPUs: two, rounded up
    assert cpu_limit(v2, tmp_path / 'cg2') == min(usable, 2)
    v1 = tmp_path / 'v1'
    (v1 / 'cpu' / 'slurm' / 'job_7').mkdir(parents=True)
    (v1 / 'cpu' / 'slurm' / 'job_7' / 'cpu.cfs_quota_us').write_text('-1\n')
    (v1 / 'cpu' / 'slurm' / 'job_7' / 'cpu.cfs_period_us').write_text('100000\n')
    (tmp_path / 'cg1').write_text('4:memory:/slurm/job_7\n2:cpu,cpuacct:/slurm/job_7\n')
    assert cpu_limit(v1, tmp_path / 'cg1') == usable
    (v1 / 'cpu' / 'slurm' / 'job_7' / 'cpu.cfs_quota_us').write_text('90000\n')
    assert cpu_limit(v1, tmp_path / 'cg1') == 1


def test_memory_limit_follows_the_job_cgroup(tmp_path: Path) -> None:
    """A SLURM job's cgroup (v2, nested) or a v1 memory cgroup limits memory below the machine's."""
    from shared.resources import memory_limit

    physical = memory_limit(tmp_path / 'none', tmp_path / 'none')
    assert physical > 0
    v2 = tmp_path / 'v2'
    (v2 / 'system.slice' / 'slurmstepd.scope' / 'job_42').mkdir(parents=True)
    (v2 / 'memory.max').write_text('max\n')
    (v2 / 'system.slice' / 'slurmstepd.scope' / 'job_42' / 'memory.max').write_text(f'{1 << 30}\n')
    (tmp_path / 'cg2').write_text('0::/system.slice/slurmstepd.scope/job_42/step_0/user/task_0\n')
    assert memory_limit(v2, tmp_path / 'cg2') == min(physical, 1 << 30)
    v1 = tmp_path / 'v1'
    (v1 / 'memory' / 'slurm' / 'uid_1').mkdir(parents=True)
    (v1 / 'memory' / 'slurm' / 'uid_1' / 'memory.limit_in_bytes').write_text(f'{2 << 30}\n')
    (tmp_path / 'cg1').write_text('7:pids:/\n4:memory:/slurm/uid_1/job_7\n0::/\n')
    assert memory_limit(v1, tmp_path / 'cg1') == min(physical, 2 << 30)
