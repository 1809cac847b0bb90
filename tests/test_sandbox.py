"""The python sandbox: limits, timeouts, truncation, normal runs, and every escape attempt blocked."""

import json
import os
import shutil
import socket
import time
import uuid
from pathlib import Path

import pytest

from eprl.envs import bwrap
from eprl.envs.sandbox import MAX_FILE_BYTES, MAX_FILES, MAX_PROCESSES, TMPFS_BYTES, SandboxUnavailableError, run_python


def test_normal_code_runs_in_an_empty_dir():
    result = run_python("import os\nprint(sum(range(10)))\nprint(os.listdir('.'))")
    assert result.stdout == "45\n[]\n" and result.exit_code == 0
    assert not result.timed_out and not result.truncated and result.stderr == ""


def test_errors_come_back_on_stderr():
    result = run_python("raise ValueError('boom')")
    assert result.exit_code == 1 and result.stderr.rstrip().endswith("ValueError: boom")
    assert 'File "main.py", line 1' in result.stderr


def test_infinite_loop_is_cut_by_the_timeout():
    start = time.monotonic()
    result = run_python("while True:\n    pass", timeout_s=1)
    assert result.timed_out and result.exit_code is None
    assert time.monotonic() - start < 5
    assert run_python("import time; time.sleep(60)", timeout_s=1).timed_out


def test_child_processes_are_killed_with_the_group():
    code = "import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\nwhile True: pass"
    start = time.monotonic()
    assert run_python(code, timeout_s=1).timed_out and time.monotonic() - start < 5


def test_huge_allocation_fails():
    result = run_python("x = bytearray(4 * 1024**3)\nprint('allocated')", memory_mb=256)
    assert result.exit_code != 0 and "MemoryError" in result.stderr and "allocated" not in result.stdout


def test_giant_print_is_truncated():
    result = run_python("print('x' * 10**7)", max_output_chars=100)
    assert result.truncated and result.stdout.startswith("x" * 100)
    assert "[output truncated" in result.stdout and len(result.stdout) < 200


def test_environment_is_isolated():
    result = run_python("import os, sys\nprint(sys.flags.isolated, sorted(os.environ).count('PYTHONPATH'))")
    assert result.stdout == "1 0\n"


# ----------------------------------------------------------------------------- escapes (bubblewrap)
needs_bwrap = pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="bwrap not on PATH: apt-get install -y bubblewrap"
)
REPO = Path(__file__).resolve().parent.parent


def _seen(code: str, **kwargs) -> dict:
    """Run ``code`` that prints one JSON object last; return that object (what the program saw)."""
    result = run_python(code, max_output_chars=10**6, **kwargs)
    assert result.stdout.strip(), result
    return json.loads(result.stdout.strip().splitlines()[-1])


