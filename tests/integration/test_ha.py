"""High availability: controllers with [server] ha_enabled behind Debian's haproxy
(option httpchk GET /health/status). One holds the store's "controller" lease and
serves; the other answers 503 naming it. A SIGKILLed active controller is replaced
once its lease expires, a SIGTERMed one hands over at once, and the CLI tries the
hosts of [client] host in turn. Real servers throughout."""
import http.client
import json
import os
import signal
import socket
import time
import uuid

import pytest

from conftest import BIN_DIR, ROOT
from testenv.haproxy import HAProxy
from testenv.stack import GantryStack

TERMINAL = {"succeeded", "failed", "timed_out", "canceled", "lost"}


def request(port, method, path, body=None, token=None, key=None, timeout=10):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    h = {"Content-Type": "application/json"}
    if token:
        h["Authorization"] = f"Bearer {token}"
    if key:
        h["Idempotency-Key"] = key
    try:
        c.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
        r = c.getresponse()
        data = r.read()
    finally:
        c.close()
    try:
        return r.status, json.loads(data) if data else None
    except ValueError:
        return r.status, data.decode(errors="replace")


def roles(s):
    """{port: (status, body)} of each live controller's own /health/status."""
    out = {}
    for c in s.controllers:
        if c.alive():
            try:
                out[c.port] = request(c.port, "GET", "/health/status?exclude-services=true")
            except OSError:   # stopping: it no longer listens
                pass
    return out


def wait_for(fn, timeout=30, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"not within {timeout} s")


def active(s):
    for port, (st, _) in roles(s).items():
        if st == 200:
            return next(c for c in s.controllers if c.port == port)
    return None


@pytest.fixture
def ha(servers, tmp_path, scripts_repo):
    redis, rabbit = servers
    redis.wait_stable()
    cluster = f"ha{uuid.uuid4().hex[:8]}"
    s = GantryStack(str(tmp_path / "ha"), BIN_DIR, redis=redis, rabbit=rabbit,
                    env_extra={"GANTRY_SERVER_DISTRIBUTED_EXECUTION": "true",
                               "GANTRY_SERVER_HA_ENABLED": "true",
                               "GANTRY_APPLICATION_CLUSTER_ID": cluster})
    s.start(controllers=1)      # the first one is active ...
    s.start_controller()        # ... the second finds the lease taken
    lb = HAProxy(str(tmp_path / "lb"), [c.port for c in s.controllers])
    try:
        lb.start()
        s.lb = lb
        s.start_scheduler()
        s.start_runner()
        wait_for(lambda: request(lb.port, "GET", "/health/status")[0] == 200)
        st, b = request(lb.port, "POST", "/api/v1/password", {
            "username": "admin", "password": s.admin_password, "new_password": "admin-password-1"})
        assert st == 200, b
        st, b = request(lb.port, "POST", "/api/v1/login",
                        {"username": "admin", "password": "admin-password-1"})
        assert st == 200, b
        s.token = b["token"]
        repo = scripts_repo("mark.sh", 'echo "run $GANTRY_EXECUTION_ID"\n')
        assert request(lb.port, "POST", "/api/v1/repositories",
                       {"name": "scripts", "url": str(repo)}, token=s.token)[0] == 201
        st, b = request(lb.port, "POST", "/api/v1/services",
                        {"name": "ok", "type": "executable", "repository": "scripts",
                         "filename": "ok.sh"}, token=s.token)
        assert st == 201, b
        yield s
    finally:
        lb.stop()
        s.stop()


def run_through_lb(s, key=None, body=None):
    return request(s.lb.port, "POST", "/api/v1/services/ok/run", body or {"inputs": {}},
                   token=s.token, key=key)


def wait_terminal(s, ex_id, timeout=60):
    def done():
        st, ex = request(s.lb.port, "GET", f"/api/v1/executions/{ex_id}", token=s.token)
        return ex if st == 200 and ex["state"] in TERMINAL else None
    return wait_for(done, timeout=timeout, step=0.1)


def test_one_active_one_standby(ha):
    r = roles(ha)
    assert sorted(st for st, _ in r.values()) == [200, 503], r
    act = active(ha)
    standby_port = next(p for p, (st, _) in r.items() if st == 503)
    body = r[standby_port][1]
    assert body["status"] == "standby"
    assert body["active"] == f"{socket.gethostname()}:{act.port}", body
    # an API call that reaches the standby is refused, naming the active one, with no body
    # of its own run
    st, b = request(standby_port, "GET", "/api/v1/services", token=ha.token)
    assert st == 503 and b["error"]["code"] == "standby" and str(act.port) in b["error"]["message"]
    # through haproxy everything reaches the active one
    st, ex = run_through_lb(ha)
    assert st == 202, ex
    assert wait_terminal(ha, ex["id"])["state"] == "succeeded"


