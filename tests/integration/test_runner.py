"""Runner mode: controllers dispatch through RabbitMQ to gantry-runners; the
scheduler reaps executions of runners that stop heartbeating. All real."""
import http.client
import json
import time

import pytest

from conftest import BIN_DIR
from testenv.stack import GantryStack

TERMINAL = {"succeeded", "failed", "timed_out", "canceled", "lost"}


def request(port, method, path, body=None, token=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    h = {"Content-Type": "application/json"}
    if token:
        h["Authorization"] = f"Bearer {token}"
    c.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, json.loads(data) if data else None


@pytest.fixture
def cluster(servers, tmp_path, scripts_repo):
    """Two controllers dispatching to two runners (capacity 2, heartbeat 1 s) and a
    scheduler; a logged-in admin token; a repository of scripts."""
    redis, rabbit = servers
    redis.wait_stable()
    s = GantryStack(str(tmp_path / "cluster"), BIN_DIR, redis=redis, rabbit=rabbit,
                    env_extra={"GANTRY_SERVER_DISTRIBUTED_EXECUTION": "true",
                               "GANTRY_APPLICATION_CLUSTER_ID": f"c{int(time.time() * 1000) % 10**8}"})
    s.start(controllers=2)
    try:
        s.start_scheduler()
        s.start_runner()
        s.start_runner()
        port = s.controllers[0].port
        st, _ = request(port, "POST", "/api/v1/password", {"username": "admin",
                        "password": s.admin_password, "new_password": "admin-password-1"})
        assert st == 200
        st, b = request(port, "POST", "/api/v1/login", {"username": "admin", "password": "admin-password-1"})
        s.token = b["token"]
        s.repo = scripts_repo
        yield s
    finally:
        s.stop()


def add_service(s, name, body, retries=0, timeout=0):
    repo = s.repo(f"{name}.sh", body)
    port = s.controllers[0].port
    if request(port, "GET", "/api/v1/repositories/scripts", token=s.token)[0] == 404:
        assert request(port, "POST", "/api/v1/repositories", {"name": "scripts", "url": str(repo)},
                       token=s.token)[0] == 201
    st, b = request(port, "POST", "/api/v1/services",
                    {"name": name, "type": "executable", "repository": "scripts",
                     "filename": f"{name}.sh", "retries": retries, "timeout": timeout}, token=s.token)
    assert st == 201, b


def run(s, name, inputs=None, controller=0):
    st, ex = request(s.controllers[controller].port, "POST", f"/api/v1/services/{name}/run",
                     {"inputs": inputs or {}}, token=s.token)
    assert st == 202 and ex["state"] == "queued", ex
    return ex["id"]


def get(s, ex_id):
    st, ex = request(s.controllers[0].port, "GET", f"/api/v1/executions/{ex_id}", token=s.token)
    assert st == 200, ex
    return ex


def wait(s, ex_id, states, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ex = get(s, ex_id)
        if ex["state"] in states:
            return ex
        time.sleep(0.1)
    raise AssertionError(f"{ex_id} still {ex['state']}: {ex}")


def test_many_executions_across_two_runners(cluster):
    add_service(cluster, "quick", "echo $2\n")
    ids = [run(cluster, "quick", {"n": i}, controller=i % 2) for i in range(40)]
    done = [wait(cluster, i, TERMINAL) for i in ids]
    assert all(d["state"] == "succeeded" for d in done), [d["state"] for d in done]
    assert [d["stdout"] for d in done] == [f"{i}\n" for i in range(40)]
    used = {d["runner"] for d in done}
    assert used == {r.runner_id for r in cluster.runners}, used


def test_sigkilled_runner_work_is_retried_or_lost(cluster):
    add_service(cluster, "slow", "echo begin\nsleep 6\necho end\n", retries=1)
    add_service(cluster, "fragile", "echo begin\nsleep 30\n", retries=0)
    a, b = run(cluster, "slow"), run(cluster, "fragile")
    ra = wait(cluster, a, {"running"})["runner"]
    rb = wait(cluster, b, {"running"})["runner"]
    victims = {ra, rb}
    for r in cluster.runners:
        if r.runner_id in victims:
            r.kill()
    # a replacement so a retry has somewhere to go
    cluster.start_runner()
    fa = wait(cluster, a, TERMINAL, timeout=120)
    fb = wait(cluster, b, TERMINAL, timeout=120)
    assert fb["state"] == "lost" and "stopped heartbeating" in fb["error"], fb
    assert fa["state"] == "succeeded" and fa["attempt"] == 2 and fa["runner"] not in victims, fa
    # exactly one terminal state: nothing changes afterwards
    time.sleep(3)
    assert get(cluster, a)["revision"] == fa["revision"]
    assert get(cluster, b)["revision"] == fb["revision"]


def test_cancel_reaches_the_runner(cluster, tmp_path):
    from test_sandbox import sleeps, wait_for  # a run's files stay in its sandbox
    add_service(cluster, "long", "echo begin\nsleep 60.375\n")
    ex_id = run(cluster, "long")
    wait(cluster, ex_id, {"running"})
    # "running" is stored before the child starts: cancel once it has printed
    assert wait_for(lambda: sleeps("60.375") == 1)
    st, r = request(cluster.controllers[1].port, "POST", f"/api/v1/executions/{ex_id}/cancel",
                    token=cluster.token)
    assert st == 202, r
    done = wait(cluster, ex_id, TERMINAL, timeout=30)
    assert done["state"] == "canceled" and done["stdout"] == "begin\n"


def test_poison_message_is_dead_lettered(cluster, servers):
    import amqp
    _, rabbit = servers
    queue = f"exec.{cluster.env()['GANTRY_APPLICATION_CLUSTER_ID']}.default"
    conn = amqp.Connection(rabbit.env()["GANTRY_TEST_AMQP"])
    conn.connect()
    ch = conn.channel()
    ch.basic_publish(amqp.Message("this is not json"), exchange="", routing_key=queue)
    ch.basic_publish(amqp.Message('{"id": 5}'), exchange="", routing_key=queue)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        _, count, _ = ch.queue_declare(queue + ".dead", passive=True)
        if count >= 2:
            break
        time.sleep(0.2)
    assert count == 2
    conn.close()
    logs = "".join(r.tail(200) for r in cluster.runners)
    assert "malformed message dead-lettered" in logs
    # nothing else stopped
    add_service(cluster, "after", "echo fine\n")
    assert wait(cluster, run(cluster, "after"), TERMINAL)["state"] == "succeeded"


def test_sigterm_drains(cluster):
    add_service(cluster, "three", "sleep 3\necho done\n")
    ex_id = run(cluster, "three")
    owner = wait(cluster, ex_id, {"running"})["runner"]
    victim = next(r for r in cluster.runners if r.runner_id == owner)
    t0 = time.monotonic()
    victim.stop(timeout=60)
    assert victim.proc.returncode == 0
    done = get(cluster, ex_id)
    assert done["state"] == "succeeded" and done["stdout"] == "done\n", done
    assert time.monotonic() - t0 < 30
    # the other runner keeps serving
    assert wait(cluster, run(cluster, "three"), TERMINAL)["state"] == "succeeded"


def test_broker_restart_mid_load(cluster, servers):
    _, rabbit = servers
    add_service(cluster, "half", "sleep 0.5\necho $2\n")
    ids = [run(cluster, "half", {"n": i}) for i in range(16)]
    wait(cluster, ids[0], {"running"} | TERMINAL)
    rabbit.restart()
    done = [wait(cluster, i, TERMINAL, timeout=180) for i in ids]
    assert all(d["state"] == "succeeded" for d in done), [(d["id"], d["state"], d.get("error")) for d in done]
    # and new work flows again with no manual step
    assert wait(cluster, run(cluster, "half", {"n": 99}), TERMINAL, timeout=120)["state"] == "succeeded"


def test_registry_views(cluster, tmp_path):
    from conftest import ClientGantry
    c = ClientGantry(tmp_path, cluster, cluster.controllers[1])
    c("login", "admin", "--password-stdin", input="admin-password-1\n", check=0)
    runners = c.json("get", "runners")["items"]
    assert {r["id"] for r in runners} == {r.runner_id for r in cluster.runners}
    assert all(r["status"] == "up" and r["capacity"] == 2 and r["pools"] == ["default"] for r in runners)
    health = c.json("inspect", "cluster", "health")
    assert health["status"] == "ok" and health["capacity"] == 4 and health["runners"] == {"up": 2}
    add_service(cluster, "idle", "sleep 20\n")
    ex_id = run(cluster, "idle")
    wait(cluster, ex_id, {"running"})
    act = c.json("inspect", "cluster", "activity")
    assert [e["id"] for e in act["running"]] == [ex_id] and "stdout" not in act["running"][0]
    table = c("inspect", "cluster", "health", check=0).stdout
    assert "capacity: 4" in table and "STATUS" in table
    assert "running (1)" in c("inspect", "cluster", "activity", check=0).stdout
    assert c.json("get", "runners")["items"][0]["in_flight"] in (0, 1)
    # a runner that stops cleanly (with nothing in flight) says so
    busy = get(cluster, ex_id)["runner"]
    idle = next(r for r in cluster.runners if r.runner_id != busy)
    idle.stop()
    assert idle.proc.returncode == 0
    statuses = {r["id"]: r["status"] for r in c.json("get", "runners")["items"]}
    assert statuses[idle.runner_id] == "stopped" and statuses[busy] == "up"
    request(cluster.controllers[0].port, "POST", f"/api/v1/executions/{ex_id}/cancel", token=cluster.token)


def test_drain_timeout_cancels_and_returns_the_rest(cluster):
    for r in list(cluster.runners):
        r.stop()
    quick = cluster.start_runner(capacity=1, drain="2s")
    add_service(cluster, "forever", "echo begin\nsleep 60\n")
    add_service(cluster, "next", "echo next\n")
    long_id = run(cluster, "forever")
    wait(cluster, long_id, {"running"})
    waiting = run(cluster, "next")  # prefetched by the busy runner, not started
    time.sleep(1)
    t0 = time.monotonic()
    quick.stop(timeout=60)
    assert quick.proc.returncode == 0 and time.monotonic() - t0 < 20
    assert get(cluster, long_id)["state"] == "canceled"
    assert get(cluster, waiting)["state"] == "queued"
    cluster.start_runner()
    assert wait(cluster, waiting, TERMINAL)["state"] == "succeeded"


def test_pools_route_work_to_their_runners(cluster):
    edge = cluster.start_runner(capacity=1, pools="edge")
    add_service(cluster, "near", "echo at-the-edge\n")
    port = cluster.controllers[0].port
    st, b = request(port, "PATCH", "/api/v1/services/near", {"pool": "edge"}, token=cluster.token)
    assert st == 200, b
    ids = [run(cluster, "near") for _ in range(5)]
    done = [wait(cluster, i, TERMINAL) for i in ids]
    assert all(d["state"] == "succeeded" and d["pool"] == "edge" for d in done)
    assert {d["runner"] for d in done} == {edge.runner_id}
    add_service(cluster, "anywhere", "echo default\n")
    d = wait(cluster, run(cluster, "anywhere"), TERMINAL)
    assert d["pool"] == "default" and d["runner"] != edge.runner_id
