from pathlib import Path

from supervisor.adapters.host import HostSampler, busy_ratios
from supervisor.adapters.netcounters import container_net

FIX = Path(__file__).parent.parent / "fixtures" / "proc"


def test_host_sample_from_captured_proc():
    s = HostSampler(str(FIX), clock=lambda: 100.0).sample()
    assert s.cores == 2 and len(s.cpu_seconds) == 2
    assert s.memory_total_bytes > s.memory_available_bytes > 0
    assert "vda" in s.disks and not any(d.startswith("loop") for d in s.disks)
    assert "lo" in s.nets and s.nets["lo"].rx_bytes > 0
    assert set(s.pressure) == {"cpu", "memory", "io"}
    assert s.cpu_busy_ratio == ()  # no previous sample yet


def test_busy_ratio():
    a = ({"user": 0, "nice": 0, "system": 0, "idle": 0, "iowait": 0, "irq": 0, "softirq": 0, "steal": 0},)
    b = ({"user": 3, "nice": 0, "system": 1, "idle": 4, "iowait": 0, "irq": 0, "softirq": 0, "steal": 0},)
    assert busy_ratios(a, b) == (0.5,)


def test_container_net_leaves_out_loopback():
    pid = int((FIX / "CAPTURED").read_text().split()[1])
    n = container_net(str(FIX), pid)
    assert n is not None and n.rx_bytes == 0  # --network none: only lo, left out
