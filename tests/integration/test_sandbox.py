"""Run isolation: a service's process runs in a bubblewrap sandbox and under limits.
It must not reach Gantry's files or processes, must not outlive its run, and a limit
it hits fails the execution with a reason that names the limit."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import GANTRY


def bwrap_works():
    """(True, "") when bubblewrap can create a sandbox here, else (False, why)."""
    try:
        p = subprocess.run(["bwrap", "--unshare-user", "--unshare-pid", "--ro-bind", "/", "/",
                            "--proc", "/proc", "--dev", "/dev", "true"],
                           capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        return False, "bwrap is not installed (Debian package bubblewrap)"
    if p.returncode != 0:
        return False, "bwrap cannot create a sandbox here: " + p.stderr.strip()
    return True, ""


OK, WHY = bwrap_works()
needs_bwrap = pytest.mark.skipif(not OK, reason=f"SKIPPED: {WHY}")


def service(g, add, name, body, *flags):
    repo = add(f"{name}.sh", body)
    if g("describe", "repository", "scripts").returncode != 0:
        g("create", "repository", "scripts", "--url", repo, check=0)
    g("create", "service", "executable", name, "--repository", "scripts",
      "--filename", f"{name}.sh", *flags, check=0)


def work_dir(g):
    """The working directory of whatever runs the service (the CLI, or the controller)."""
    return Path(g.stack.dir) / "server" if hasattr(g, "stack") else g.work


def sleeps(arg):
    """Live (not zombie) processes whose command line is `sleep ARG`."""
    n = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if (d / "cmdline").read_bytes() != b"sleep\0" + arg.encode() + b"\0":
                continue
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        n += state not in ("Z", "X")
    return n


def wait_for(pred, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


@needs_bwrap
def test_run_cannot_reach_gantry(any_gantry, scripts_repo):
    g = any_gantry
    work = work_dir(g)
    # a secret makes sure the key file exists
    g("create", "secret", "tok", "--value", "v", check=0)
    assert (work / "secrets.key").exists()
    service(g, scripts_repo, "escape", f"""\
        echo "me: $(id -u) in $(pwd)"
        ls ./escape.sh >/dev/null && echo sees-its-checkout
        cat {work}/secrets.key >/dev/null 2>&1 && echo LEAK-key
        ls {work}/repos >/dev/null 2>&1 && echo LEAK-repo-cache
        cat {work}/gantry.db >/dev/null 2>&1 && echo LEAK-store
        ls {work}/runs 2>/dev/null | wc -l | sed 's/^/runs visible: /'
        for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done \\
            | grep -c "{os.path.dirname(GANTRY)}/gantr[y]" | sed 's/^/gantry processes: /'
        kill -9 $PPID 2>/dev/null; echo "kill ppid: $?"
        echo still-running
        """)
    ex = g.json("run", "service", "escape")
    out = ex["stdout"]
    assert ex["state"] == "succeeded", ex
    assert "LEAK" not in out, out
    assert "sees-its-checkout" in out and "still-running" in out
    # only its own run directory, and no process of Gantry's
    assert "runs visible: 1" in out and "gantry processes: 0" in out, out
    # whatever it signalled, Gantry is alive and answers
    assert g.json("describe", "execution", ex["id"])["state"] == "succeeded"


@needs_bwrap
def test_setsid_escapee_dies_with_the_run(any_gantry, scripts_repo):
    g = any_gantry
    service(g, scripts_repo, "detach", "setsid sleep 63.25 </dev/null >/dev/null 2>&1 &\n"
                                       "sleep 0.5\necho detached\n")
    ex = g.json("run", "service", "detach")
    assert ex["state"] == "succeeded" and ex["stdout"] == "detached\n", ex
    assert wait_for(lambda: sleeps("63.25") == 0), "a setsid'd process outlived its run"


@needs_bwrap
def test_memory_hog_fails_with_the_limit(gantry, scripts_repo):
    gantry.write_config("memory_limit = 256MiB\n")
    service(gantry, scripts_repo, "hog",
            "exec /usr/bin/python3 -c 'x = bytearray(2 * 1024 ** 3); print(\"allocated\")'\n")
    ex = gantry.json("run", "service", "hog", check=1)
    assert ex["state"] == "failed", ex
    assert "allocated" not in ex["stdout"]
    assert ex["error"].startswith("out of memory: memory limit 256 MiB reached"), ex["error"]


FORKER = """\
exec /usr/bin/python3 -c '
import os, sys, time
n = 0
try:
    for i in range({n}):
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        n += 1
except OSError as e:
    print("fork failed after", n, "children:", e, file=sys.stderr)
    sys.exit(1)
