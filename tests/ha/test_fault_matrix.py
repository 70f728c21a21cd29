"""The HA fault matrix: real servers (a three-member etcd cluster as the store, RabbitMQ,
Redis with a replica and three Sentinels), haproxy in front of two controllers with
[server] ha_enabled, two runners and two schedulers. Each fault is injected under a load
of submissions sent through haproxy, each with an Idempotency-Key that the client sends
again until it is accepted. The test then counts the terminal states of every accepted
execution: each must reach exactly one, none may run twice (every attempt reports to a
mark server over TCP: see tests/integration/test_exactly_once.py), and nothing is done
by hand. Each scenario appends a line to build/ha-matrix.txt."""
import collections
import os
import threading
import time
import uuid

import pytest

from conftest import BIN_DIR, ROOT
from test_exactly_once import Cluster, MarkServer, TERMINAL
from test_ha import request
from testenv.haproxy import HAProxy
from testenv.stack import GantryStack

REPORT = ROOT / "build" / "ha-matrix.txt"
HEARTBEAT_S = 1.0


class HACluster(Cluster):
    """As test_exactly_once.Cluster, with HA controllers behind haproxy, on etcd."""

    def __init__(self, servers, etcd, tmp_path):
        redis, rabbit = servers
        redis.wait_stable()
        self.redis, self.rabbit, self.etcd = redis, rabbit, etcd
        self.tmp = tmp_path
        self.marks = MarkServer()
        self.s = GantryStack(str(tmp_path / "cluster"), BIN_DIR, redis=redis, rabbit=rabbit,
                             env_extra={
                                 "GANTRY_SERVER_DISTRIBUTED_EXECUTION": "true",
                                 "GANTRY_SERVER_HA_ENABLED": "true",
                                 "GANTRY_APPLICATION_CLUSTER_ID": f"m{uuid.uuid4().hex[:10]}",
                                 "GANTRY_STORE_BACKEND": "etcd",
                                 "GANTRY_STORE_ETCD_HOSTS": etcd.env()["GANTRY_TEST_ETCD"].replace(",", " "),
                                 "GANTRY_STORE_ETCD_USE_TLS": "false",
                             })
        self.s.start(controllers=1)
        self.s.start_controller()
        self.lb = HAProxy(str(tmp_path / "lb"), [c.port for c in self.s.controllers]).start()
        self.s.start_scheduler()
        self.s.start_scheduler()
        self.s.start_runner()
        self.s.start_runner()
        self._login_and_repo()

    @property
    def port(self):
        return self.lb.port

    def _login_and_repo(self):
        from conftest import git
        deadline = time.monotonic() + 30
        while request(self.port, "GET", "/health/status")[0] != 200:
            assert time.monotonic() < deadline, "no active controller behind haproxy"
            time.sleep(0.1)
        st, b = request(self.port, "POST", "/api/v1/password", {
            "username": "admin", "password": self.s.admin_password, "new_password": "admin-password-1"})
        assert st == 200, b
        st, b = request(self.port, "POST", "/api/v1/login",
                        {"username": "admin", "password": "admin-password-1"})
        assert st == 200, b
        self.token = b["token"]
        self.repo = self.tmp / "repo"
        self.repo.mkdir()
        git(self.repo, "init", "-q", "-b", "main")
        self.add_script("noop.sh", "true\n")
        st, b = request(self.port, "POST", "/api/v1/repositories",
                        {"name": "scripts", "url": str(self.repo)}, token=self.token)
        assert st == 201, b

    def active_controller(self):
        for c in self.s.controllers:
            if c.alive():
                try:
                    if request(c.port, "GET", "/health/status?exclude-services=true", timeout=2)[0] == 200:
                        return c
                except OSError:
                    pass
        return None

    def logs(self):
        out = ""
        for d in [*self.s.runners, *self.s.schedulers, *self.s.controllers]:
            out += f"--- {d.name}\n{d.tail(30)}"
        return out

    def stop(self):
        self.lb.stop()
        super().stop()


class Load:
    """Submits `total` runs through haproxy, one every `every` s, each with its own
    Idempotency-Key, sent again (same key) until the cluster accepts it: a client that
    lost its answer to a failover retries, as the CLI does."""

    def __init__(self, c, service, total, every=0.1):
        self.c, self.service, self.total, self.every = c, service, total, every
        self.ids = []
        self.retries = 0
        self.errors = collections.Counter()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        for i in range(self.total):
            key = f"load-{i}-{uuid.uuid4().hex[:8]}"
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                try:
                    st, ex = request(self.c.port, "POST", f"/api/v1/services/{self.service}/run",
                                     {"inputs": {}}, token=self.c.token, key=key, timeout=10)
                except OSError as e:
                    st, ex = 0, str(e)
                if st in (200, 202):
                    with self.lock:
                        if ex["id"] not in self.ids:
                            self.ids.append(ex["id"])
                    break
                with self.lock:
                    self.retries += 1
                    self.errors[st] += 1
                time.sleep(0.1)
            time.sleep(self.every)

    def start(self):
        self.thread.start()
        return self

    def wait_accepted(self, n, timeout=60):
        deadline = time.monotonic() + timeout
        while len(self.ids) < n and time.monotonic() < deadline:
            time.sleep(0.05)

    def join(self):
        self.thread.join(timeout=300)
        assert not self.thread.is_alive(), "the load did not finish"
        return list(self.ids)


