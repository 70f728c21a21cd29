#!/usr/bin/env python3
"""Runner benchmark (figures, not a test). Starts the stack with distributed execution
and one gantry-runner, pushes K trivial executions (/bin/true as an executable service)
through controller -> RabbitMQ -> runner -> result stored, and prints executions/s and
p50/p99 submit-to-result latency, beside two baselines measured in the same run on the
same RabbitMQ: the raw posix_spawn rate of /bin/true, and Celery running /bin/true.

  bench/runner.py [-n K] [--capacity C] [--bin BUILD_DIR]

Every Gantry run fetches its repository (git fetch into a cache, then a checkout of the
commit): that is part of what is measured, as it is part of every real run.
"""
import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from testenv.stack import GantryStack  # noqa: E402


def build_bench(bin_dir):
    """Builds the daemons and the baselines into bin_dir (make is incremental), installing
    the Debian packages first, so that a benchmark runs on a fresh clone."""
    subprocess.run(["make", "-C", ROOT, "--no-print-directory", "deps"], check=True)
    subprocess.run(["make", "-C", ROOT, "--no-print-directory", f"BUILD={os.path.abspath(bin_dir)}",
                    "bench-bins"], check=True)


def call(port, method, path, body=None, token=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    h = {"Content-Type": "application/json"}
    if token:
        h["Authorization"] = f"Bearer {token}"
    c.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
    r = c.getresponse()
    data = json.loads(r.read() or b"null")
    c.close()
    return r.status, data


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def ms(iso):
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-n", type=int, default=500, help="executions (default 500)")
    ap.add_argument("--capacity", type=int, default=2, help="the runner's capacity (default 2)")
    ap.add_argument("--bin", default=os.path.join(ROOT, "build"))
    a = ap.parse_args()
    build_bench(a.bin)
    tmp = tempfile.mkdtemp(prefix="gantry-bench-runner-")
    stack = GantryStack(tmp, a.bin, env_extra={"GANTRY_SERVER_DISTRIBUTED_EXECUTION": "true"})
    try:
        stack.start(controllers=0)
        ctl = stack.start_controller()
        stack.start_runner(capacity=a.capacity, heartbeat="2s")
        port = ctl.port
        call(port, "POST", "/api/v1/password", {"username": "admin", "password": stack.admin_password,
                                                "new_password": "bench-password"})
        _, b = call(port, "POST", "/api/v1/login", {"username": "admin", "password": "bench-password"})
        token = b["token"]
        repo = os.path.join(tmp, "repo")
        os.makedirs(repo)
        open(os.path.join(repo, "x"), "w").write("unused: /bin/true is the interpreter\n")
        for cmd in (["init", "-q"], ["add", "x"], ["-c", "user.name=b", "-c", "user.email=b@b",
                                                    "commit", "-qm", "x"]):
            subprocess.run(["git", "-C", repo, *cmd], check=True)
        call(port, "POST", "/api/v1/repositories", {"name": "r", "url": repo}, token)
        st, b = call(port, "POST", "/api/v1/services", {"name": "true", "type": "executable",
                     "repository": "r", "filename": "x", "interpreter": "/bin/true"}, token)
        assert st == 201, b

        def wait_all(ids, timeout=600):
            pending = set(ids)
            done = {}
            deadline = time.monotonic() + timeout
            while pending and time.monotonic() < deadline:
                _, page = call(port, "GET", "/api/v1/executions?state=succeeded&limit=1000", token=token)
                cursor = page.get("next_cursor")
                items = page["items"]
                while cursor:
                    _, page = call(port, "GET", f"/api/v1/executions?state=succeeded&limit=1000&cursor={cursor}",
                                   token=token)
                    items += page["items"]
                    cursor = page.get("next_cursor")
                for it in items:
                    if it["id"] in pending:
                        pending.discard(it["id"])
                        done[it["id"]] = it
                time.sleep(0.2)
            if pending:
                raise SystemExit(f"bench: {len(pending)} executions did not succeed in time")
            return done

        # warm up: caches, connections
        warm = [call(port, "POST", "/api/v1/services/true/run", {}, token)[1]["id"] for _ in range(20)]
        wait_all(warm)
        submitted = {}
        t0 = time.time()
        lock = threading.Lock()

        def submit(k):
            for _ in range(k):
                t = time.time()
                st, ex = call(port, "POST", "/api/v1/services/true/run", {}, token)
                assert st == 202, ex
                with lock:
                    submitted[ex["id"]] = t * 1000

        threads = [threading.Thread(target=submit, args=(a.n // 4,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done = wait_all(list(submitted))
        end = max(ms(d["finished_at"]) for d in done.values())
        rate = len(done) / ((end - t0 * 1000) / 1000)
        lat = [ms(d["finished_at"]) - submitted[i] for i, d in done.items()]
        g = {"rate": rate, "p50": pct(lat, 50), "p99": pct(lat, 99), "n": len(done)}

        spawn = json.loads(subprocess.run([os.path.join(a.bin, "bench", "spawn_rate"), "-n", "5000",
                                           "-p", str(a.capacity), "--json"], capture_output=True,
                                          text=True, check=True).stdout)
        broker = f"amqp://guest:guest@{stack.rabbit.env()['GANTRY_TEST_AMQP']}//"
        cel = subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "bench", "celery_baseline.py"),
                              "--broker", broker, "-n", str(a.n), "-c", str(a.capacity), "--json"],
                             capture_output=True, text=True)
        celery = json.loads(cel.stdout) if cel.returncode == 0 else None

        print(f"{g['n']} executions of /bin/true, runner capacity {a.capacity}, submitted by 4 clients:")
        print(f"  gantry (controller -> RabbitMQ -> runner -> store): {g['rate']:8.1f} executions/s   "
              f"p50 {g['p50']:.0f} ms   p99 {g['p99']:.0f} ms")
        srate = spawn["spawns_per_second"]
        print(f"  raw posix_spawn of /bin/true ({a.capacity} parallel):     {srate:8.1f} spawns/s")
        if celery:
            crate = celery["executions_per_second"]
            print(f"  celery (same RabbitMQ, concurrency {a.capacity}):        {crate:8.1f} executions/s   "
                  f"p50 {celery['latency_ms']['p50']:.0f} ms   p99 {celery['latency_ms']['p99']:.0f} ms")
        print(f"  ratio gantry / posix_spawn: {g['rate'] / srate:.3f}")
        if celery:
            print(f"  ratio gantry / celery:      {g['rate'] / crate:.3f}")
        else:
            print(f"  celery baseline failed: {cel.stderr.strip()[-300:]}")
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