print("forked", n)
time.sleep(20)
'
"""


@needs_bwrap
def test_fork_burst_hits_a_low_process_limit(gantry, scripts_repo):
    gantry.write_config("process_limit = 16\n")
    service(gantry, scripts_repo, "forks", FORKER.format(n=200), "--timeout", "120")
    t0 = time.monotonic()
    ex = gantry.json("run", "service", "forks", check=1)
    assert ex["state"] == "failed", ex
    assert ex["error"].startswith("process limit 16 reached"), ex["error"]
    assert "forked 200" not in ex["stdout"]
    assert time.monotonic() - t0 < 100


@needs_bwrap
def test_fork_burst_hits_the_default_process_limit(gantry, scripts_repo):
    service(gantry, scripts_repo, "forks", FORKER.format(n=600), "--timeout", "120")
    ex = gantry.json("run", "service", "forks", check=1)
    assert ex["state"] == "failed", ex
    assert ex["error"].startswith("process limit 256 reached"), ex["error"]
    assert "forked 600" not in ex["stdout"]


@needs_bwrap
def test_cpu_time_limit(gantry, scripts_repo):
    gantry.write_config("cpu_time_limit = 2s\n")
    service(gantry, scripts_repo, "spin", "while :; do :; done\n", "--timeout", "120")
    ex = gantry.json("run", "service", "spin", check=1)
    assert ex["state"] == "failed", ex
    assert ex["error"] == "killed by SIGXCPU: CPU time limit 2s reached", ex
    assert ex["signal"] == signal.SIGXCPU


@needs_bwrap
def test_run_dies_with_a_sigkilled_cli(gantry, scripts_repo):
    service(gantry, scripts_repo, "long", "sleep 64.5 &\nsleep 64.75\n")
    p = gantry.popen("run", "service", "long")
    try:
        assert wait_for(lambda: sleeps("64.5") == 1 and sleeps("64.75") == 1, 60)
    finally:
        p.send_signal(signal.SIGKILL)
        p.communicate()
    assert wait_for(lambda: sleeps("64.5") == 0 and sleeps("64.75") == 0)


def test_unsandboxed_run_dies_with_a_sigkilled_cli(gantry, scripts_repo):
    gantry.write_config("sandbox = none\n")
    service(gantry, scripts_repo, "long", "sleep 65.5 &\nsleep 65.75\n")
    p = gantry.popen("run", "service", "long")
    try:
        assert wait_for(lambda: sleeps("65.5") == 1 and sleeps("65.75") == 1, 60)
    finally:
        p.send_signal(signal.SIGKILL)
        _, err = p.communicate()
    assert "sandbox = none" in err  # the warning at start
    assert wait_for(lambda: sleeps("65.5") == 0 and sleeps("65.75") == 0)


def test_missing_bubblewrap_names_the_package(gantry, scripts_repo, tmp_path):
    service(gantry, scripts_repo, "hello", "echo hello\n")
    # no bwrap on this PATH (git is named by its path)
    gantry.write_config("git = /usr/bin/git\n")
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    gantry.extra = {"PATH": str(empty)}
    ex = gantry.json("run", "service", "hello", check=1)
    assert ex["state"] == "failed"
    assert "bubblewrap" in ex["error"] and "sandbox = none" in ex["error"], ex["error"]
    # the administrator's way out
    gantry.write_config("git = /usr/bin/git\nsandbox = none\n")
    p = gantry("run", "service", "hello", "-o", "json", check=0)
    assert json.loads(p.stdout)["stdout"] == "hello\n"
    assert "sandbox = none" in p.stderr


def test_bad_sandbox_and_limit_settings(gantry):
    gantry.write_config("sandbox = chroot\n")
    p = gantry("get", "services", check=2)
    assert "[runner] sandbox" in p.stderr and "bubblewrap, none" in p.stderr, p.stderr
    gantry.write_config("memory_limit = 1MiB\n")
    p = gantry("get", "services", check=2)
    assert "memory_limit" in p.stderr and "16MiB" in p.stderr, p.stderr


def patch_service(client, stack, name, body):
    from test_server import request
    token = client.work.joinpath("token").read_text().strip()
    return request(stack.controllers[0].port, "PATCH", f"/api/v1/services/{name}", body,
                   token=token)


@needs_bwrap
def test_service_limits_override_the_defaults(client, stack, scripts_repo):
    service(client, scripts_repo, "hog",
            "exec /usr/bin/python3 -c 'x = bytearray(1024 ** 3); print(\"allocated\")'\n")
    # the default (2 GiB) lets it allocate 1 GiB
    assert client.json("run", "service", "hog")["stdout"] == "allocated\n"
    st, b = patch_service(client, stack, "hog", {"limits": {"memory": "lots"}})
    assert st == 400 and b["error"]["field"] == "$.limits.memory", b
    st, b = patch_service(client, stack, "hog", {"limits": {"memory": "256MiB", "cpu_time": 30,
                                                            "processes": 8}})
    assert st == 200, b
    ex = client.json("run", "service", "hog", check=1)
    assert ex["state"] == "failed"
    assert ex["error"].startswith("out of memory: memory limit 256 MiB reached"), ex


@needs_bwrap
def test_package_build_cannot_read_gantry_files(gantry, tmp_path):
    """pip runs the repository's setup.py while it builds the venv: that too happens in the
    sandbox, so it sees neither the key file nor the store."""
    from conftest import git
    gantry("create", "secret", "s1", input="v\n", check=0)  # the key file exists now
    key = gantry.work / "secrets.key"
    assert key.exists()
    repo = tmp_path / "evil-repo"
    (repo / "evil").mkdir(parents=True)
    # it installs only when neither file can be read
    (repo / "evil" / "setup.py").write_text(
        "import sys\n"
        f"for p in [{str(key)!r}, {str(gantry.work / 'gantry.db')!r}]:\n"
        "    try:\n"
        "        open(p, 'rb').read()\n"
        "        raise SystemExit('READ ' + p)\n"
        "    except OSError:\n"
        "        pass\n"
        "from setuptools import setup\n"
        "setup(name='evil', version='1', py_modules=[])\n")
    (repo / "requirements.txt").write_text("./evil\n")
    (repo / "main.py").write_text("print('never')\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "evil")
    gantry("create", "repository", "evil", "--url", repo, check=0)
    gantry("create", "service", "python-script", "evil", "--repository", "evil",
           "--filename", "main.py", check=0)
    ex = gantry.json("run", "service", "evil")
    assert ex["state"] == "succeeded" and ex["stdout"] == "never\n", ex.get("error")
