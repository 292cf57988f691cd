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


def test_globs_match_in_memstage_and_a_glob_matching_nothing_is_a_usage_error(local_cluster, tmp_path):
    cluster = local_cluster(benefactors=1)
    c = cluster.client()
    data = {p: random_bytes(1000 + n) for n, p in enumerate(
        ["/ckpt/step-1/a.bin", "/ckpt/step-2/a.bin", "/ckpt/step-2/b.bin", "/ckpt/other.txt"])}
    for path, content in data.items():
        c.pipe(path, content)

    listed = run(cluster, "ls", "ms:/ckpt/step-*")  # was: no such file '/ckpt/step-*'
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.decode().split() == ["/ckpt/step-1:", "a.bin", "/ckpt/step-2:", "a.bin", "b.bin"]
    stats = json.loads(run(cluster, "stat", "--json", "/ckpt/step-2/*").stdout)
    assert [s["name"] for s in stats] == ["/ckpt/step-2/a.bin", "/ckpt/step-2/b.bin"]
    assert run(cluster, "cat", "/ckpt/step-?/a.bin").stdout == data["/ckpt/step-1/a.bin"] + data["/ckpt/step-2/a.bin"]

    out = tmp_path / "out"
    out.mkdir()
    assert run(cluster, "cp", "ms:/ckpt/step-2/*", str(out)).returncode == 0
    assert (out / "a.bin").read_bytes() == data["/ckpt/step-2/a.bin"]
    assert (out / "b.bin").read_bytes() == data["/ckpt/step-2/b.bin"]
    trees = tmp_path / "trees"
    trees.mkdir()
    assert run(cluster, "cp", "-r", "ms:/ckpt/step-*", str(trees)).returncode == 0
    for path, content in data.items():
        if "step-" in path:
            assert (trees / path.removeprefix("/ckpt/")).read_bytes() == content, path
    (tmp_path / "x.bin").write_bytes(b"x" * 3000)
    (tmp_path / "y.bin").write_bytes(b"y" * 5)
    assert run(cluster, "cp", str(tmp_path / "x.bin"), str(tmp_path / "y.bin"), "ms:/in").returncode == 0
    assert c.cat("/in/x.bin") == b"x" * 3000 and c.cat("/in/y.bin") == b"y" * 5

    assert run(cluster, "rm", "ms:/ckpt/*.txt").returncode == 0
    assert run(cluster, "ls", "/ckpt").stdout.decode().split() == ["step-1/", "step-2/"]
    for command in (["ls"], ["rm"], ["cat"], ["stat"], ["persist"], ["free"], ["cp", "ms:/ckpt/nope-*", str(out)]):
        args = [*command, "ms:/ckpt/nope-*"] if len(command) == 1 else command
        refused = run(cluster, *args)
        assert refused.returncode == 2 and b"no match for ms:/ckpt/nope-*" in refused.stderr, (command, refused)
        assert b"Traceback" not in refused.stderr and len(refused.stderr.splitlines()) == 1


def test_persist_drains_a_version_the_policy_did_not_select_and_free_needs_it_on_the_pfs(local_cluster, tmp_path):
    cluster = local_cluster(benefactors=1)
    c = cluster.client()
    c.policy(persist_every=0)  # nothing is drained unless asked
    first, second = random_bytes(2 * MiB + 3), random_bytes(MiB)
    c.pipe("/p.bin", first)
    c.pipe("/p.bin", second)

    refused = run(cluster, "free", "/p.bin", "--version", "1")  # was: invalid choice 'free'
    assert refused.returncode == 2 and b"Traceback" not in refused.stderr
    assert b"/p.bin version 1 is not on the PFS" in refused.stderr and b"memstage persist" in refused.stderr
    assert c.versions("/p.bin")[0]["in_memory"]

    persisted = run(cluster, "persist", "--wait", "--timeout", "60s", "ms:/p.bin", "--version", "1")
    assert persisted.returncode == 0, persisted.stderr
    assert b"/p.bin version 1: queued for the PFS" in persisted.stdout
    assert b"persisted 1 of 1 versions (2.0 MiB) on the PFS" in persisted.stdout
    assert b"\r" not in persisted.stderr  # no bar in a pipe
    v1, v2 = c.versions("/p.bin")
    assert v1["persisted"] and not v2["persisted"] and not v2["persist"]
    from memstage.drainer.restore import restore

    restore(cluster.root / "pfs", "default", "/p.bin", tmp_path / "v1", 1)  # on the PFS, by its names alone
    assert (tmp_path / "v1").read_bytes() == first

    freed = run(cluster, "free", "/p.bin", "--version", "1")
    assert freed.returncode == 0 and b"/p.bin version 1: out of memory" in freed.stdout, freed.stderr
    assert not c.versions("/p.bin")[0]["in_memory"] and c.versions("/p.bin")[1]["in_memory"]
    assert run(cluster, "cat", "--version", "1", "/p.bin").stdout == first  # read from the PFS
    again = run(cluster, "persist", "/p.bin", "--version", "1")
    assert again.returncode == 0 and b"on the PFS already" in again.stdout

    c.pipe("/q/a.bin", b"a")
    c.pipe("/q/b.bin", b"b")
    several = run(cluster, "free", "-r", "/q")  # several refused: each named, exit 1
    assert several.returncode == 1 and b"/q/a.bin version 1" in several.stderr and b"/q/b.bin" in several.stderr
    not_one = run(cluster, "persist", "/q/*", "--version", "1")
    assert not_one.returncode == 2 and b"--version picks a version (1 or more) of one file, not of 2" in not_one.stderr
    directory = run(cluster, "persist", "/q")
    assert directory.returncode == 2 and b"/q is a directory (give -r" in directory.stderr

    from test_cli import run_on_pty

    argv = [sys.executable, "-m", "memstage", "persist", "--wait", "--manager", cluster.manager_address, "/q/*"]
    code, terminal = run_on_pty(argv)
    assert code == 0 and "\rpersisted 2/2 files, 2 B of 2 B (100%)" in terminal, terminal
    assert all(v["persisted"] for p in ("/q/a.bin", "/q/b.bin") for v in c.versions(p))


def test_cp_shows_progress_on_a_terminal_only(local_cluster, tmp_path):
    cluster = local_cluster(benefactors=1)
    big = tmp_path / "big.bin"
    big.write_bytes(random_bytes(8 * MiB))
    from test_cli import run_on_pty

    code, terminal = run_on_pty([sys.executable, "-m", "memstage", "cp", "--manager", cluster.manager_address,
                                 str(big), "ms:/big.bin"])
    assert code == 0 and "\rcopied 1/1 files, 8.0 MiB of 8.0 MiB (100%)" in terminal, terminal  # was: 0/1 files
    piped = run(cluster, "cp", "ms:/big.bin", str(tmp_path / "back.bin"))
    assert piped.returncode == 0 and b"\r" not in piped.stderr and b"%" not in piped.stderr
    assert (tmp_path / "back.bin").read_bytes() == big.read_bytes()
