"""The memstage command, run as a user would: subprocesses, exit codes, what is printed."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MiB, child_pids, kill_up, listed_mount, wait_for

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent


def memstage(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "memstage", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args, message", [
    (["benefactor", "--memory", "4XB"], "--memory: '4XB' is not a size"),
    (["benefactor", "--manager", "localhost"], "--manager: 'localhost' is not HOST:PORT"),
    (["manager", "--heartbeat-interval", "fast"], "--heartbeat-interval: 'fast' is not a duration"),
    (["up", "--benefactors", "many"], "--benefactors: 'many' is not a whole number"),
    (["up", "--benefactors", "0"], "--benefactors: must be greater than 0"),
    (["status", "--manager", "127.0.0.1:1"], "manager 127.0.0.1:1: unreachable"),
    (["manager", "--config", "/nonexistent.toml"], "config: file '/nonexistent.toml' does not exist"),
    (["bench", "--size", "lots"], "bench: 'lots' is not a size"),
    (["restore", "--pfs", "/nonexistent-pfs", "--list"], "--pfs: /nonexistent-pfs: no such directory"),
    (["restore", "--pfs", "/nonexistent-pfs", "/f", "--out", "/tmp/x"], "--pfs: /nonexistent-pfs: no such directory"),
])
def test_bad_values_give_one_line_and_no_traceback(args, message):
    result = memstage(*args, timeout=60)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert message in lines[0] and "Traceback" not in result.stderr


def test_bad_env_value_names_the_variable():
    result = memstage("benefactor", env={"MEMSTAGE_MEMORY": "lots"})
    assert result.returncode == 2 and "MEMSTAGE_MEMORY: 'lots' is not a size" in result.stderr


def test_listen_port_in_use_is_a_clear_error(local_cluster):
    cluster = local_cluster(benefactors=0)
    result = memstage("manager", "--listen", cluster.manager_address, "--state", str(cluster.root / "s2"))
    assert result.returncode == 2 and "--listen: cannot listen on" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_the_contract_flags():
    out = memstage("up", "--help").stdout
    for flag in ("--benefactors", "--memory", "--pfs", "--mount", "--state", "--metrics-port"):
        assert flag in out
    out = memstage("benefactor", "--help").stdout
    assert "--manager" in out and "MEMSTAGE_MEMORY" in out
    assert "--json" in memstage("status", "--help").stdout


def test_mounting_over_files_is_refused_unless_asked_and_keeps_them(local_cluster, tmp_path):
    cluster = local_cluster(benefactors=1)
    point = tmp_path / "full"
    point.mkdir()
    (point / "precious.bin").write_bytes(b"keep me")
    try:
        out = memstage("mount", str(point), "--manager", cluster.manager_address, "--background",
                       "--log-file", str(tmp_path / "mount.log"), timeout=60)
        assert out.returncode == 2 and "is not empty" in out.stderr and "--nonempty" in out.stderr, out
        assert "Traceback" not in out.stderr and not listed_mount(point)  # was: mounted over them, exit 0
        assert (point / "precious.bin").read_bytes() == b"keep me"
    finally:
        if listed_mount(point):
            subprocess.run(["fusermount3", "-u", str(point)], check=False)


def test_help_shows_defaults_as_they_are_written():
    out = " ".join(memstage("benefactor", "--help").stdout.split())
    assert "MEMSTAGE_MEMORY; default 1GiB" in out and "MEMSTAGE_HEARTBEAT_INTERVAL; default 30s" in out
    assert "1073741824" not in out and "30.0" not in out
    assert "MEMSTAGE_READ_AHEAD; default 8MiB" in " ".join(memstage("mount", "--help").stdout.split())


def test_a_setting_on_by_default_has_a_switch_that_turns_it_off():
    from memstage.cli.parser import build_parser

    assert "--no-unix-sockets" in memstage("mount", "--help").stdout
    parser = build_parser()
    assert parser.parse_args(["mount", "/mnt", "--no-unix-sockets"]).unix_sockets is False
    assert parser.parse_args(["mount", "/mnt"]).unix_sockets is None  # the environment or the default decides


def test_status_table_and_json(local_cluster):
    cluster = local_cluster(benefactors=2, memory=32 * MiB)
    cluster.client(namespace="team").pipe("/a", os.urandom(3 * MiB))
    out = memstage("status", "--manager", cluster.manager_address)
    assert out.returncode == 0, out.stderr
    assert "2 of 2 benefactors alive" in out.stdout
    assert re.search(r"team\s+1\s+1\s+3\.0 MiB", out.stdout), out.stdout
    js = cluster.status()
    assert {"id", "address", "alive", "memory_capacity", "memory_used", "drain_backlog"} <= set(js["benefactors"][0])
    assert sum(b["memory_used"] for b in js["benefactors"]) >= 3 * MiB


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_up_runs_in_foreground_and_stops_everything(tmp_path, sig):
    mount = tmp_path / "staging"
    mount.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "memstage", "up", "--benefactors", "2", "--memory", "16MiB",
                             "--listen", "127.0.0.1:0", "--state", str(tmp_path / "state"), "--pfs",
                             str(tmp_path / "pfs"), "--heartbeat-interval", "1s", "--mount", str(mount)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        first = proc.stdout.readline()
        m = re.search(r"manager on (\S+), 2 benefactors", first)
        assert m, first
        address = m.group(1)
        from memstage.client import Client
        from memstage.errors import Unauthenticated

        # Secure by default: the admin token and a client settings file are in the state directory.
        config = str(tmp_path / "state" / "client.toml")
        wait_for(lambda: os.path.exists(config), what="the client settings file")
        token = (tmp_path / "state" / "secrets" / "admin.token").read_text().strip()
        assert f'token = "{token}"' in Path(config).read_text() and os.stat(config).st_mode & 0o077 == 0
        from memstage.cli.up import deployment_client
        from memstage.errors import SettingError

        settings = deployment_client(str(tmp_path / "state"))
        assert settings["tls_ca"].endswith("ca.pem") and f'tls_ca = "{settings["tls_ca"]}"' in Path(config).read_text()
        with pytest.raises(SettingError, match="speaks TLS"):  # plaintext to a TLS port: told what is missing
            Client(manager=address, rpc_timeout="5s", token=token).ls("/")
        with pytest.raises(Unauthenticated, match="no token"):
            Client(manager=address, rpc_timeout="5s", **{**settings, "token": ""}).ls("/")
        c = Client(config=config, rpc_timeout="5s")
        wait_for(lambda: len(memstage_status_alive(address, config)) == 2, what="2 benefactors alive")
        c.pipe("/hello", b"hi")
        assert c.cat("/hello") == b"hi"
        assert (mount / "hello").read_bytes() == b"hi"  # the staging directory is ready
        # Clients of this machine reach the manager's control port by a Unix socket, as the benefactors'.
        assert list((tmp_path / "state" / "sockets").glob("manager-*.sock"))
        (mount / "via-mount").write_bytes(b"posix")
        assert c.cat("/via-mount") == b"posix"
        c.connections.close()
        children = child_pids(proc.pid)
        assert len(children) == 4
        for pid in children:  # a command line is visible to every local user: no secret on one
            assert token not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"), pid
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "stopped" in out
        assert "Traceback" not in err
        assert "WARNING" not in "".join(line for line in (out + err).splitlines() if "void" in line)  # nothing lost
        for pid in children:
            assert not pid_alive(pid), f"child {pid} still running"
        assert not os.path.ismount(mount)
    finally:
        kill_up(proc)
        if listed_mount(mount):  # os.path.ismount says no for a mount whose process was killed
            subprocess.run(["fusermount3", "-uz", str(mount)], check=False)


def test_a_normal_stop_of_memory_only_checkpoints_reports_no_losses(tmp_path):
    """persist_every 0 keeps checkpoints in memory only: stopping the deployment drops them as the
    policy says, which is one line, not an ERROR per file as if they were lost."""
    proc = subprocess.Popen([sys.executable, "-m", "memstage", "up", "--benefactors", "1", "--memory", "16MiB",
                             "--listen", "127.0.0.1:0", "--state", str(tmp_path / "state"), "--pfs",
                             str(tmp_path / "pfs"), "--persist-every", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        m = re.search(r"manager on (\S+),", proc.stdout.readline())
        assert m
        from memstage.client import Client

        config = tmp_path / "state" / "client.toml"
        wait_for(config.exists, what="the client settings file")
        wait_for(lambda: len(memstage_status_alive(m.group(1), str(config))) == 1, what="the benefactor registered")
        c = Client(config=str(config), rpc_timeout="5s")
        for i in range(3):
            c.pipe(f"/step{i}/model.pt", b"weights")
        c.connections.close()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert " ERROR " not in err, err  # was: "default:/step0/model.pt version 1 is lost: ..." per file
        assert "0 versions lost, 3 kept in memory only dropped" in err, err
    finally:
        kill_up(proc)


def memstage_status_alive(address: str, config: str | None = None) -> list[dict[str, object]]:
    import json

    out = memstage("status", "--manager", address, "--json", *(["--config", config] if config else []))
    if out.returncode:
        return []
    return [b for b in json.loads(out.stdout)["benefactors"] if b["alive"]]


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_generated_stubs_are_fresh():
    result = subprocess.run([sys.executable, str(ROOT / "protos" / "gen.py"), "--check"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_bench_runs_and_reports_ratios(tmp_path):
    import json

    out = memstage("bench", "--size", "16MiB", "--clients", "1", "--repeat", "1", "--benefactors", "2",
                   "--dir", str(tmp_path), "--json", "--log-level", "warning", timeout=180)
    assert out.returncode == 0, out.stderr
    # --log-level quiets the deployment the bench starts too, not only the bench's own process.
    assert " INFO " not in out.stderr, out.stderr
    rows = json.loads(out.stdout)["rows"]
    assert [r["transport"] for r in rows] == ["unix", "tcp", "grpc"]
    assert [r["ceiling"] for r in rows] == ["tcp", "tls", "grpc"]  # the same protection: secured by default
    for row in rows:
        assert row["clients"] == 1 and row["asb"] > 0 and row["grpc"] > 0 and row["disk"] > 0
        assert row["tcp"] > 0 and row["tls"] > 0
        assert row["asb_over_ceiling"] == pytest.approx(row["asb"] / row[row["ceiling"]])
        assert row["asb_over_grpc"] == pytest.approx(row["asb"] / row["grpc"])
        assert row["asb_over_tls"] == pytest.approx(row["asb"] / row["tls"])
        assert row["asb_over_tcp"] == pytest.approx(row["asb"] / row["tcp"])
        assert row["client_cpu_per_gib"] > 0
        # Counted in 10 ms clock ticks: a small round's share of a process may round to none.
        assert row["benefactors_cpu_per_gib"] >= 0 and row["manager_cpu_per_gib"] >= 0
    assert sum(r["benefactors_cpu_per_gib"] for r in rows) > 0
    wrong = memstage("bench", "--transports", "tcp,carrier-pigeon", timeout=60)
    assert wrong.returncode == 2 and "--transports" in wrong.stderr and "Traceback" not in wrong.stderr


def test_security_bench_compares_secure_and_insecure_in_one_run(tmp_path):
    import json

    out = memstage("bench", "--security", "--size", "8MiB", "--clients", "1", "--repeat", "1", "--benefactors", "2",
                   "--dir", str(tmp_path), "--json", timeout=180)
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)["rows"][0]
    assert row["secure"]["asb"] > 0 and row["insecure"]["asb"] > 0
    assert row["asb_ratio"] == pytest.approx(row["secure"]["asb"] / row["insecure"]["asb"])
    both = memstage("bench", "--security", "--insecure", timeout=60)
    assert both.returncode == 2 and "leave out --insecure" in both.stderr


@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")
def test_fuse_bench_measures_mount_and_passthrough(tmp_path):
    import json

    out = memstage("bench", "--fuse", "--size", "16MiB", "--repeat", "1", "--benefactors", "2",
                   "--dir", str(tmp_path), "--json", timeout=180)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    med = result["median"]
    assert all(med[f"{t}_{op}"] > 0 for t in ("memstage", "passthrough", "tmpfs") for op in ("write", "read"))
    assert result["memstage_write_over_passthrough"] == pytest.approx(med["memstage_write"] / med["passthrough_write"])
    assert str(tmp_path) not in Path("/proc/mounts").read_text()  # every mount is gone
    assert "Ignoring invalid max threads" not in out.stderr  # libfuse's warning about its own default


@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")
def test_meta_bench_measures_metadata_rates_through_mount_library_passthrough_and_tmpfs(tmp_path):
    import json

    out = memstage("bench", "--meta", "--files", "20", "--repeat", "1", "--benefactors", "2",
                   "--dir", str(tmp_path), "--json", timeout=180)
    assert out.returncode == 0, out.stderr
    rates = json.loads(out.stdout)["per_second"]
    assert set(rates) == {"memstage mount", "memstage library", "bare FUSE passthrough", "kernel tmpfs"}
    for name, target in rates.items():
        more = set() if name == "memstage library" else {"dbm.dumb updates", "64 KiB files, MB/s", "one file, MB/s"}
        assert set(target) == {"create", "stat", "ls -l", "rename", "unlink", "open-write-close", *more}
        assert all(v > 0 for v in target.values())
    assert str(tmp_path) not in Path("/proc/mounts").read_text()  # every mount is gone
    zero = memstage("bench", "--meta", "--files", "0", timeout=60)
    assert zero.returncode == 2 and "--files" in zero.stderr and "Traceback" not in zero.stderr


def test_incremental_bench_sends_the_changed_fraction(tmp_path):
    import json

    out = memstage("bench", "--size", "16MiB", "--timesteps", "3", "--change", "0.25", "--benefactors", "2",
                   "--dir", str(tmp_path), "--json", timeout=180)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    changed = [s for s in result["steps"] if s["scenario"] == "change 0.25"]
    assert [s["bytes_sent"] for s in changed] == [16 * MiB, 4 * MiB, 4 * MiB]
    assert result["summary"]["shift 1 byte"]["sent_fraction"] == 1.0


def test_namespace_policies_given_as_a_setting_apply_at_start(local_cluster):
    """The manager's `policies` setting (the Helm chart's manager.policies): quotas and persistence
    per namespace without a command after the install; a bad value is one line naming it."""
    policies = '{"run42": {"quota_memory": "8GiB", "quota_sessions": 16, "pfs_keep": 3}}'
    cluster = local_cluster(benefactors=0, manager_args=("--policies", policies))
    shown = cluster.client(namespace="run42").policy()
    assert (shown["quota_memory"], shown["quota_sessions"], shown["pfs_keep"]) == (8 << 30, 16, 3)
    for bad, says in (('{"run42": {"quota_memory": "lots"}}', "policies: run42.quota_memory"),
                      ('{"run42": {"keep": 2}}', "policies: run42.keep: not a policy field"),
                      ('{"../x": {}}', "policies: namespace"), ("[1]", "policies: a JSON object")):
        out = memstage("manager", "--policies", bad, "--state", "/nonexistent/never-made", "--insecure")
        assert out.returncode == 2 and says in out.stderr and "Traceback" not in out.stderr, (bad, out.stderr)


# Options whose default is a count or a rate of events, not bytes: a plain number is what a user writes.
COUNTS = {"--files", "--sim-benefactors", "--commits", "--chunks", "--committers", "--metrics-benefactors",
          "--heartbeat-rate"}


def test_help_of_every_subcommand_shows_defaults_in_human_units():
    """No default is a raw byte count (1073741824) or raw float seconds (30.0, 600.0): sizes and
    durations read as a user writes them (1GiB, 30s, 10min)."""
    from memstage.cli.parser import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    raw = []
    for name, command in sub.choices.items():
        for action in command._actions:
            text = " ".join((action.help or "").split())
            for shown in re.findall(r"default:? (\S+?)[\])]", text):
                count = any(flag in COUNTS for flag in action.option_strings)
                if re.fullmatch(r"\d+\.\d+", shown) and float(shown) >= 1 or \
                        re.fullmatch(r"\d{4,}", shown) and not count:
                    raw.append(f"memstage {name} {'/'.join(action.option_strings)}: default {shown}")
    assert not raw, raw  # was: heartbeat rate 1000.0
    manager = " ".join(memstage("manager", "--help").stdout.split())
    assert "MEMSTAGE_HEARTBEAT_RATE; default 1000]" in manager
    up = " ".join(memstage("up", "--help").stdout.split())
    assert "MEMSTAGE_STOP_TIMEOUT; default 10min]" in up and "MEMSTAGE_SYNC_INTERVAL; default 1s]" in up


def run_on_pty(argv: list[str], timeout: float = 60) -> tuple[int, str]:
    """Run a command with its stderr on a pseudo-terminal (stdout to nothing); returns its exit
    code and what it wrote to the terminal."""
    import pty
    import select
    import time

    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the last writer closed the terminal
                    break
                if not data:
                    break
                out += data
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=max(1.0, deadline - time.monotonic())), out.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_rate_of_a_counter_that_moves_in_steps_is_measured_between_steps():
    from memstage.progress import Rate

    rate = Rate()
    for tenth in range(0, 351):  # polled every 0.1 s; a batch of 4 MiB reported every 8 s from 3 s on
        now = tenth / 10
        rate.add(now, 4 * MiB * (1 + max(0, int((now - 3) // 8))) if now >= 3 else 0)
        if now < 11:
            assert rate.per_second() is None  # one step only marks a start: no rate yet, and no "0 B/s"
        else:
            assert rate.per_second() == pytest.approx(0.5 * MiB)
    assert rate.moved()
    rate.add(36.0, 1000)  # counted from 0 again (a manager restart): no rate until two steps again
    assert rate.per_second() is None


def test_wait_drained_tells_the_drain_as_it_goes_between_reports_far_apart(local_cluster):
    """A benefactor reports drained chunks a batch at a time: with a slow drain, its reports come
    seconds apart. `wait --drained` never says "not draining" meanwhile (was: "draining at 0 B/s,
    not draining" for every 5 s without a report), and draws a progress bar on a terminal only."""
    cluster = local_cluster(benefactors=0)
    # 64 chunks a batch (2 MiB) at 200 KiB/s: two reports about 10 s apart.
    cluster.add_benefactor(64 * MiB, "--drain-bandwidth", "200KiB")
    cluster.client(chunk_size="32KiB").pipe("/slow.bin", os.urandom(4 * MiB))
    argv = [sys.executable, "-m", "memstage", "wait", "--drained", "--manager", cluster.manager_address,
            "--timeout", "60s"]
    piped = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        code, terminal = run_on_pty(argv)
        out, err = piped.communicate(timeout=60)
    finally:
        if piped.poll() is None:
            piped.kill()
            piped.wait()
    assert piped.returncode == 0 and code == 0, (err, terminal)
    assert "nothing left to drain" in out
    assert "not draining" not in err.lower() and "0 B/s" not in err, err
    assert "left to drain" in err and "\r" not in err and "\033[K" not in err  # lines in a pipe, no bar
    assert re.search(r"\rdrained [\d.]+ \w?i?B of [\d.]+ MiB \(100%\)", terminal), terminal  # a bar on a terminal
    assert "not draining" not in terminal.lower() and "left to drain" not in terminal


def test_restore_of_a_large_file_shows_progress_on_a_terminal_only(tmp_path):
    from memstage.chunks import ChunkKey
    from memstage.drainer.layout import chunk_name, version_dir, write_chunk

    data = os.urandom(24 * MiB + 5)
    directory = version_dir(tmp_path / "pfs", "default", "/big.bin")
    pieces = [data[i : i + MiB] for i in range(0, len(data), MiB)]
    for i, piece in enumerate(pieces):
        write_chunk(directory, chunk_name(1, i, len(pieces), i * MiB, ChunkKey.of(piece), "ab12", 1_700_000_000_000),
                    [piece])
    argv = [sys.executable, "-m", "memstage", "restore", "--pfs", str(tmp_path / "pfs"), "/big.bin"]
    code, terminal = run_on_pty([*argv, "--out", str(tmp_path / "tty.bin")])
    assert code == 0, terminal
    assert "\rrestored 24.0 MiB of 24.0 MiB (100%)" in terminal, terminal  # was: nothing until the end
    piped = memstage(*argv[3:], "--out", str(tmp_path / "piped.bin"))
    assert piped.returncode == 0 and "restored default:/big.bin version 1" in piped.stdout
    assert "\r" not in piped.stderr and "%" not in piped.stderr
    assert (tmp_path / "tty.bin").read_bytes() == data == (tmp_path / "piped.bin").read_bytes()
