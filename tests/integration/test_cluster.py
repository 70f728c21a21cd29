"""Controllers and runners on different machines sharing an etcd store, and two clusters
on one etcd. The machines are network namespaces (scripts/testenv/netns.py):

    servers   198.18.0.1  etcd x3, RabbitMQ, Redis + 3 Sentinels, git daemon (the repos)
    control   198.18.0.2  gantry-tokend, gantry-controller, gantry-scheduler
    runner-1  198.18.0.3  gantry-runner (own config, working dir and copy of the key file)
    runner-2  198.18.0.4  gantry-runner

They reach each other only through one bridge; the tests talk to the controller and to
etcd from inside those namespaces too. Select them with `-m cluster`. Needs root."""
import base64
import hashlib
import http.client
import json
import os
import re
import shutil
import subprocess
import tempfile
import textwrap
import time

import pytest

from conftest import BIN_DIR, GANTRY, git
from testenv import netns
from testenv.common import free_port, wait_port
from testenv.etcd import EtcdCluster
from testenv.rabbitmq import RabbitMQ
from testenv.redis import RedisCluster
from testenv.stack import Daemon, GantryStack
from test_sandbox import sleeps, wait_for  # a run's files stay in its sandbox: watch its processes

pytestmark = pytest.mark.cluster

TERMINAL = {"succeeded", "failed", "timed_out", "canceled", "lost"}
WHY = netns.available()
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---------- the machines and the servers, once per module ----------

class Net:
    """The hosts, the servers in the servers host, and a git daemon serving the repos."""

    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="gantry-cluster-")
        os.chmod(self.tmp, 0o755)
        self.net = netns.Network(self.tmp)
        try:
            self._hosts()
        except BaseException:
            self.net.close()
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise

    def _hosts(self):
        self.servers = self.net.add_host("servers")
        self.control = self.net.add_host("control")
        self.runner_hosts = [self.net.add_host("runner-1"), self.net.add_host("runner-2")]
        s = self.servers
        self.etcd = EtcdCluster(os.path.join(s.dir, "etcd"), host=s.addr, netns=s.ns)
        self.redis = RedisCluster(os.path.join(s.dir, "redis"), host=s.addr, netns=s.ns)
        self.rabbit = RabbitMQ(os.path.join(s.dir, "rabbitmq"), host=s.addr, netns=s.ns)
        self.git_base = os.path.join(s.dir, "git")
        os.makedirs(self.git_base)
        self.git_port = free_port()

    def start(self):
        self.etcd.start()
        self.redis.start()
        self.rabbit.start()
        self.git = self.servers.proc("git-daemon", [
            "git", "daemon", "--reuseaddr", "--export-all", "--informative-errors",
            f"--base-path={self.git_base}", f"--listen={self.servers.addr}",
            f"--port={self.git_port}", self.git_base])
        wait_port(self.git_port, host=self.servers.addr, netns=self.servers.ns, what="git daemon")

    def close(self):
        # the servers' own stop() first (rabbitmq's tree, sentinels before data nodes),
        # then whatever else the hosts run, then the namespaces
        for server in (self.rabbit, self.redis, self.etcd):
            try:
                server.stop()
            except Exception as e:  # keep tearing down the rest
                print(f"stopping {server}: {e}")
        self.net.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def etcdctl(self, *args, timeout=10):
        """etcdctl in the servers host against the cluster; returns stdout."""
        argv = ["etcdctl", f"--endpoints={','.join(self.etcd.hosts())}", *args]
        r = self.servers.run(argv, capture_output=True, text=True, timeout=timeout + 5,
                             env={**os.environ, "ETCDCTL_API": "3"})
        assert r.returncode == 0, r.stderr
        return r.stdout

    def history(self, cluster, ex_id):
        """Every state the execution's document ever held in etcd, oldest first (etcd
        keeps each revision: nothing here depends on what Gantry reports)."""
        key = f"/gantry/{cluster}/d/executions/{ex_id}"
        # a watch from revision 1 replays the key's whole history, then waits: cut it off
        argv = ["timeout", "3", "etcdctl", f"--endpoints={','.join(self.etcd.hosts())}",
                "watch", "--rev=1", "-w", "json", key]
        r = self.servers.run(argv, capture_output=True, text=True, timeout=20,
                             env={**os.environ, "ETCDCTL_API": "3"})
        states = []
        for line in r.stdout.splitlines():
            if not line.startswith("{"):
                continue
            for ev in json.loads(line).get("Events") or []:
                kv = ev["kv"]
                if ev.get("type") == 1:   # DELETE
                    states.append("<deleted>")
                else:
                    states.append(json.loads(base64.b64decode(kv["value"]))["state"])
        assert states, f"no history for {key}: {r.stderr}"
        return states


