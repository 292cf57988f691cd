"""memstage ls, cat, cp, mv, rm, stat and versions: a namespace handled from the shell."""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import MiB, random_bytes


def run(cluster, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "memstage", args[0], "--manager", cluster.manager_address,
                           *args[1:]], capture_output=True, timeout=60, input=stdin)


def test_file_commands_copy_trees_in_and_out_list_show_and_remove(local_cluster, tmp_path):
    cluster = local_cluster(benefactors=2)
    tree = tmp_path / "ckpt"
    (tree / "step_10" / "shards").mkdir(parents=True)
    (tree / "step_10" / "shards" / "rank0.bin").write_bytes(random_bytes(3 * MiB + 7))
    (tree / "step_10" / "meta.json").write_text('{"step": 10}')
    (tree / "latest").write_text("10")

    copied = run(cluster, "cp", "-r", str(tree), "ms:/run")  # was: invalid choice 'cp'
    assert copied.returncode == 0, copied.stderr
    listed = run(cluster, "ls", "/run")
    assert listed.stdout.decode().split() == ["latest", "step_10/"]
    long = run(cluster, "ls", "-l", "/run/step_10/shards").stdout.decode()
    assert "rank0.bin" in long and "3.0 MiB" in long
    entries = json.loads(run(cluster, "ls", "--json", "/run/step_10").stdout)
    assert {e["name"] for e in entries} == {"/run/step_10/meta.json", "/run/step_10/shards"}
    assert run(cluster, "cat", "/run/latest").stdout == b"10"
    assert json.loads(run(cluster, "stat", "--json", "/run/step_10/meta.json").stdout)["size"] == 12

    out = tmp_path / "back"
    assert run(cluster, "cp", "-r", "ms:/run", str(out)).returncode == 0
    assert not filecmp.dircmp(tree, out).diff_files and (out / "step_10/shards/rank0.bin").read_bytes() == \
        (tree / "step_10/shards/rank0.bin").read_bytes()
    one = tmp_path / "one.bin"
    assert run(cluster, "cp", "ms:/run/step_10/shards/rank0.bin", str(one)).returncode == 0
    assert one.read_bytes() == (tree / "step_10/shards/rank0.bin").read_bytes()

    (tree / "latest").write_text("20")
    assert run(cluster, "cp", str(tree / "latest"), "ms:/run/latest").returncode == 0
    versions = run(cluster, "versions", "/run/latest").stdout.decode().splitlines()
    assert [line.split()[0] for line in versions] == ["VERSION", "1", "2"]
    assert run(cluster, "cat", "--version", "1", "/run/latest").stdout == b"10"
    assert run(cluster, "mv", "/run/latest", "/run/LATEST").returncode == 0
    assert "LATEST" in run(cluster, "ls", "/run").stdout.decode()

    refused = run(cluster, "rm", "/run/step_10")
    assert refused.returncode == 2 and b"give -r" in refused.stderr and b"Traceback" not in refused.stderr
    assert run(cluster, "rm", "-r", "/run/step_10").returncode == 0
    assert run(cluster, "ls", "/run").stdout.decode().split() == ["LATEST"]
    missing = run(cluster, "cat", "/run/nope")
    assert missing.returncode == 2 and b"/run/nope" in missing.stderr and b"Traceback" not in missing.stderr
    both_local = run(cluster, "cp", str(one), str(tmp_path / "x"))
    assert both_local.returncode == 2 and b"ms:/PATH" in both_local.stderr
    assert os.path.exists(one)
    assert Path(tmp_path / "back").is_dir()
