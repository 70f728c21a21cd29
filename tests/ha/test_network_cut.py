"""Fault 7 of the HA matrix: the active controller cut off the network. Hosts are network
namespaces (tests/integration/test_cluster.py's, whose fixtures this uses): the servers
(etcd x3, RabbitMQ, Redis + 3 Sentinels, a git daemon) in one, two control hosts with a
controller each ([server] ha_enabled), haproxy in a third, a runner in a fourth. Needs
root, as the rest of the matrix's hosts do."""
import http.client
import json
import os
import threading
import time

import pytest

from test_cluster import (BIN_DIR, ROOT, TERMINAL, Daemon, call_api, cluster, free_port,  # noqa: F401
                          net, wait_for)

from testenv.haproxy import HAProxy

pytestmark = pytest.mark.cluster


def _host(net, name):
    return net.net.hosts.get(name) or net.net.add_host(name)


def _daemon_in(stack, host, kind, ready, env):
    """A gantry daemon of stack's cluster in another host (a second control machine)."""
    name = f"{kind}-{host.name}"
    d = Daemon(name, [os.path.join(BIN_DIR, f"gantry-{kind}")], os.path.join(stack.dir, f"{name}.log"),
               ready, env, netns=host.ns)
    return d


def test_ha_active_controller_cut_off_the_network(cluster, net, tmp_path):
    """Fault 7 of the HA matrix: two controllers with ha_enabled on two control hosts,
    haproxy on a third; the active controller's host loses its link under a load of
    submissions (with idempotency keys, resent until accepted). The standby takes the
    lease once it expires and haproxy follows; when the link is back the old one is a
    standby; every accepted execution ends exactly once."""
    c = cluster(runners=(0,), env={"GANTRY_SERVER_HA_ENABLED": "true"})
    a = c.stack.controllers[0]
    h2, lbh = _host(net, "control-2"), _host(net, "lb")
    port_b = free_port()
    b = _daemon_in(c.stack, h2, "controller", "gantry-controller ready",
                   c.stack.env("controller", GANTRY_SERVER_PORT=str(port_b),
                               GANTRY_SERVER_LISTEN_ADDRESS=h2.addr))
    b.port, b.addr = port_b, h2.addr
    c.stack.controllers.append(b)
    sched_b = _daemon_in(c.stack, h2, "scheduler", "gantry-scheduler ready",
                         c.stack.env("scheduler", GANTRY_RUNNER_HEARTBEAT_INTERVAL="1s"))
    c.stack.schedulers.append(sched_b)
    lb = HAProxy(str(tmp_path / "lb"), [f"{a.addr}:{a.port}", f"{b.addr}:{b.port}"],
                 bind=lbh.addr, netns=lbh.ns).start()
    try:
        c.add_service("work", "sleep 0.3\n")

        def via_lb(method, path, body=None, key=None):
            def go():
                conn = http.client.HTTPConnection(lbh.addr, lb.port, timeout=10)
                hdr = {"Content-Type": "application/json", "Authorization": f"Bearer {c.token}"}
                if key:
                    hdr["Idempotency-Key"] = key
                try:
                    conn.request(method, path, body=json.dumps(body) if body is not None else None,
                                 headers=hdr)
                    r = conn.getresponse()
                    data = r.read()
                    return r.status, json.loads(data) if data else None
                except (OSError, ValueError) as e:
                    return 0, str(e)
                finally:
                    conn.close()
            return lbh.call(go)

        accepted, resent = [], [0]

        def load(n):
            for i in range(n):
                key = f"cut-{i}-{os.urandom(4).hex()}"
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    st, ex = via_lb("POST", "/api/v1/services/work/run", {"inputs": {}}, key)
                    if st in (200, 202):
                        if ex["id"] not in accepted:
                            accepted.append(ex["id"])
                        break
                    resent[0] += 1
                    time.sleep(0.1)
                time.sleep(0.1)

        t = threading.Thread(target=load, args=(30,), daemon=True)
        t.start()
        while len(accepted) < 8:
            time.sleep(0.05)
        net.net.cut("control")          # controller a, tokend, the first scheduler
        cut = time.monotonic()
        while via_lb("GET", "/health/status")[0] != 200:
            assert time.monotonic() - cut < 60, c.logs()
            time.sleep(0.02)
        back = time.monotonic() - cut
        t.join(timeout=180)
        assert not t.is_alive()
        net.net.mend("control")
        # the old active one finds its lease taken and becomes a standby
        def a_is_standby():
            try:
                st, body = call_api(net.control, a.addr, a.port, "GET",
                                    "/health/status?exclude-services=true")
            except OSError:
                return False
            return st == 503 and body.get("status") == "standby"
        assert wait_for(a_is_standby, 30)
        c.c = b                         # the active one, for what the test reads next
        c.accepted += accepted
        for ex_id in accepted:
            c.wait(ex_id, TERMINAL, timeout=120)
        c.check_exactly_once()
        line = (f"HA 7: active controller cut off the network: first 200 through haproxy after "
                f"{back:.2f} s; accepted {len(accepted)}, each ended once; client resends {resent[0]}")
        print(line)
        with open(os.path.join(ROOT, "build", "ha-matrix.txt"), "a") as f:
            f.write(line + "\n")
    finally:
        lb.stop()