@pytest.fixture(scope="module")
def net():
    if WHY:
        pytest.skip(f"SKIPPED: {WHY}")
    n = Net()
    try:
        n.start()
        yield n
    finally:
        n.close()


# ---------- one cluster: a stack on etcd with runners on other hosts ----------

def call_api(host, addr, port, method, path, body=None, token=None):
    """One HTTP request, sent from inside host (a netns.Host)."""
    def go():
        c = http.client.HTTPConnection(addr, port, timeout=30)
        h = {"Content-Type": "application/json"}
        if token:
            h["Authorization"] = f"Bearer {token}"
        c.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, json.loads(data) if data else None
    return host.call(go)


class Cluster:
    """A stack (tokend, a controller, the scheduler in the control host) of one cluster id,
    its runners, a logged-in admin token and a repository of scripts on the git daemon."""

    def __init__(self, net, cluster_id, env=None):
        self.net, self.id = net, cluster_id
        self.stack = GantryStack(os.path.join(net.control.dir, cluster_id), BIN_DIR,
                                 redis=net.redis, rabbit=net.rabbit,
                                 env_extra={"GANTRY_SERVER_DISTRIBUTED_EXECUTION": "true",
                                            "GANTRY_APPLICATION_CLUSTER_ID": cluster_id,
                                            **(env or {})},
                                 etcd_hosts=net.etcd.hosts(), control=net.control)
        self.repo = os.path.join(net.git_base, cluster_id)
        os.makedirs(self.repo)
        git(self.repo, "init", "-q", "-b", "main")
        self.accepted = []   # every execution a controller accepted

    def start(self, runners=(0,)):
        self.stack.start(controllers=1)
        self.stack.start_scheduler()
        for i in runners:
            self.start_runner(i)
        self.c = self.stack.controllers[0]
        st, _ = self.api("POST", "/api/v1/password", {"username": "admin",
                         "password": self.stack.admin_password, "new_password": "admin-password-1"})
        assert st == 200
        st, b = self.api("POST", "/api/v1/login", {"username": "admin", "password": "admin-password-1"})
        assert st == 200, b
        self.token = b["token"]
        return self

    def start_runner(self, i, capacity=2):
        return self.stack.start_runner(host=self.net.runner_hosts[i], capacity=capacity)

    def api(self, method, path, body=None):
        return call_api(self.net.control, self.c.addr, self.c.port, method, path, body,
                    getattr(self, "token", None))

    def add_service(self, name, body, **fields):
        path = os.path.join(self.repo, f"{name}.sh")
        with open(path, "w") as f:
            f.write("#!/bin/sh\n" + textwrap.dedent(body))
        os.chmod(path, 0o755)
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-q", "-m", f"add {name}")
        if self.api("GET", "/api/v1/repositories/scripts")[0] == 404:
            url = f"git://{self.net.servers.addr}:{self.net.git_port}/{self.id}"
            st, b = self.api("POST", "/api/v1/repositories", {"name": "scripts", "url": url})
            assert st == 201, b
        st, b = self.api("POST", "/api/v1/services", {"name": name, "type": "executable",
                         "repository": "scripts", "filename": f"{name}.sh", **fields})
        assert st == 201, b

    def run(self, name, **body):
        st, ex = self.api("POST", f"/api/v1/services/{name}/run", {"inputs": {}, **body})
        assert st == 202 and ex["state"] == "queued", (st, ex)
        self.accepted.append(ex["id"])
        return ex["id"]

    def get(self, ex_id):
        st, ex = self.api("GET", f"/api/v1/executions/{ex_id}")
        assert st == 200, ex
        return ex

    def wait(self, ex_id, states, timeout=90):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ex = self.get(ex_id)
            if ex["state"] in states:
                return ex
            time.sleep(0.1)
        raise AssertionError(f"{ex_id} still {ex['state']} after {timeout}s: {ex}")

    def runner_of(self, ex):
        """The runner daemon an execution names."""
        for r in self.stack.runners:
            if r.runner_id == ex["runner"]:
                return r
        raise AssertionError(f"{ex['runner']} is none of {[r.runner_id for r in self.stack.runners]}")

    def check_exactly_once(self):
        """Every accepted execution ended, once: its document's whole history in etcd has
        one terminal state, written last, and the API says the same."""
        for ex_id in self.accepted:
            states = self.net.history(self.id, ex_id)
            moves = [x for i, x in enumerate(states) if i == 0 or states[i - 1] != x]
            ended = [x for x in moves if x in TERMINAL]
            assert len(ended) == 1 and moves[-1] == ended[0], f"{ex_id}: {moves}"
            assert self.get(ex_id)["state"] == states[-1]
        st, page = self.api("GET", "/api/v1/executions?limit=1000")
        assert st == 200
        assert sorted(e["id"] for e in page["items"]) == sorted(self.accepted), page

    def logs(self):
        out = []
        for d in [self.stack.tokend, getattr(self.stack, "scheduler", None)] + \
                self.stack.controllers + getattr(self.stack, "runners", []):
            if d is not None:
                out.append(f"--- {d.name} ({d.log_path})\n{d.tail(60)}")
        return "\n".join(out)

    def stop(self):
        self.stack.stop()


