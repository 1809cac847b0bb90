"""The python sandbox: limits, timeouts, truncation and normal runs."""
import time

from envs.sandbox import run_python


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
