"""Every accepted execution ends in exactly one terminal state, and no two attempts of one
execution run at the same time: fault injection on real servers (RabbitMQ stopped, frozen
with SIGSTOP, runners and controllers SIGKILLed) under load, with the defaults users get.

Each scenario's service reports to a mark server in the test over TCP (runs are
sandboxed: they cannot write the test's files, but the network is theirs): it connects,
says "start <execution id> <GANTRY_ATTEMPT>", does its work, says "end", and holds the
connection for its whole life. The kernel closes it when the process dies, however it
dies, so an attempt that starts while another attempt of the same execution still holds
its connection is an overlap. Each test
counts the terminal states of every accepted execution and appends a line to
build/exactly-once.txt (scenario, accepted, histogram, stranded, duplicated, overlapping,
seconds until all were terminal)."""
import collections
import http.client
import json
import os
import signal
import threading
import time

import pytest

from conftest import BIN_DIR, ROOT, git
from test_runner import request
from testenv.stack import GantryStack

TERMINAL = {"succeeded", "failed", "timed_out", "canceled", "lost"}
REPORT = ROOT / "build" / "exactly-once.txt"


class MarkServer:
    """Counts attempts per execution and the overlaps between them (see the docstring)."""

    def __init__(self):
        import socket
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.starts = collections.Counter()   # (id, attempt) -> starts
        self.active = collections.Counter()   # id -> connections open now
        self.ended = collections.Counter()    # (id, attempt) -> ends
        self.overlaps = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        f = conn.makefile("r")
        ex_id = None
        try:
            for line in f:
                words = line.split()
                if words and words[0] == "start" and len(words) == 3 and ex_id is None:
                    ex_id, attempt = words[1], words[2]
                    with self.lock:
                        self.starts[(ex_id, attempt)] += 1
                        if self.active[ex_id] > 0:
                            self.overlaps.append(f"{ex_id} attempt {attempt}")
                        self.active[ex_id] += 1
                elif words == ["end"] and ex_id is not None:
                    with self.lock:
                        self.ended[(ex_id, attempt)] += 1
        except OSError:
            pass
        finally:
            if ex_id is not None:
                with self.lock:
                    self.active[ex_id] -= 1
            conn.close()

    def holding(self, ex_id):
        with self.lock:
            return self.active[ex_id] > 0

    def close(self):
        self.sock.close()