@pytest.fixture
def cluster(net, request):
    made = []

    def make(cluster_id=None, runners=(0,), env=None):
        cid = cluster_id or f"t{os.getpid()}x{int(time.time() * 1000) % 10**8}"
        c = Cluster(net, cid, env)
        made.append(c)
        return c.start(runners)

    yield make
    failed = getattr(request.node, "rep_call", None)
    for c in made:
        if failed is not None and failed.failed:
            print(c.logs())
        c.stop()


# ---------- the tests ----------

def test_run_executes_on_a_runner_in_another_host_with_its_secret(cluster):
    c = cluster(runners=(0,))
    runner = c.stack.runners[0]
    # what the runner was given: its own dir and files only, none of the controllers'
    conf = open(runner.env["GANTRY_CONFIG"]).read()
    assert c.stack.dir not in conf and "etcd_hosts = 198.18.0.1:" in conf, conf
    assert not any(c.stack.dir in v for v in runner.env.values()), runner.env
    value = "s3cr3t-" + os.urandom(8).hex()
    st, b = c.api("POST", "/api/v1/secrets", {"name": "token", "value": value})
    assert st == 201, b
    c.add_service("show", """\
        echo "len=${#TOKEN}"
        printf %s "$TOKEN" | sha256sum | cut -d' ' -f1
        echo "$TOKEN"
        """, secrets=[{"name": "token", "type": "env", "target": "TOKEN"}])
    ex = c.wait(c.run("show"), TERMINAL)
    assert ex["state"] == "succeeded", ex
    digest = hashlib.sha256(value.encode()).hexdigest()
    assert ex["stdout"] == f"len={len(value)}\n{digest}\n***\n", ex["stdout"]
    assert ex["runner"] == runner.runner_id, (ex["runner"], runner.runner_id)
    # the runner fetched the repository (git://, from the servers host) into its own
    # working dir; the controllers' has no repository cache
    assert os.listdir(os.path.join(runner.host.dir, c.id, "runner-1", "repos"))
    assert not os.path.exists(os.path.join(c.stack.dir, "server", "repos"))
    assert value not in open(runner.log_path, errors="replace").read()
    c.check_exactly_once()


def test_cancel_reaches_a_runner_in_another_host(cluster):
    c = cluster(runners=(0,))
    c.add_service("long", "echo begin\nsleep 60.25\n")
    ex_id = c.run("long")
    c.wait(ex_id, {"running"})
    # "running" is stored before the child starts: cancel once it has printed
    assert wait_for(lambda: sleeps("60.25") == 1)
    t0 = time.monotonic()
    st, r = c.api("POST", f"/api/v1/executions/{ex_id}/cancel")
    assert st == 202, r
    done = c.wait(ex_id, TERMINAL, timeout=30)
    assert done["state"] == "canceled" and done["stdout"] == "begin\n", done
    assert time.monotonic() - t0 < 15
    assert wait_for(lambda: sleeps("60.25") == 0, 10)
    c.check_exactly_once()