def _host_processes_with(marker: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            found.append(f"{pid}: {cmdline}")
    return found


@needs_bwrap
def test_host_files_are_invisible():
    code = f"""import json, os
seen = {{}}
for path in ["/etc/passwd", "/etc/shadow", {str(REPO / "README.md")!r}, {os.path.expanduser("~/.bashrc")!r}, "/root"]:
    try:
        seen[path] = "read:" + (open(path).read(20) if os.path.isfile(path) else str(os.listdir(path)))
    except OSError as e:
        seen[path] = type(e).__name__
seen["root"] = sorted(os.listdir("/"))
print(json.dumps(seen))"""
    seen = _seen(code)
    for path in ["/etc/passwd", "/etc/shadow", str(REPO / "README.md"), os.path.expanduser("~/.bashrc")]:
        assert seen[path] in ("FileNotFoundError", "PermissionError"), (path, seen[path])
    assert set(seen["root"]) <= {
        "bin",
        "dev",
        "etc",
        "lib",
        "lib64",
        "proc",
        "tmp",
        "usr",
        "root",
        "opt",
        "home",
        "work",
    }
    assert "work" not in seen["root"] or not str(REPO).startswith("/work/") or seen[str(REPO / "README.md")] != "read:"


@needs_bwrap
def test_writes_outside_the_private_tmp_fail_and_nothing_persists():
    name = f"eprl-escape-{uuid.uuid4().hex}"
    code = f"""import json, os
seen = {{}}
for path in ["/usr/{name}", "/{name}", {str(REPO / name)!r}, "/tmp/{name}"]:
    try:
        with open(path, "w") as f:
            f.write("x")
        seen[path] = "written"
    except OSError as e:
        seen[path] = type(e).__name__
print(json.dumps(seen))"""
    seen = _seen(code)
    assert seen[f"/tmp/{name}"] == "written"  # the private tmpfs is writable...
    assert seen[f"/usr/{name}"] in ("OSError", "PermissionError") and seen[f"/{name}"] in ("OSError", "PermissionError")
    assert seen[str(REPO / name)] in ("FileNotFoundError", "PermissionError", "OSError")
    assert not (Path("/tmp") / name).exists() and not (REPO / name).exists()  # ...and dies with the sandbox
    assert _seen("import json, os; print(json.dumps(os.listdir('/tmp')))") == []


@needs_bwrap
def test_subprocesses_run_unprivileged():
    code = """import json, os, subprocess
seen = {"id": subprocess.run(["id"], capture_output=True, text=True).stdout.strip(), "uid": os.getuid()}
try:
    os.setuid(0); seen["setuid0"] = "ok"
except OSError as e:
    seen["setuid0"] = type(e).__name__
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
seen["caps"] = status["CapEff"].strip(); seen["nnp"] = status["NoNewPrivs"].strip()
print(json.dumps(seen))"""
    seen = _seen(code)
    assert seen["id"].startswith("uid=") and not seen["id"].startswith("uid=0(") and seen["uid"] != 0
    assert seen["setuid0"] == "PermissionError" and seen["caps"] == "0000000000000000" and seen["nnp"] == "1"


@needs_bwrap
def test_trainer_environment_does_not_leak(monkeypatch):
    secret = f"eprl-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("EPRL_TEST_API_TOKEN", secret)
    code = """import json, os
seen = {"environ": dict(os.environ), "pids": [], "proc": {}}
for pid in filter(str.isdigit, os.listdir("/proc")):
    seen["pids"].append(int(pid))
    for what in ("environ", "cmdline"):
        try:
            seen["proc"][pid + what] = open(f"/proc/{pid}/{what}", "rb").read().decode(errors="replace")
        except OSError as e:
            seen["proc"][pid + what] = type(e).__name__
print(json.dumps(seen))"""
    seen = _seen(code)
    assert secret not in json.dumps(seen) and "EPRL_TEST_API_TOKEN" not in json.dumps(seen)
    assert set(seen["environ"]) <= set(bwrap.SANDBOX_ENV) | {"PWD", "LC_CTYPE"}
    assert max(seen["pids"]) < 20 and "pytest" not in json.dumps(seen["proc"])  # only the sandbox's own processes


@needs_bwrap
def test_network_is_unreachable_even_on_loopback():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    code = f"""import json, socket
seen = {{}}
for host, port in [("127.0.0.1", {port}), ("1.1.1.1", 80), ("8.8.8.8", 53)]:
    try:
        socket.create_connection((host, port), timeout=2); seen[host] = "connected"
    except OSError as e:
        seen[host] = type(e).__name__
try:
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("8.8.8.8", 53)); seen["udp"] = "sent"
except OSError as e:
    seen["udp"] = type(e).__name__
print(json.dumps(seen))"""
    try:
        seen = _seen(code)
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody reached the host's loopback
    finally:
        server.close()
    assert seen == {"127.0.0.1": "ConnectionRefusedError", "1.1.1.1": "OSError", "8.8.8.8": "OSError", "udp": "OSError"}


def _daemon_code(marker: str, then: str) -> str:
    return f"""import os, sys, subprocess
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", "{marker}"])
    os._exit(0)
os.wait()
print("daemon started", flush=True)
{then}"""


@needs_bwrap
@pytest.mark.parametrize("then", ["pass", "while True: pass"], ids=["exits", "times-out"])
def test_setsid_double_fork_dies_with_the_call(then):
    marker = f"eprl-daemon-{uuid.uuid4().hex}"
    result = run_python(_daemon_code(marker, then), timeout_s=2)
    assert "daemon started" in result.stdout and result.timed_out == (then != "pass")
    deadline = time.monotonic() + 1
    while _host_processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _host_processes_with(marker) == []


@needs_bwrap
def test_fork_flood_is_capped_and_reaped():
    marker = f"eprl-flood-{uuid.uuid4().hex}"
    code = f"""import json, subprocess, sys
children, error = [], None
try:
    for _ in range(10 * {MAX_PROCESSES}):
        children.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "{marker}"]))
except OSError as e:
    error = type(e).__name__
print(json.dumps({{"started": len(children), "error": error}}))"""
    start = time.monotonic()
    seen = _seen(code, timeout_s=10)
    assert seen["error"] == "BlockingIOError" and 0 < seen["started"] < MAX_PROCESSES
    assert time.monotonic() - start < 10
    time.sleep(0.2)
    assert _host_processes_with(marker) == []


@needs_bwrap
def test_file_size_cap_leaves_no_partial_file():
    code = """import json, os
try:
    with open("/tmp/big", "wb") as f:
        for _ in range(20):
            f.write(b"x" * 2**20)
    error = None
except OSError as e:
    error = e.errno
print(json.dumps({"error": error, "size": os.path.getsize("/tmp/big")}))"""
    seen = _seen(code)
    assert seen["error"] == 27 and seen["size"] <= MAX_FILE_BYTES  # EFBIG
    assert _seen("import json, os; print(json.dumps(os.listdir('/tmp')))") == []


@needs_bwrap
def test_tmpfs_size_bounds_disk_use():
    code = """import json, os
written, error = 0, None
try:
    for i in range(12):
        with open(f"/tmp/part{i}", "wb") as f:
            for _ in range(7):
                f.write(b"x" * 2**20); f.flush(); written += 2**20
except OSError as e:
    error = e.errno
print(json.dumps({"error": error, "written": written}))"""
    seen = _seen(code)
    assert seen["error"] == 28 and seen["written"] <= TMPFS_BYTES  # ENOSPC


@needs_bwrap
@pytest.mark.parametrize("how", ["open", "mkdir"])
def test_number_of_created_files_is_capped(how):
    make = {"open": "open(f'/tmp/f{i}', 'w').close()", "mkdir": "os.mkdir(f'/tmp/d{i}')"}[how]
    code = f"""import json, os
created, error = 0, None
try:
    for i in range(100000):
        {make}
        created += 1
except OSError as e:
    error = str(e)
print(json.dumps({{"created": created, "error": error, "listed": len(os.listdir("/tmp"))}}))"""
    seen = _seen(code)
    assert seen["created"] == seen["listed"] == MAX_FILES and "at most" in seen["error"]


@needs_bwrap
def test_stdlib_works_inside_the_sandbox():
    code = "import json, zlib, decimal, fractions, math, itertools, tempfile, sqlite3\nprint(math.comb(10, 3), fractions.Fraction(1, 3) * 3)"
    result = run_python(code)
    assert result.stdout == "120 1\n" and result.exit_code == 0 and result.stderr == ""


def test_missing_bwrap_refuses_with_the_install_line(monkeypatch):
    monkeypatch.setattr(bwrap.shutil, "which", lambda name: None)
    with pytest.raises(SandboxUnavailableError) as err:
        run_python("print(1)")
    assert "apt-get install -y bubblewrap" in str(err.value) and "sandbox: none" in str(err.value)
    assert len(str(err.value).splitlines()) == 1
    from eprl.envs import make

    with pytest.raises(SandboxUnavailableError, match="bubblewrap"):
        make("ArithmeticTool-v0", tools=("calc", "python"))
    make("ArithmeticTool-v0", tools=("calc",))  # no python tool: no sandbox needed


def test_sandbox_none_is_an_explicit_opt_out_with_a_warning(monkeypatch, caplog):
    import eprl.envs.sandbox as sandbox

    monkeypatch.setattr(sandbox, "_warned_unsandboxed", False)
    monkeypatch.setattr(bwrap.shutil, "which", lambda name: None)
    with caplog.at_level("WARNING", logger="eprl.sandbox"):
        result = run_python("print(6 * 7)", sandbox="none")
    assert result.stdout == "42\n" and "WITHOUT isolation" in caplog.text
    assert run_python("while True: pass", timeout_s=1, sandbox="none").timed_out  # the limits still hold
    with pytest.raises(ValueError, match="unknown sandbox 'docker'"):
        run_python("print(1)", sandbox="docker")
