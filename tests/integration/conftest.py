"""Fixtures for end-to-end tests: each test gets its own working directory, config
file and Git repository, and drives the real gantry binary ($GANTRY_BIN)."""
import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GANTRY = os.environ.get("GANTRY_BIN", str(ROOT / "build" / "gantry"))


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})


class Gantry:
    """Runs gantry with a private config; returns CompletedProcess."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.work = tmp / "work"
        self.config = tmp / "gantry.conf"
        self.data = self.work  # where the store, caches and venvs are
        self.extra = {}
        self.write_config()

    def write_config(self, extra=""):
        self.config.write_text(textwrap.dedent(f"""\
            [application]
            mode = local
            working_dir = {self.work}

            [runner]
            python = /usr/bin/python3
            pip_no_index = true
            kill_grace_period = 1s
            """) + extra)

    def env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("GANTRY_")}
        env.update({"GANTRY_CONFIG": str(self.config), "HOME": str(self.tmp)})
        # leaks are checked by the unit tests; here sanitizers must not slow runs down
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
        env.update(self.extra)
        return env

    def __call__(self, *args, input=None, check=None, timeout=120):
        p = subprocess.run([GANTRY, *map(str, args)], input=input, capture_output=True,
                           text=True, env=self.env(), timeout=timeout)
        if check is not None:
            assert p.returncode == check, (
                f"gantry {' '.join(map(str, args))}: exit {p.returncode}, want {check}\n"
                f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}")
        # a sanitizer report anywhere fails the test
        assert "Sanitizer" not in p.stderr, p.stderr
        return p

    def json(self, *args, check=0):
        p = self(*args, "-o", "json", check=check)
        return json.loads(p.stdout)

    def popen(self, *args):
        return subprocess.Popen([GANTRY, *map(str, args)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=self.env())


def pytest_configure(config):
    config.addinivalue_line("markers", "cluster: hosts as network namespaces on an etcd "
                                       "store (test_cluster.py; needs root)")


@pytest.fixture
def gantry(tmp_path):
    return Gantry(tmp_path)


@pytest.fixture
def examples_repo(tmp_path):
    """The project's examples/ as a fresh Git repository (branch main, tag v1)."""
    repo = tmp_path / "examples-repo"
    shutil.copytree(ROOT / "examples", repo)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "examples")
    git(repo, "tag", "v1")
    return repo


@pytest.fixture
def scripts_repo(tmp_path):
    """A repository of small shell scripts for fault tests; returns a function
    add(name, body) that commits an executable script."""
    repo = tmp_path / "scripts-repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")

    def add(name, body):
        f = repo / name
        f.write_text("#!/bin/sh\n" + textwrap.dedent(body))
        f.chmod(0o755)
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", f"add {name}")
        return repo

    add("ok.sh", "echo ok\n")
    return add


# ---------- server mode: real Redis + Sentinels, RabbitMQ, tokend, controllers ----------

import sys  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
from testenv.rabbitmq import RabbitMQ  # noqa: E402
from testenv.redis import RedisCluster  # noqa: E402
from testenv.stack import GantryStack  # noqa: E402

BIN_DIR = os.environ.get("GANTRY_BIN_DIR", str(Path(GANTRY).parent))


@pytest.fixture(scope="session")
def servers():
    """One Redis cluster (master, replica, 3 sentinels) and one RabbitMQ for the session.
    Not under pytest's temp dir: that is 0700, and rabbitmq runs as its own user."""
    import tempfile
    d = Path(tempfile.mkdtemp(prefix="gantry-servers-"))
    os.chmod(d, 0o755)
    redis = RedisCluster(str(d / "redis"))
    rabbit = RabbitMQ(str(d / "rabbitmq"))
    redis.start()
    try:
        rabbit.start()
    except Exception:
        redis.stop()
        raise
    yield redis, rabbit
    rabbit.stop()
    redis.stop()
    shutil.rmtree(d, ignore_errors=True)


class ClientGantry(Gantry):
    """gantry in client mode against a stack's controller."""

    def __init__(self, tmp, stack, controller):
        self.tmp = tmp
        self.work = tmp / "client-work"
        self.config = tmp / "client.conf"
        self.extra = {}
        self.stack = stack
        self.use(controller)

    def use(self, controller):
        self.controller = controller
        self.stack.client_config(str(self.config), controller.port, str(self.work))

    def write_config(self, extra=""):
        raise NotImplementedError("client mode keeps the stack's client configuration")


@pytest.fixture
def stack(servers, tmp_path):
    """tokend and two controllers on a fresh store; admin's password is set to
    'admin-password-1'. Prints the daemons' logs when a test fails."""
    redis, rabbit = servers
    redis.wait_stable()
    s = GantryStack(str(tmp_path / "stack"), BIN_DIR, redis=redis, rabbit=rabbit)
    s.start(controllers=2)
    yield s
    s.stop()


@pytest.fixture
def client(stack, tmp_path):
    """A logged-in admin client on the first controller."""
    c = ClientGantry(tmp_path, stack, stack.controllers[0])
    c("login", "admin", "--change-password", "--password-stdin",
      input=f"{stack.admin_password}\nadmin-password-1\n", check=0)
    return c


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)   # fixtures' teardown reads rep_call
    st = item.funcargs.get("stack") if hasattr(item, "funcargs") else None
    if rep.when == "call" and rep.failed and st is not None:
        for d in st.controllers + [st.tokend]:
            if d is not None:
                rep.sections.append((f"{d.name} log", d.tail(60)))


@pytest.fixture(params=["local", "client"])
def any_gantry(request, tmp_path):
    """The same scenario in local mode and in client mode against a running stack."""
    if request.param == "local":
        return Gantry(tmp_path)
    stack = request.getfixturevalue("stack")
    c = request.getfixturevalue("client")
    c.data = Path(stack.dir) / "server"
    return c
