"""A run reaches only what its service grants: secrets. An operator (who may run services,
not create them) must not be able to read a stored secret through a run: a request binds
only secrets its service grants, never to a loader or interpreter setting, and whatever
a run prints of its secrets is stored as ***. Sealed values are bound to their secret's
name, and the processes that hold the key are not dumpable."""
import json
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN_DIR, GANTRY, git
from test_server import login, request

DB_VALUE = "hunter2-db-password"
TOKEN_VALUE = "tok-4f9c2e1b7a"
OTHER_VALUE = "other-8d3a6f0c5e"


def repo_with(tmp_path, files):
    repo = tmp_path / "sec-repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    for name, body in files.items():
        (repo / name).write_text(body)
        if name.endswith(".sh"):
            (repo / name).chmod(0o755)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "scripts")
    return repo


PRINTS_SECRETS = {
    "leak.sh": '#!/bin/sh\necho "token=$TOK other=$OTHER"\necho "err: $TOK" >&2\n',
    "leak.py": 'import os\nprint("token:", os.environ.get("TOK"))\n',
}


def setup_service(gantry, tmp_path, *extra):
    repo = repo_with(tmp_path, PRINTS_SECRETS)
    gantry("create", "repository", "r", "--url", f"file://{repo}", check=0)
    gantry("create", "secret", "dbpass", "--value", DB_VALUE, check=0)
    gantry("create", "secret", "tok", input=TOKEN_VALUE + "\n", check=0)
    gantry("create", "secret", "other", "--value", OTHER_VALUE, check=0)
    gantry("create", "service", "executable", "leak", "--repository", "r", "--filename", "leak.sh",
           "--secret", "name=tok,type=env,target=TOK", *extra, check=0)
    gantry("create", "service", "python-script", "py", "--repository", "r", "--filename",
           "leak.py", check=0)


def executions(gantry):
    return gantry.json("get", "executions")["items"]


def test_secret_targets_that_configure_the_loader_or_interpreter_are_refused(any_gantry, tmp_path):
    gantry = any_gantry
    setup_service(gantry, tmp_path)
    # the attacks as reported: the value would be echoed by ld.so / Python's warnings
    # (the target is refused whether or not the secret is granted)
    p = gantry("run", "service", "py", "--set-secret", "name=dbpass,type=env,target=LD_PRELOAD",
               check=2)
    assert "$.secrets[0].target" in p.stderr and '"LD_PRELOAD"' in p.stderr
    assert "dynamic loader" in p.stderr
    p = gantry("run", "service", "py", "--set-secret",
               "name=dbpass,type=env,target=PYTHONWARNINGS", check=2)
    assert "$.secrets[0].target" in p.stderr and '"PYTHONWARNINGS"' in p.stderr
    assert "Python interpreter setting" in p.stderr
    assert executions(gantry) == []
    # an admin cannot set them up either, as a binding or as plain env
    p = gantry("create", "service", "executable", "s2", "--repository", "r", "--filename",
               "leak.sh", "--secret", "name=dbpass,type=env,target=BASH_ENV", check=2)
    assert "$.secrets[0].target" in p.stderr and '"BASH_ENV"' in p.stderr
    p = gantry("create", "service", "executable", "s2", "--repository", "r", "--filename",
               "leak.sh", "--env", "LD_PRELOAD=/tmp/x.so", check=2)
    assert "$.env.LD_PRELOAD" in p.stderr
    # ordinary names and proxies are fine
    gantry("update", "service", "py", "--allow-secret", "dbpass", check=0)
    gantry("run", "service", "py", "--set-secret", "name=dbpass,type=env,target=http_proxy",
           check=0)