def test_sigkilled_runner_work_is_retried_or_lost(cluster):
    c = cluster(runners=(0,))
    c.add_service("slow", "echo begin\nsleep 6\necho end\n", retries=1)
    c.add_service("fragile", "echo begin\nsleep 30\n", retries=0)
    a, b = c.run("slow"), c.run("fragile")
    victim = c.runner_of(c.wait(a, {"running"}))
    assert c.runner_of(c.wait(b, {"running"})) is victim   # capacity 2, one runner
    spare = c.start_runner(1)   # another host, for the retry
    victim.kill()
    fa = c.wait(a, TERMINAL, timeout=120)
    fb = c.wait(b, TERMINAL, timeout=120)
    assert fb["state"] == "lost" and "stopped heartbeating" in fb["error"], fb
    assert fa["state"] == "succeeded" and fa["attempt"] == 2, fa
    assert fa["runner"] == spare.runner_id and fa["stdout"] == "begin\nend\n", fa
    time.sleep(3)   # nothing changes afterwards
    c.check_exactly_once()


def test_partitioned_runner_is_fenced_out(cluster, net):
    """Its link goes down mid-run: the reaper ends the run as the policy says (no retries:
    lost); when the link is back, the runner's late result is refused (fenced), it says so
    and exits; the execution keeps the reaper's state."""
    c = cluster(runners=(0,))
    # the run ends about 1 s into the cut, before the runner can tell that its lease is
    # gone (two heartbeats): it holds a result it cannot store
    c.add_service("short", "echo begin\nsleep 1.125\necho end\n", retries=0)
    ex_id = c.run("short")
    ex = c.wait(ex_id, {"running"})
    runner = c.runner_of(ex)
    assert wait_for(lambda: sleeps("1.125") == 1)
    net.net.cut("runner-1")
    t0 = time.monotonic()
    try:
        lost = c.wait(ex_id, TERMINAL, timeout=60)
        reaped_after = time.monotonic() - t0
        assert lost["state"] == "lost" and "stopped heartbeating" in lost["error"], lost
        # let the runner try to store its result against the cut link for a while
        time.sleep(6)
    finally:
        net.net.mend("runner-1")
    try:
        runner.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the fenced runner is still up:\n{runner.tail()}")
    log = open(runner.log_path, errors="replace").read()
    assert runner.proc.returncode == 1, log
    assert "fenced out" in log, log
    # its late result reached etcd once the link was back, and was refused there
    assert re.search(rf"execution {ex_id} attempt 1: recording .* as succeeded: .*"
                     rf"(conflict|lease|fenc)", log), log
    assert c.get(ex_id)["state"] == "lost"
    c.check_exactly_once()
    print(f"\nreaped {reaped_after:.1f}s after the cut; runner exited "
          f"{time.monotonic() - t0:.1f}s after the cut; its log:\n{log}")
    print(open(c.stack.scheduler.log_path).read())


def test_partitioned_runner_stops_its_run_before_the_retry_starts(cluster, net):
    """With retries, the reaper queues the next attempt on another runner once the cut
    runner's lease expired: by then the cut runner must have killed its own attempt, so
    two attempts never run at once, even though it cannot hear anyone."""
    c = cluster(runners=())
    # capacity 1: its one prefetch slot holds attempt 1, so the broker (which cannot tell
    # that the link is cut) hands attempt 2 to the other runner, not into the cut
    c.start_runner(0, capacity=1)
    c.add_service("hold", "echo begin\nsleep 30.5\n", retries=1)
    ex_id = c.run("hold")
    first = c.runner_of(c.wait(ex_id, {"running"}))
    assert wait_for(lambda: sleeps("30.5") == 1)
    spare = c.start_runner(1)
    net.net.cut("runner-1")
    try:
        # sample until attempt 2 has run for a while; the link stays cut all along
        most, seen, second = 0, [], None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            n = sleeps("30.5")
            most = max(most, n)
            seen.append(n)
            ex = c.get(ex_id)
            if second is None and ex["attempt"] == 2 and ex["state"] == "running":
                second = time.monotonic()
            if second is not None and time.monotonic() - second > 8:
                break
            time.sleep(0.05)
        assert ex["attempt"] == 2 and ex["state"] == "running", ex
        assert ex["runner"] == spare.runner_id, ex
        assert sleeps("30.5") == 1
        assert most == 1, f"two attempts ran at once: live `sleep 30.5` counts {seen}"
    finally:
        net.net.mend("runner-1")
    first.proc.wait(timeout=60)
    print("\n" + open(first.log_path).read() + open(c.stack.scheduler.log_path).read() + open(spare.log_path).read())
    assert "fenced out" in open(first.log_path).read()
    st, r = c.api("POST", f"/api/v1/executions/{ex_id}/cancel")
    assert st == 202, r
    assert c.wait(ex_id, TERMINAL, timeout=30)["state"] == "canceled"
    c.check_exactly_once()