class Cluster:
    """One controller, two runners (capacity 2, heartbeat 1 s), the scheduler, a repository
    of marked scripts and an admin token."""

    def __init__(self, servers, tmp_path, controllers=1):
        redis, rabbit = servers
        redis.wait_stable()
        self.rabbit = rabbit
        self.tmp = tmp_path
        self.marks = MarkServer()
        self.s = GantryStack(str(tmp_path / "cluster"), BIN_DIR, redis=redis, rabbit=rabbit,
                             env_extra={"GANTRY_SERVER_DISTRIBUTED_EXECUTION": "true",
                                        "GANTRY_APPLICATION_CLUSTER_ID":
                                            f"x{int(time.time() * 1000) % 10**8}"})
        self.s.start(controllers=controllers)
        self.s.start_scheduler()
        self.s.start_runner()
        self.s.start_runner()
        port = self.port
        st, _ = request(port, "POST", "/api/v1/password", {"username": "admin",
                        "password": self.s.admin_password, "new_password": "admin-password-1"})
        assert st == 200
        st, b = request(port, "POST", "/api/v1/login", {"username": "admin",
                                                        "password": "admin-password-1"})
        self.token = b["token"]
        self.repo = tmp_path / "repo"
        self.repo.mkdir()
        git(self.repo, "init", "-q", "-b", "main")
        self.add_script("noop.sh", "true\n")
        st, b = request(port, "POST", "/api/v1/repositories", {"name": "scripts", "url": str(self.repo)},
                        token=self.token)
        assert st == 201, b

    @property
    def port(self):
        return self.s.controllers[0].port

    def add_script(self, name, body):
        p = self.repo / name
        p.write_text("#!/bin/sh\n" + body)
        p.chmod(0o755)
        git(self.repo, "add", name)
        git(self.repo, "commit", "-qm", name)

    def marked(self, name, work, retries=0):
        """A service whose every attempt reports its start and end to the mark server and
        holds its connection while it runs; work is a shell snippet."""
        p = self.repo / f"{name}.py"
        p.write_text(f"""\
import os, socket, subprocess, sys
s = socket.create_connection(("127.0.0.1", {self.marks.port}))
s.sendall(("start %s %s\\n" % (os.environ["GANTRY_EXECUTION_ID"], os.environ["GANTRY_ATTEMPT"])).encode())
rc = subprocess.run(["/bin/sh", "-c", {work!r}]).returncode
s.sendall(b"end\\n")
s.close()
sys.exit(rc)
""")
        git(self.repo, "add", p.name)
        git(self.repo, "commit", "-qm", name)
        st, b = request(self.port, "POST", "/api/v1/services",
                        {"name": name, "type": "executable", "repository": "scripts",
                         "filename": p.name, "interpreter": "/usr/bin/python3",
                         "retries": retries}, token=self.token)
        assert st == 201, b

    def submit(self, name, port=None):
        st, ex = request(port or self.port, "POST", f"/api/v1/services/{name}/run", {"inputs": {}},
                         token=self.token)
        assert st == 202, (st, ex)
        return ex["id"]

    def get(self, ex_id):
        st, ex = request(self.port, "GET", f"/api/v1/executions/{ex_id}", token=self.token)
        assert st == 200, ex
        return ex

    def all_executions(self):
        items, cursor = [], None
        while True:
            q = "limit=1000" + (f"&cursor={cursor}" if cursor else "")
            st, page = request(self.port, "GET", f"/api/v1/executions?{q}", token=self.token)
            assert st == 200, page
            items += page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return items

    def settle(self, scenario, ids, t0, timeout=300, allowed_attempts=1):
        """Waits until every execution in ids is terminal; reports and returns them."""
        deadline = time.monotonic() + timeout
        want = set(ids)
        while True:
            docs = {e["id"]: e for e in self.all_executions() if e["id"] in want}
            if all(d["state"] in TERMINAL for d in docs.values()) and len(docs) == len(want):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        took = time.monotonic() - t0
        hist = collections.Counter(d["state"] for d in docs.values())
        stranded = [i for i in want if i not in docs or docs[i]["state"] not in TERMINAL]
        with self.marks.lock:
            starts = collections.Counter({k: n for k, n in self.marks.starts.items() if k[0] in want})
            overlaps = [o for o in self.marks.overlaps if o.split()[0] in want]
        per_ex = collections.Counter(ex_id for ex_id, _ in starts)
        duplicated = sorted({ex_id for (ex_id, _), n in starts.items() if n > 1} |
                            {ex_id for ex_id, n in per_ex.items() if n > allowed_attempts})
        line = (f"{scenario}: accepted {len(want)}, terminal {dict(sorted(hist.items()))}, "
                f"stranded {len(stranded)}, duplicated {len(duplicated)}, "
                f"overlapping {len(overlaps)}, all terminal after {took:.1f} s")
        print(line)
        try:
            REPORT.parent.mkdir(exist_ok=True)
            with open(REPORT, "a") as f:
                f.write(line + "\n")
        except OSError:
            pass
        assert not stranded, (line, [docs.get(i) for i in stranded[:3]], self.logs())
        assert not duplicated, (line, duplicated[:5])
        assert not overlaps, (line, overlaps[:5])
        # exactly one terminal state: nothing moves afterwards
        revs = {i: docs[i]["revision"] for i in want}
        time.sleep(2)
        moved = [i for i in want if self.get(i)["revision"] != revs[i]]
        assert not moved, (line, moved[:5])
        return docs

    def logs(self):
        out = ""
        for d in [*self.s.runners, self.s.scheduler, *self.s.controllers]:
            out += f"--- {d.name}\n{d.tail(30)}"
        return out

    def stop(self):
        self.s.stop()
        self.marks.close()