def test_a_run_binds_only_secrets_its_service_grants(any_gantry, tmp_path):
    gantry = any_gantry
    setup_service(gantry, tmp_path)
    p = gantry("run", "service", "leak", "--set-secret", "name=dbpass,type=env,target=OTHER",
               check=2)
    assert "$.secrets[0].name" in p.stderr
    assert '"dbpass"' in p.stderr and 'service "leak"' in p.stderr and "not granted" in p.stderr
    assert DB_VALUE not in p.stdout + p.stderr
    assert executions(gantry) == []
    # the service's own secret, bound again by the request, is granted
    gantry("run", "service", "leak", "--set-secret", "name=tok,type=env,target=OTHER", check=0)
    # an admin grants one more; a grant names an existing secret
    p = gantry("update", "service", "leak", "--allow-secret", "nope", check=2)
    assert "$.allowed_secrets[0]" in p.stderr
    gantry("update", "service", "leak", "--allow-secret", "other", check=0)
    assert gantry.json("describe", "service", "leak")["allowed_secrets"] == ["other"]
    ex = gantry.json("run", "service", "leak", "--set-secret", "name=other,type=env,target=OTHER")
    assert ex["state"] == "succeeded"
    # still not dbpass; and a granted secret is in use: it cannot be deleted
    gantry("run", "service", "leak", "--set-secret", "name=dbpass,type=env,target=OTHER", check=2)
    p = gantry("delete", "secret", "other", check=2)
    assert "service leak" in p.stderr


def test_operator_gets_403_for_a_secret_not_granted(stack, client, tmp_path):
    setup_service(client, tmp_path)
    client("create", "user", "otto", "--role", "operator", "--password-stdin",
           input="otto-password\n", check=0)
    port = stack.controllers[0].port
    otto = login(port, "otto", "otto-password")
    st, b = request(port, "POST", "/api/v1/services/leak/run",
                    {"secrets": [{"name": "dbpass", "type": "env", "target": "X"}]}, token=otto)
    assert st == 403, b
    assert b["error"]["field"] == "$.secrets[0].name"
    assert "dbpass" in b["error"]["message"] and "leak" in b["error"]["message"]
    st, b = request(port, "POST", "/api/v1/services/leak/run",
                    {"secrets": [{"name": "dbpass", "type": "env", "target": "LD_PRELOAD"}]},
                    token=otto)
    assert st == 400 and b["error"]["field"] == "$.secrets[0].target", b
    # the operator cannot grant it to themselves
    st, b = request(port, "PATCH", "/api/v1/services/leak", {"allowed_secrets": ["dbpass"]},
                    token=otto)
    assert st == 403, b
    assert client.json("get", "executions")["items"] == []


def test_secret_values_are_masked_in_stored_output(any_gantry, tmp_path):
    gantry = any_gantry
    setup_service(gantry, tmp_path)
    p = gantry("run", "service", "leak", check=0)  # the service's own secret
    assert "token=*** other=\n" in p.stdout and TOKEN_VALUE not in p.stdout, p.stdout
    # and one a run request binds
    gantry("update", "service", "leak", "--allow-secret", "other", check=0)
    p = gantry("run", "service", "leak", "--set-secret", "name=other,type=env,target=OTHER", check=0)
    assert "token=*** other=***" in p.stdout, p.stdout
    assert "err: ***" in p.stdout + p.stderr
    assert TOKEN_VALUE not in p.stdout + p.stderr and OTHER_VALUE not in p.stdout + p.stderr
    ex_id = executions(gantry)[0]["id"]  # newest first
    d = gantry("describe", "execution", ex_id, check=0).stdout
    assert "token=***" in d and TOKEN_VALUE not in d and OTHER_VALUE not in d
    ex = gantry.json("describe", "execution", ex_id)
    assert ex["stdout"] == "token=*** other=***\n" and ex["stderr"] == "err: ***\n"
    listed = json.dumps(gantry.json("get", "executions"))
    assert TOKEN_VALUE not in listed and OTHER_VALUE not in listed
    # nor in the store itself
    db = (gantry.data / "gantry.db").read_bytes()
    for f in gantry.data.glob("gantry.db*"):
        db += f.read_bytes()
    assert TOKEN_VALUE.encode() not in db and OTHER_VALUE.encode() not in db


