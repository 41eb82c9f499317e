"""Every command in README.md runs (issue 14): each fenced ```sh / ```bash block, and the ```python
example, on the embedded default (no NOTIFIER_* setting: SQLite and an embedded Redis in ./var) in a
temporary directory, with the project's venv on PATH, as a reader would paste them; each must exit
0 and leave no process behind.

What is not run as written, and why:
- a block whose first line says `# needs docker`: this machine has no Docker daemon; one that says
  `# needs an apps file`: it names an app the reader configured (docs/apps.md; tests/integration/
  test_apps.py runs that path). No other reason is accepted (test_only_known_blocks_are_not_run);
- `make <target>` lines are checked with `make -n` (the target exists and what it runs): `make demo`
  runs `notifier demo`, which tests/integration/test_demo.py runs; `make test` is the whole suite;
  `make dev` runs `notifier dev`, which is run here;
- `notifier dev` runs until stopped: it is started with --free-ports (another run may hold the
  default ports), the block that says "while notifier dev runs" is run against it with API and KEY
  taken from its output, then it gets Ctrl-C (SIGINT) and must exit 0;
- the sandbox's ports come from NOTIFIER_SANDBOX_*_PORT (free ones), for the same reason.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from sandbox.devstack import private_sandbox_env
from tests.integration.embedded import BIN, ROOT, kill_redis_servers_in, redis_servers_in

README = (ROOT / "README.md").read_text()
BLOCKS = [(m.group(1), m.group(2)) for m in re.finditer(r"^```(sh|bash|python)\n(.*?)^```", README, re.M | re.S)]
NOT_RUN = ("# needs docker", "# needs an apps file")
SHELL = [body for lang, body in BLOCKS if lang in ("sh", "bash") and not body.startswith(NOT_RUN)]
WHILE_DEV = "# while notifier dev runs"


def _commands(body: str) -> list[str]:
    return [line.split("#")[0].strip() for line in body.splitlines() if line.split("#")[0].strip()]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    sandbox_ports = {k: v for k, v in private_sandbox_env().items() if "PORT" in k or k.endswith("_URL")}
    return env | sandbox_ports | extra


def _bash(script: str, cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a block with `bash -e`; what it left in the background (it failed half-way) is killed."""
    out, err = cwd / "block.out", cwd / "block.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(["bash", "-e", "-c", script], cwd=cwd, env=env, stdout=stdout, stderr=stderr,
                                start_new_session=True)
        try:
            proc.wait(timeout)
            time.sleep(0.5)
            left = [p.info["cmdline"] for p in psutil.process_iter(["cmdline"]) if _in_group(p, proc.pid)]
            assert proc.returncode != 0 or left == [], f"left running by the block: {left}"
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out.read_text(), err.read_text())


def _in_group(process: psutil.Process, group: int) -> bool:
    try:
        return os.getpgid(process.pid) == group and process.status() != psutil.STATUS_ZOMBIE
    except (ProcessLookupError, psutil.NoSuchProcess):
        return False


def _assert_nothing_left(var_dir: Path) -> None:
    left = redis_servers_in(var_dir)
    kill_redis_servers_in(var_dir)
    assert left == [], f"a redis-server outlived the README's commands in {var_dir}"


def test_the_readme_has_the_blocks_this_test_knows():
    assert any(_commands(body) == ["notifier dev"] for body in SHELL)
    assert any(body.startswith(WHILE_DEV) for body in SHELL)
    assert any("notifier migrate" in body and "notifier worker &" in body for body in SHELL)
    assert [lang for lang, _ in BLOCKS].count("python") >= 1


def test_make_targets_exist_and_run_notifier():
    for body in SHELL:
        for command in _commands(body):
            if command.startswith("make "):
                target = command.split()[1]
                dry = subprocess.run(["make", "-n", "-C", str(ROOT), target], capture_output=True, text=True,
                                     timeout=60)
                assert dry.returncode == 0, (command, dry.stderr)
                if target in ("demo", "dev"):
                    assert f"notifier {target}" in dry.stdout, dry.stdout


def test_the_shell_blocks_run(tmp_path):
    for number, body in enumerate(SHELL):
        commands = _commands(body)
        if all(c.startswith("make ") for c in commands) or commands == ["notifier dev"] or body.startswith(WHILE_DEV):
            continue  # above, and below
        cwd = tmp_path / f"block-{number}"
        cwd.mkdir()
        result = _bash(body, cwd, _env())
        assert result.returncode == 0, f"README block failed:\n{body}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        if "notifier status hello-2" in body:  # the by-hand loop: SMS works too (issue 14)
            assert result.stdout.count('"status": "sent"') == 2, result.stdout
        _assert_nothing_left(cwd / "var")


def test_notifier_dev_and_the_block_run_against_it(tmp_path):
    [dev] = [c for body in SHELL for c in _commands(body) if c == "notifier dev"]
    [during] = [body for body in SHELL if body.startswith(WHILE_DEV)]
    proc = subprocess.Popen([*dev.split(), "--free-ports"], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 240
        while not any("notifier dev: ready" in line for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.5)
        children = psutil.Process(proc.pid).children(recursive=True)
        output = "".join(lines)
        api, key = re.search(r"API +(http://\S+)", output)[1], re.search(r"API key +(\S+)", output)[1]
        result = _bash(during, tmp_path, _env(API=api, KEY=key))
        assert result.returncode == 0, f"{during}\n{result.stdout}\n{result.stderr}"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 0, "".join(lines)
        assert [c.pid for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE] == []
    finally:
        if proc.poll() is None:
            proc.kill()
        for child in children:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        _assert_nothing_left(tmp_path / "var")


def test_the_python_example_runs_after_migrate(tmp_path):
    examples = [body for lang, body in BLOCKS if lang == "python" and not body.startswith(NOT_RUN)]
    assert _bash("notifier migrate", tmp_path, _env()).returncode == 0
    for example in examples:
        result = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, env=_env(), capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, f"{example}\n{result.stderr[-3000:]}"
    _assert_nothing_left(tmp_path / "var")


def test_only_known_blocks_are_not_run():
    skipped = [body.splitlines()[0] for _, body in BLOCKS if body.startswith("# needs")]
    assert skipped and all(line.startswith(NOT_RUN) for line in skipped), skipped