@pytest.fixture
def cluster(servers, tmp_path):
    c = Cluster(servers, tmp_path)
    try:
        yield c
    finally:
        # whatever a scenario did to the broker, it is back for the next test
        if c.rabbit.proc is None:
            c.rabbit.start()
        c.stop()


def submit_many(c, name, n, spread_s=0.0):
    ids = []
    for _ in range(n):
        ids.append(c.submit(name))
        if spread_s:
            time.sleep(spread_s / n)
    return ids


def test_big_and_binary_output_end_once_on_runners(cluster):
    """3 MB of output (over the default 1 MiB cap) and bytes that are not UTF-8."""
    c = cluster
    c.marked("flood", "head -c 3000000 /dev/zero | tr '\\0' x\nhead -c 3000000 /dev/zero | tr '\\0' y >&2")
    c.marked("binary", "printf 'a\\377\\376b\\000c\\n'")
    t0 = time.monotonic()
    ids = [c.submit("flood") for _ in range(4)] + [c.submit("binary") for _ in range(4)]
    docs = c.settle("3 MB flood + binary output (runners)", ids, t0)
    for i in ids[:4]:
        full = c.get(i)
        assert full["state"] == "succeeded", full.get("error")
        assert full["stdout_truncated"] and full["stderr_truncated"]
        assert len(full["stdout"]) == 1 << 20 and set(full["stdout"]) == {"x"}
        assert len(full["stderr"]) == 1 << 20 and set(full["stderr"]) == {"y"}
    for i in ids[4:]:
        full = c.get(i)
        assert full["state"] == "succeeded", full
        assert full["stdout"] == "a\ufffd\ufffdb\ufffdc\n"
    assert all(d["state"] == "succeeded" for d in docs.values())
    # a cancel of an ended execution changes nothing
    st, b = request(c.port, "POST", f"/api/v1/executions/{ids[0]}/cancel", token=c.token)
    assert st == 409, b


def test_broker_down_60s_under_load(cluster):
    """RabbitMQ stopped for 60 s while executions keep coming: all accepted ones end."""
    c = cluster
    c.marked("work", "sleep 0.2")
    t0 = time.monotonic()
    ids = submit_many(c, "work", 20)
    c.rabbit.stop_node()
    down = time.monotonic()
    during = []
    while time.monotonic() - down < 60:
        during.append(c.submit("work"))
        time.sleep(2)
    # every process rode it out and says it waits
    for d in [*c.s.runners, c.s.scheduler, *c.s.controllers]:
        assert d.alive(), (d.name, d.tail(40))
    st, h = request(c.port, "GET", "/health/status")
    assert st == 503, h
    c.rabbit.start()
    ids += during
    ids += submit_many(c, "work", 20)
    docs = c.settle("RabbitMQ down 60 s under load", ids, t0)
    assert all(d["state"] == "succeeded" for d in docs.values()), collections.Counter(
        d["state"] for d in docs.values())


def test_runner_sigkilled_during_broker_outage(cluster):
    c = cluster
    c.marked("slowish", "sleep 3", retries=2)
    t0 = time.monotonic()
    ids = submit_many(c, "slowish", 8)
    deadline = time.monotonic() + 60
    while not any(c.get(i)["state"] == "running" for i in ids) and time.monotonic() < deadline:
        time.sleep(0.2)
    c.rabbit.stop_node()
    victim = c.s.runners[0]
    victim.kill()
    time.sleep(15)
    c.rabbit.start()
    c.s.start_runner()
    docs = c.settle("runner SIGKILLed during a 15 s broker outage (retries 2)", ids, t0,
                    allowed_attempts=3)
    assert all(d["state"] == "succeeded" for d in docs.values()), collections.Counter(
        d["state"] for d in docs.values())