def test_a_sealed_value_does_not_open_under_another_name(gantry, tmp_path):
    setup_service(gantry, tmp_path)
    gantry("describe", "secret", "tok", check=0)  # the store exists and holds both
    db = sqlite3.connect(gantry.data / "gantry.db")
    sealed = {i: json.loads(b) for i, b in
              db.execute("SELECT id, body FROM documents WHERE coll = 'secrets'")}
    assert sealed["tok"]["sealed"].startswith("gt2:")
    # someone with write access to the store moves dbpass's sealed value into tok's record
    moved = dict(sealed["tok"], sealed=sealed["dbpass"]["sealed"])
    db.execute("UPDATE documents SET body = ? WHERE coll = 'secrets' AND id = 'tok'",
               (json.dumps(moved),))
    db.commit()
    db.close()
    p = gantry("run", "service", "leak", check=3)
    assert 'secret "tok"' in p.stderr and "sealed for another secret" in p.stderr, p.stderr
    assert DB_VALUE not in p.stdout + p.stderr


CAPLESS = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"]


def unprivileged():
    """A command prefix for a process with the test's uid and no capabilities: as root,
    setpriv drops them all (without CAP_SYS_PTRACE a process may read another's
    /proc/<pid>/environ only when that one is dumpable and holds no more capabilities)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("SKIPPED: running as root and setpriv (util-linux) is missing: cannot "
                    "test /proc access as an unprivileged process of the same uid")
    return CAPLESS


def readable(pid):
    p = subprocess.run(unprivileged() + ["cat", f"/proc/{pid}/environ"], capture_output=True)
    return p.returncode == 0


def test_local_cli_is_not_readable_by_the_runs_it_starts(gantry, tmp_path):
    """A run's script, same uid, reads its parent's /proc/<ppid>/environ (the key is in
    that process's memory, /proc/<ppid>/mem, under the same rule). In the sandbox a run
    cannot see its parent at all (test_sandbox.py); this is the defence that remains with
    [runner] sandbox = none: the CLI is not dumpable."""
    gantry.write_config("sandbox = none\n")
    repo = repo_with(tmp_path, {"peek.sh": '#!/bin/sh\n'
                                           'if cat /proc/$PPID/environ >/dev/null 2>&1; then '
                                           'echo "parent readable"; else echo "parent refused"; fi\n'
                                           'cat /proc/self/environ >/dev/null && echo "self readable"\n'})
    gantry("create", "repository", "r", "--url", f"file://{repo}", check=0)
    gantry("create", "secret", "k", "--value", "some-value", check=0)
    gantry("create", "service", "executable", "peek", "--repository", "r", "--filename",
           "peek.sh", "--secret", "name=k,type=env,target=K", check=0)
    env = gantry.env()
    p = subprocess.run(unprivileged() + [GANTRY, "run", "service",
                                         "peek"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert "parent refused" in p.stdout and "self readable" in p.stdout, p.stdout


def test_controller_is_not_dumpable(stack, tmp_path):
    """A controller started with the test's uid and no capabilities: its /proc/<pid>/environ
    is refused to another such process, while the same reader can read a dumpable process
    started the same way (so the refusal is the controller's doing, not the setup's)."""
    from testenv.common import free_port
    from testenv.stack import Daemon
    prefix = unprivileged()
    control = subprocess.Popen(prefix + ["sleep", "60"])
    port = free_port()
    d = Daemon(f"capless-controller-{port}", prefix + [os.path.join(BIN_DIR, "gantry-controller")],
               str(tmp_path / "capless-controller.log"), "gantry-controller ready",
               stack.env(GANTRY_SERVER_PORT=str(port)))
    try:
        time.sleep(0.2)
        assert readable(control.pid), "the reader cannot read even a dumpable process"
        assert not readable(d.pid), "the controller's /proc/<pid>/environ is readable"
        if os.geteuid() != 0:
            # not dumpable: the kernel makes its /proc files root's
            assert Path(f"/proc/{d.pid}/environ").stat().st_uid == 0
    finally:
        d.stop()
        control.kill()
        control.wait()
