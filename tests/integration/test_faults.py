"""Runs that go wrong: timeouts, floods, signals, missing files, killed CLIs."""
import os
import signal
import time

# Markers the runs write would land outside their sandbox: watch their processes instead.
from test_sandbox import sleeps, wait_for


def service(g, add, name, body, *flags):
    repo = add(f"{name}.sh", body)
    if not g("describe", "repository", "scripts").returncode == 0:
        g("create", "repository", "scripts", "--url", repo, check=0)
    g("create", "service", "executable", name, "--repository", "scripts",
      "--filename", f"{name}.sh", *flags, check=0)


def newest_running(gantry, timeout=30):
    """Waits until the newest execution is running; returns it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = gantry.json("get", "executions")["items"]
        if items and items[0]["state"] == "running":
            return items[0]
        time.sleep(0.2)
    raise AssertionError("no execution started running")


def test_timeout_kills_the_process_group(any_gantry, scripts_repo, tmp_path):
    gantry = any_gantry
    # the script ignores SIGTERM and leaves a grandchild behind; both must die
    service(gantry, scripts_repo, "hang", """\
        trap '' TERM
        (sleep 30.125; echo late) &
        echo started
        sleep 60.125
        """, "--timeout", "2")
    t0 = time.monotonic()
    ex = gantry.json("run", "service", "hang", check=1)
    took = time.monotonic() - t0
    assert ex["state"] == "timed_out" and ex["stdout"] == "started\n"
    assert took < 30, took
    assert wait_for(lambda: sleeps("30.125") == 0 and sleeps("60.125") == 0, 10)


def test_output_flood_is_truncated(gantry, scripts_repo):
    gantry.write_config("output_limit = 64KiB\n")
    service(gantry, scripts_repo, "flood", "yes xxxxxxx | head -c 20000000\necho done >&2\n")
    ex = gantry.json("run", "service", "flood")
    assert ex["stdout_truncated"] is True and len(ex["stdout"]) == 65536
    assert ex["stderr"] == "done\n" and ex["stderr_truncated"] is False


def test_big_and_binary_output_with_the_default_limit(any_gantry, scripts_repo):
    """3 MB on each stream (the default keeps 1 MiB of each) and bytes that are not
    UTF-8: the run is recorded as it ended, once, with its output."""
    gantry = any_gantry
    service(gantry, scripts_repo, "flood3",
            "head -c 3000000 /dev/zero | tr '\\0' a\nhead -c 3000000 /dev/zero | tr '\\0' b >&2\n")
    ex = gantry.json("run", "service", "flood3")
    assert ex["state"] == "succeeded", ex.get("error")
    assert ex["stdout_truncated"] and ex["stderr_truncated"]
    full = gantry.json("describe", "execution", ex["id"])
    assert len(full["stdout"]) == 1 << 20 and set(full["stdout"]) == {"a"}
    assert len(full["stderr"]) == 1 << 20 and set(full["stderr"]) == {"b"}
    service(gantry, scripts_repo, "binary", "printf 'x\\377\\376y\\000z\\n'\n")
    ex = gantry.json("run", "service", "binary")
    assert ex["state"] == "succeeded" and ex["stdout"] == "x\ufffd\ufffdy\ufffdz\n", ex
    # nothing is left for the next command to reap
    items = gantry.json("get", "executions")["items"]
    assert [e["state"] for e in items] == ["succeeded", "succeeded"], items


def test_killed_by_signal(any_gantry, scripts_repo):
    gantry = any_gantry
    service(gantry, scripts_repo, "suicide", "echo bye\nkill -KILL $$\n")
    ex = gantry.json("run", "service", "suicide", check=1)
    assert ex["state"] == "failed" and ex["signal"] == 9 and ex["return_code"] == 137


def test_nonzero_exit_fails_the_command(any_gantry, scripts_repo):
    gantry = any_gantry
    service(gantry, scripts_repo, "bad", "echo oops >&2\nexit 4\n")
    p = gantry("run", "service", "bad", check=1)
    assert "oops" in p.stdout and "return code: 4" in p.stdout and "state: failed" in p.stdout


def test_missing_file_and_non_executable(any_gantry, scripts_repo):
    gantry = any_gantry
    repo = scripts_repo("plain.sh", "echo hi\n")
    os.chmod(repo / "plain.sh", 0o644)
    from conftest import git
    git(repo, "update-index", "--chmod=-x", "plain.sh")
    git(repo, "commit", "-qm", "not executable")
    gantry("create", "repository", "scripts", "--url", repo, check=0)
    gantry("create", "service", "executable", "gone", "--repository", "scripts",
           "--filename", "nope.sh", check=0)
    ex = gantry.json("run", "service", "gone", check=1)
    assert ex["state"] == "failed" and 'file "nope.sh" not found' in ex["error"]
    gantry("create", "service", "executable", "plain", "--repository", "scripts",
           "--filename", "plain.sh", check=0)
    ex = gantry.json("run", "service", "plain", check=1)
    assert "not executable" in ex["error"]
    gantry("update", "service", "plain", "--interpreter", "/bin/sh", check=0)
    assert gantry.json("run", "service", "plain")["stdout"] == "hi\n"


def test_path_escape_is_refused(any_gantry, scripts_repo):
    gantry = any_gantry
    repo = scripts_repo("ok2.sh", "echo ok\n")
    os.symlink("/etc", repo / "etc-link")
    from conftest import git
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "link")
    gantry("create", "repository", "scripts", "--url", repo, check=0)
    p = gantry("create", "service", "executable", "up", "--repository", "scripts",
               "--filename", "../x.sh", check=2)
    assert '"..' in p.stderr
    gantry("create", "service", "executable", "esc", "--repository", "scripts",
           "--working-dir", "etc-link", "--filename", "hostname", check=0)
    ex = gantry.json("run", "service", "esc", check=1)
    assert "outside the repository" in ex["error"]


def test_unreachable_repository(any_gantry, tmp_path):
    gantry = any_gantry
    gantry("create", "repository", "r", "--url", tmp_path / "does-not-exist", check=0)
    gantry("create", "service", "executable", "s", "--repository", "r", "--filename", "x", check=0)
    ex = gantry.json("run", "service", "s", check=1)
    assert ex["state"] == "failed" and "fetching" in ex["error"]


def test_sigint_cancels_the_run(gantry, scripts_repo):
    service(gantry, scripts_repo, "slow", "echo begin\nsleep 60\n")
    p = gantry.popen("run", "service", "slow", "-o", "json")
    time.sleep(1.5)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 1, err
    import json
    assert json.loads(out)["state"] == "canceled"


def test_sigkilled_cli_leaves_no_running_execution(gantry, scripts_repo, tmp_path):
    service(gantry, scripts_repo, "long", "sleep 30.0625\necho finished\n")
    p = gantry.popen("run", "service", "long")
    newest_running(gantry)
    assert wait_for(lambda: sleeps("30.0625") == 1)
    p.send_signal(signal.SIGKILL)
    p.wait()
    # the next command reaps it: lost, with the reason, exactly once
    ex = gantry.json("get", "executions")["items"]
    assert [e["state"] for e in ex] == ["lost"], ex
    full = gantry.json("describe", "execution", ex[0]["id"])
    assert "ended before it finished" in full["error"]
    assert gantry.json("get", "executions")["items"][0]["revision"] == full["revision"]
    # the run died with the CLI (or was killed by the reaper), it was not left to finish
    assert wait_for(lambda: sleeps("30.0625") == 0, 10)


def test_parallel_runs_share_the_store(gantry, scripts_repo):
    service(gantry, scripts_repo, "quick", "echo $1 $2\n")
    procs = [gantry.popen("run", "service", "quick", "--set", f"n={i}") for i in range(6)]
    for p in procs:
        p.communicate(timeout=120)
        assert p.returncode == 0
    items = gantry.json("get", "executions")["items"]
    assert len(items) == 6 and all(e["state"] == "succeeded" for e in items)


def test_cancel_from_another_terminal(gantry, scripts_repo, tmp_path):
    service(gantry, scripts_repo, "wait", "echo started\nsleep 30.25\necho not-canceled\n")
    p = gantry.popen("run", "service", "wait", "-o", "json")
    ex = newest_running(gantry)
    r = gantry.json("cancel", "execution", ex["id"])
    assert r["cancel_requested"] is True and "owner_pid" not in r
    out, err = p.communicate(timeout=30)
    import json
    assert p.returncode == 1 and json.loads(out)["state"] == "canceled", err
    p = gantry("cancel", "execution", ex["id"], check=2)
    assert "already ended (canceled)" in p.stderr
    assert wait_for(lambda: sleeps("30.25") == 0, 10)


def test_cancel_stops_a_hanging_pip_install(gantry, tmp_path):
    """git and pip run with the run's cancel: a cancel (or a drain) is not held up by a
    requirements install that never ends."""
    from conftest import git
    repo = tmp_path / "slow-repo"
    (repo / "slowpkg").mkdir(parents=True)
    (repo / "slowpkg" / "setup.py").write_text(
        "import time\ntime.sleep(120)\nfrom setuptools import setup\nsetup(name='slowpkg', version='1')\n")
    (repo / "requirements.txt").write_text("./slowpkg\n")
    (repo / "main.py").write_text("print('never')\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "slow")
    gantry("create", "repository", "slow", "--url", repo, check=0)
    gantry("create", "service", "python-script", "slow", "--repository", "slow",
           "--filename", "main.py", check=0)
    p = gantry.popen("run", "service", "slow", "-o", "json")
    ex = newest_running(gantry)
    time.sleep(2)  # well inside pip install
    t0 = time.monotonic()
    gantry("cancel", "execution", ex["id"], check=0)
    out, err = p.communicate(timeout=60)
    import json
    assert json.loads(out)["state"] == "canceled", (out, err)
    assert time.monotonic() - t0 < 20