def test_two_clusters_on_one_etcd_do_not_see_each_other(cluster, net, tmp_path):
    a = cluster("a", runners=(0,))
    b = cluster("b", runners=(1,))
    a.add_service("hello", "echo hello from a\n")
    st, _ = a.api("POST", "/api/v1/secrets", {"name": "only-a", "value": "v" * 12})
    assert st == 201
    ex_id = a.run("hello")
    assert a.wait(ex_id, TERMINAL)["state"] == "succeeded"
    # lists, gets by name or id and runs: b sees nothing of a
    for kind in ("repositories", "services", "secrets", "executions"):
        st, page = b.api("GET", f"/api/v1/{kind}")
        assert st == 200 and page["items"] == [], (kind, page)
        st, page = a.api("GET", f"/api/v1/{kind}")
        assert st == 200 and len(page["items"]) == 1, (kind, page)
    assert b.api("GET", "/api/v1/services/hello")[0] == 404
    assert b.api("GET", "/api/v1/secrets/only-a")[0] == 404
    assert b.api("GET", f"/api/v1/executions/{ex_id}")[0] == 404
    assert b.api("POST", "/api/v1/services/hello/run", {"inputs": {}})[0] == 404
    # runners and their leases
    ra = {r["id"] for r in a.api("GET", "/api/v1/runners")[1]["items"]}
    rb = {r["id"] for r in b.api("GET", "/api/v1/runners")[1]["items"]}
    assert ra == {a.stack.runners[0].runner_id} and rb == {b.stack.runners[0].runner_id}, (ra, rb)
    leases = {k for k in net.etcdctl("get", "--prefix", "--keys-only", "/gantry/").split()
              if "/l/runner:" in k and k.startswith(("/gantry/a/", "/gantry/b/"))}
    assert leases == {f"/gantry/a/l/runner:{a.stack.runners[0].runner_id}",
                      f"/gantry/b/l/runner:{b.stack.runners[0].runner_id}"}, leases
    # b's own service of the same name runs b's code
    b.add_service("hello", "echo hello from b\n")
    eb = b.wait(b.run("hello"), TERMINAL)
    assert eb["state"] == "succeeded" and eb["stdout"] == "hello from b\n", eb
    assert eb["runner"] == b.stack.runners[0].runner_id
    assert a.get(ex_id)["stdout"] == "hello from a\n"
    a.check_exactly_once()
    b.check_exactly_once()

    # the CLI in local mode, from the control host, sees the same split
    def cli(cid, *args, check=0):
        conf = tmp_path / f"{cid}.conf"
        conf.write_text(textwrap.dedent(f"""\
            [application]
            mode = local
            cluster_id = {cid}
            working_dir = {tmp_path / ("work-" + cid)}
            [store]
            backend = etcd
            etcd_hosts = {' '.join(net.etcd.hosts())}
            etcd_use_tls = false
            [secrets]
            encrypt_key_file = {(a if cid == 'a' else b).stack.key_file}
            [runner]
            python = /usr/bin/python3
            pip_no_index = true
            """))
        env = {k: v for k, v in os.environ.items() if not k.startswith("GANTRY_")}
        env.update(GANTRY_CONFIG=str(conf), HOME=str(tmp_path))
        p = net.control.run([GANTRY, *args, "-o", "json"], capture_output=True, text=True,
                            env=env, timeout=60)
        assert p.returncode == check, (args, p.stdout, p.stderr)
        assert "Sanitizer" not in p.stderr, p.stderr
        return json.loads(p.stdout) if check == 0 else p
    assert [s["name"] for s in cli("a", "get", "services")["items"]] == ["hello"]
    assert [s["name"] for s in cli("a", "get", "secrets")["items"]] == ["only-a"]
    assert cli("b", "get", "secrets")["items"] == []
    assert {e["id"] for e in cli("b", "get", "executions")["items"]} == {eb["id"]}
    p = cli("b", "describe", "secret", "only-a", check=2)
    assert 'secret "only-a" not found' in p.stderr, p.stderr
    p = cli("b", "describe", "execution", ex_id, check=2)
    assert ex_id in p.stderr and "not found" in p.stderr, p.stderr
    # a local run in a (in-process, on the control host) lands in a only
    ran = cli("a", "run", "service", "hello")
    assert ran["stdout"] == "hello from a\n" and ran["state"] == "succeeded", ran
    assert {e["id"] for e in cli("a", "get", "executions")["items"]} == {ex_id, ran["id"]}
    assert {e["id"] for e in cli("b", "get", "executions")["items"]} == {eb["id"]}


