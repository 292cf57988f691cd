"""The kernel's read-ahead on a real mount, raised to the client's."""

from __future__ import annotations

import os

import pytest

from memstage.client.bdi import mount_device, raise_read_ahead

pytestmark = pytest.mark.timeout(120)


def test_the_mount_raises_the_kernels_read_ahead(mounted):
    point, _, _ = mounted()
    device = mount_device(os.path.realpath(point))
    assert device is not None
    with open(f"/sys/class/bdi/{device}/read_ahead_kb") as f:
        assert int(f.read()) == 8 * 1024, "the client's read_ahead (8MiB), not the kernel's 128 KiB"


def test_read_ahead_is_never_lowered_and_unknown_mounts_are_left_alone(tmp_path):
    (tmp_path / "mountinfo").write_text("36 25 0:42 / /mnt/with\\040space rw - fuse.memstage memstage rw\n")
    knob = tmp_path / "bdi" / "0:42" / "read_ahead_kb"
    knob.parent.mkdir(parents=True)
    knob.write_text("16384\n")
    args = {"mountinfo": str(tmp_path / "mountinfo"), "bdi_root": str(tmp_path / "bdi")}
    assert raise_read_ahead("/mnt/with space", 8 << 20, **args) == 16 << 20
    assert knob.read_text() == "16384\n"
    knob.write_text("128\n")
    assert raise_read_ahead("/mnt/with space", 8 << 20, **args) == 8 << 20
    assert knob.read_text() == "8192"
    assert raise_read_ahead("/mnt/elsewhere", 8 << 20, **args) is None