def test_sigkill_active_fails_over(ha):
    old = active(ha)
    st, ex = run_through_lb(ha, key="before-the-kill")
    assert st == 202
    old.kill()
    t0 = time.monotonic()
    wait_for(lambda: request(ha.lb.port, "GET", "/health/status")[0] == 200, timeout=30, step=0.02)
    failover = time.monotonic() - t0
    new = active(ha)
    assert new is not None and new.port != old.port
    # the login made on the dead controller still works (sessions live in Redis)
    st, _ = request(ha.lb.port, "GET", "/api/v1/services", token=ha.token)
    assert st == 200
    # the same key after the failover answers the same execution, and runs nothing new
    st, again = run_through_lb(ha, key="before-the-kill")
    assert st in (200, 202) and again["id"] == ex["id"], again
    st, other = run_through_lb(ha, key="before-the-kill", body={"inputs": {"x": 1}})
    assert st == 422, other
    assert wait_terminal(ha, ex["id"])["state"] == "succeeded"
    st, new_run = run_through_lb(ha)
    assert st == 202 and wait_terminal(ha, new_run["id"])["state"] == "succeeded"
    line = f"controller SIGKILL to first 200 through haproxy: {failover:.2f} s (lease ttl 2 s)"
    print(line)
    os.makedirs(ROOT / "build", exist_ok=True)
    with open(ROOT / "build" / "ha-failover.txt", "a") as f:
        f.write(line + "\n")


def test_sigterm_hands_over_without_waiting_for_the_lease(servers, tmp_path, scripts_repo):
    """With a 30 s lease, a standby that takes over within a few seconds can only have
    done so because the active one gave the lease up when told to stop."""
    redis, rabbit = servers
    redis.wait_stable()
    s = GantryStack(str(tmp_path / "ha"), BIN_DIR, redis=redis, rabbit=rabbit,
                    env_extra={"GANTRY_SERVER_DISTRIBUTED_EXECUTION": "true",
                               "GANTRY_SERVER_HA_ENABLED": "true",
                               "GANTRY_SERVER_HA_LEASE_TTL": "30s",
                               "GANTRY_APPLICATION_CLUSTER_ID": f"ha{uuid.uuid4().hex[:8]}"})
    try:
        s.start(controllers=1)
        s.start_controller()
        first = active(s)
        assert first is s.controllers[0]
        first.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        second = wait_for(lambda: active(s) if active(s) is not s.controllers[0] else None,
                          timeout=15)
        took = time.monotonic() - t0
        assert second is s.controllers[1]
        first.proc.wait(timeout=15)
        assert first.proc.returncode == 0
        with open(first.log_path, errors="replace") as f:
            assert "resigned: the lease is free" in f.read()
        print(f"SIGTERM to the standby serving: {took:.2f} s (lease ttl 30 s)")
    finally:
        s.stop()


def test_cli_tries_the_next_host(ha, tmp_path):
    """[client] host lists a port nothing listens on, the standby, then the active one:
    the CLI gets past the first two and reports which it skipped."""
    from conftest import ClientGantry
    act = active(ha)
    standby = next(c for c in ha.controllers if c is not act)
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        dead = sk.getsockname()[1]
    c = ClientGantry(tmp_path, ha, act)
    c.config.write_text(
        "[application]\nmode = client\nworking_dir = %s\n\n[client]\n"
        "host = 127.0.0.1:%d 127.0.0.1:%d 127.0.0.1:%d\nuse_tls = false\n"
        % (c.work, dead, standby.port, act.port))
    p = c("login", "admin", "--password-stdin", input="admin-password-1\n", check=0)
    assert "is a standby; trying the next host" in p.stderr, p.stderr
    p = c("get", "services", check=0)
    assert "ok" in p.stdout


def test_inspect_cluster_health_lists_every_member(ha, tmp_path):
    from conftest import ClientGantry
    act = active(ha)
    c = ClientGantry(tmp_path, ha, act)
    c("login", "admin", "--password-stdin", input="admin-password-1\n", check=0)
    h = c.json("inspect", "cluster", "health")
    roles_seen = sorted(m["status"] for m in h["controllers"])
    assert roles_seen == ["active", "standby"], h["controllers"]
    assert any(m["status"] == "active" and m["epoch"] >= 1 for m in h["schedulers"]), h["schedulers"]
    assert {k: v["state"] for k, v in h["dependencies"].items()} == {
        "store": "up", "broker": "up", "sessions": "up"}, h["dependencies"]
    assert [r["status"] for r in h["items"]] == ["up"]
    text = c("inspect", "cluster", "health", check=0).stdout
    assert "controllers:" in text and "schedulers:" in text and "runners:" in text
    # a controller that died shows as gone once it missed two renewals
    standby = next(x for x in ha.controllers if x is not act)
    standby.kill()
    def gone():
        h = c.json("inspect", "cluster", "health")
        return any(m["status"] == "gone" for m in h["controllers"])
    wait_for(gone, timeout=20, step=0.5)