def report(line):
    print(line)
    REPORT.parent.mkdir(exist_ok=True)
    with open(REPORT, "a") as f:
        f.write(line + "\n")


@pytest.fixture
def ha(servers, etcd, tmp_path):
    c = HACluster(servers, etcd, tmp_path)
    try:
        yield c
    finally:
        if c.rabbit.proc is None:
            c.rabbit.start()
        c.stop()


def wait_running(c, ids, n, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        docs = [c.get(i) for i in list(ids)]
        running = [d for d in docs if d["state"] == "running"]
        if len(running) >= n:
            return running
        time.sleep(0.1)
    raise AssertionError(f"fewer than {n} running within {timeout} s")


def test_1_sigkill_active_controller(ha):
    c = ha
    c.marked("work", "sleep 0.3")
    t0 = time.monotonic()
    load = Load(c, "work", 40).start()
    load.wait_accepted(10)
    victim = c.active_controller()
    victim.kill()
    killed = time.monotonic()
    while request(c.port, "GET", "/health/status")[0] != 200:
        assert time.monotonic() - killed < 60, c.logs()
        time.sleep(0.02)
    back = time.monotonic() - killed
    ids = load.join()
    docs = c.settle("HA 1: SIGKILL the active controller", ids, t0)
    assert all(d["state"] == "succeeded" for d in docs.values())
    report(f"HA 1: active controller SIGKILL to the first 200 through haproxy: {back:.2f} s "
           f"(goal 3 s); client resends {load.retries}")


def test_2_sigkill_runner_mid_runs(ha):
    c = ha
    c.marked("long", "sleep 3")      # retries 0: a run that dies with its runner is lost
    t0 = time.monotonic()
    load = Load(c, "long", 12, every=0.05).start()
    load.wait_accepted(6)
    running = wait_running(c, load.ids, 3)
    victim = next(d for d in c.s.runners if d.runner_id in {r["runner"] for r in running})
    theirs = [r["id"] for r in running if r["runner"] == victim.runner_id]
    victim.kill()
    killed = time.monotonic()
    while not all(c.get(i)["state"] in TERMINAL for i in theirs):
        assert time.monotonic() - killed < 60, c.logs()
        time.sleep(0.05)
    resolved = time.monotonic() - killed
    ids = load.join()
    docs = c.settle("HA 2: SIGKILL a runner in the middle of runs", ids, t0)
    assert all(docs[i]["state"] == "lost" for i in theirs), [docs[i]["state"] for i in theirs]
    report(f"HA 2: dead runner's work resolved {resolved:.2f} s after its SIGKILL "
           f"({resolved / HEARTBEAT_S:.1f} heartbeat intervals of {HEARTBEAT_S:.0f} s; goal 3)")


def test_3_sigkill_active_scheduler(ha):
    """The active scheduler dies, then a runner does: the other scheduler, now active,
    must reap the runner's work."""
    c = ha
    c.marked("long", "sleep 3")
    t0 = time.monotonic()
    load = Load(c, "long", 10, every=0.05).start()
    load.wait_accepted(4)
    health = request(c.port, "GET", "/api/v1/cluster/health", token=c.token)[1]
    act = next(m["node"] for m in health["schedulers"] if m["status"] == "active")
    victim = next(d for d in c.s.schedulers if act.endswith(f"/{d.pid}"))
    victim.kill()
    running = wait_running(c, load.ids, 2)
    runner = next(d for d in c.s.runners if d.runner_id in {r["runner"] for r in running})
    runner.kill()
    ids = load.join()
    c.settle("HA 3: SIGKILL the active scheduler (then a runner)", ids, t0)


def under_load(c, scenario, fault):
    """40 short runs through haproxy; fault() once 10 are accepted; every one must then
    succeed, once. fault may return a function that undoes it after the load."""
    c.marked("work", "sleep 0.3")
    t0 = time.monotonic()
    load = Load(c, "work", 40).start()
    load.wait_accepted(10)
    undo = fault()
    try:
        ids = load.join()
    finally:
        if undo:
            undo()
    docs = c.settle(scenario, ids, t0)
    assert all(d["state"] == "succeeded" for d in docs.values()), collections.Counter(
        d["state"] for d in docs.values())
    return load


def test_4_sigkill_etcd_leader(ha):
    def kill():
        leader = ha.etcd.kill_leader()
        return lambda: ha.etcd.start_member(leader)
    under_load(ha, "HA 4: SIGKILL the etcd leader", kill)


def test_5_restart_rabbitmq(ha):
    def restart():
        ha.rabbit.restart()   # stops and starts the node on the same ports and data
    under_load(ha, "HA 5: restart RabbitMQ", restart)


def test_6_redis_failover(ha):
    def fail_over():
        old = ha.redis.kill_master()
        ha.redis.wait_for_failover(old)
        return lambda: ha.redis.restart(old)
    under_load(ha, "HA 6: Redis failover (SIGKILL its master)", fail_over)
    # the login made before the failover still works
    assert request(ha.port, "GET", "/api/v1/services", token=ha.token)[0] == 200