def test_sigkilled_runner_retries_never_overlap(cluster):
    """retries = 2: the killed runner's scripts die with it, and attempt 2 starts only
    after its lease expired."""
    c = cluster
    c.marked("long", "sleep 4", retries=2)
    t0 = time.monotonic()
    ids = submit_many(c, "long", 8)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        running = [c.get(i) for i in ids]
        if sum(1 for r in running if r["state"] == "running") >= 3:
            break
        time.sleep(0.2)
    victim = next(d for d in c.s.runners if d.runner_id in {r["runner"] for r in running})
    theirs = [r["id"] for r in running if r["state"] == "running" and r["runner"] == victim.runner_id]
    victim.kill()
    # its scripts die with it: their connections close within a second or two, long
    # before the reaper may start attempt 2 (lease 3 heartbeats, then a grace)
    deadline = time.monotonic() + 2
    while any(c.marks.holding(i) for i in theirs) and time.monotonic() < deadline:
        time.sleep(0.05)
    held = [i for i in theirs if c.marks.holding(i)]
    assert not held, f"scripts of the SIGKILLed runner still run: {held}"
    c.s.start_runner()
    docs = c.settle("runner SIGKILLed mid-run (retries 2)", ids, t0, allowed_attempts=3)
    assert all(d["state"] == "succeeded" for d in docs.values()), collections.Counter(
        d["state"] for d in docs.values())
    assert theirs and all(docs[i]["attempt"] > 1 for i in theirs), [docs[i] for i in theirs]


def test_broker_frozen_longer_than_the_heartbeat_bound(cluster):
    """SIGSTOP on RabbitMQ: runners keep heartbeating (their own thread, in the store), so
    nothing is declared dead, retried or run twice; all ends once it thaws."""
    c = cluster
    c.marked("steady", "sleep 1", retries=2)
    t0 = time.monotonic()
    ids = submit_many(c, "steady", 10)
    time.sleep(1)
    from testenv.rabbitmq import _tree
    tree = [pid for pid, _ in _tree(c.rabbit.proc.pid)]
    for pid in tree:
        os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(10)  # 10 heartbeats, over three times the lease
        st, runners = request(c.port, "GET", "/api/v1/runners", token=c.token)
        assert st == 200
        assert all(r["status"] == "up" for r in runners["items"]), runners
    finally:
        for pid in tree:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    docs = c.settle("RabbitMQ frozen (SIGSTOP) for 10 s", ids, t0, allowed_attempts=1)
    assert all(d["state"] == "succeeded" and d["attempt"] == 1 for d in docs.values())


def test_controller_sigkilled_under_load(cluster):
    """The controller dies mid-load. Clients send an Idempotency-Key and send the request
    again (to the new controller) when the connection broke: every key ends up naming
    exactly one execution, every stored execution belongs to a key whose client got its
    answer, and all of them end."""
    c = cluster
    c.marked("quick", "sleep 0.1")
    by_key, errors = {}, []
    lock = threading.Lock()
    stop = threading.Event()

    def submit_keyed(key):
        while True:
            try:
                port = c.s.controllers[-1].port  # the newest controller
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request("POST", "/api/v1/services/quick/run", body=json.dumps({"inputs": {}}),
                             headers={"Content-Type": "application/json", "Idempotency-Key": key,
                                      "Authorization": f"Bearer {c.token}"})
                r = conn.getresponse()
                body = json.loads(r.read())
                conn.close()
                assert r.status in (200, 202), (r.status, body)
                return body["id"]
            except (OSError, http.client.HTTPException) as e:
                with lock:
                    errors.append(repr(e))
                time.sleep(0.2)

    def load(n):
        i = 0
        while not stop.is_set():
            key = f"client{n}-{i}"
            ex_id = submit_keyed(key)
            with lock:
                by_key[key] = ex_id
            i += 1

    t0 = time.monotonic()
    threads = [threading.Thread(target=load, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    time.sleep(3)
    c.s.controllers[0].kill()
    time.sleep(1)
    c.s.start_controller()
    time.sleep(3)
    stop.set()
    for t in threads:
        t.join()
    c.s.controllers.pop(0)
    stored = [e["id"] for e in c.all_executions()]
    assert len(set(by_key.values())) == len(by_key), "two keys named one execution"
    assert set(stored) == set(by_key.values()), (
        f"{len(set(stored) - set(by_key.values()))} stored executions no client knows of")
    c.settle("controller SIGKILLed under load (clients retry with an Idempotency-Key)", stored, t0)