def test_shipped_runner_config_works_with_addresses_and_credentials_only(cluster, net):
    """config/runner.conf, with only the cluster's addresses, credentials and paths put
    in: --check-config passes, and the runner (etcd over TLS with a client certificate,
    as the example has it) runs work."""
    c = cluster(runners=())
    host = net.runner_hosts[1]
    work = os.path.join(host.dir, c.id, "shipped")
    os.makedirs(work, mode=0o700)
    key = os.path.join(host.dir, c.id, "secrets.key")
    shutil.copyfile(c.stack.key_file, key)
    os.chmod(key, 0o400)
    tls = net.etcd.tls_dir
    user, password = c.stack.broker_users["runner"]
    subs = {
        "cluster_id": c.id, "working_dir": work,
        "etcd_hosts": " ".join(net.etcd.tls_hosts()),
        "etcd_ca_certificate_file": os.path.join(tls, "ca.pem"),
        "etcd_client_cert_auth": "true",
        "etcd_certificate_file": os.path.join(tls, "client.pem"),
        "etcd_private_key_file": os.path.join(tls, "client.key"),
        "encrypt_key_file": key,
        "hosts": net.rabbit.env()["GANTRY_TEST_AMQP"],
        "username": user, "password": password,
    }
    text = open(os.path.join(ROOT, "config", "runner.conf")).read()
    done = set()

    def sub(m):
        k = m.group(2)
        if k in subs:
            done.add(k)
            return f"{k} = {subs[k]}"
        return m.group(0)
    text = re.sub(r"^(#?)(\w+) = .*$", sub, text, flags=re.M)
    assert done == set(subs), f"runner.conf lacks {set(subs) - done}"
    conf = os.path.join(work, "gantry.conf")
    with open(conf, "w") as f:
        f.write(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANTRY_")}
    env["ASAN_OPTIONS"] = "detect_leaks=1"
    runner_bin = os.path.join(BIN_DIR, "gantry-runner")
    p = host.run([runner_bin, "--config", conf, "--check-config"], capture_output=True,
                 text=True, env=env, timeout=30)
    assert p.returncode == 0 and "configuration OK" in p.stdout, (p.stdout, p.stderr)
    # a wrong key path is caught by the check, naming it
    bad = text.replace(f"encrypt_key_file = {key}", f"encrypt_key_file = {key}.missing")
    with open(conf + ".bad", "w") as f:
        f.write(bad)
    p = host.run([runner_bin, "--config", conf + ".bad", "--check-config"], capture_output=True,
                 text=True, env=env, timeout=30)
    assert p.returncode == 2 and f"{key}.missing" in p.stderr, (p.stdout, p.stderr)
    # and it works: the example's pools include default
    d = Daemon("shipped-runner", [runner_bin, "--config", conf],
               os.path.join(work, "runner.log"), "gantry-runner ready", env, netns=host.ns)
    host.procs.append(d)
    c.add_service("hi", "echo hi from the shipped config\n")
    ex = c.wait(c.run("hi"), TERMINAL)
    assert ex["state"] == "succeeded" and ex["stdout"] == "hi from the shipped config\n", ex
    assert re.search(r"ready: (\S+),", open(d.log_path).read()).group(1) == ex["runner"]
    d.stop()
    assert d.proc.returncode == 0, d.tail()
    c.check_exactly_once()
