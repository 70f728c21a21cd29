"""A three-member etcd cluster on loopback ports of its own.

    cluster = EtcdCluster(tmpdir)   # nothing runs yet
    cluster.start()                 # returns once every member serves /health
    os.environ.update(cluster.env())  # GANTRY_TEST_ETCD=host:port,host:port,host:port
    cluster.stop()                  # SIGTERM by pid, then SIGKILL

Each member has its own data directory and log (<name>.log) under tmpdir. Short
heartbeat/election timings make etcd's minimum lease TTL 1 s (it is 1.5 * election
timeout, rounded up to whole seconds), which the store's lease tests rely on.

Manual use:
    python3 scripts/testenv/etcd.py [TMPDIR]            # prints the env, runs until ^C
"""
import json
import os
import signal
import sys
import tempfile
import time
import urllib.request

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from testenv.common import Proc, free_port  # noqa: E402
else:
    from .common import Proc, free_port

HOST = "127.0.0.1"


class EtcdCluster:
    def __init__(self, tmp, members=3):
        self.tmp = tmp
        self.names = [f"etcd{i}" for i in range(members)]
        self.client = {n: free_port() for n in self.names}
        self.peer = {n: free_port() for n in self.names}
        self.procs = {}

    def _argv(self, n):
        initial = ",".join(f"{m}=http://{HOST}:{self.peer[m]}" for m in self.names)
        return ["etcd", "--name", n, "--data-dir", os.path.join(self.tmp, n),
                "--listen-client-urls", f"http://{HOST}:{self.client[n]}",
                "--advertise-client-urls", f"http://{HOST}:{self.client[n]}",
                "--listen-peer-urls", f"http://{HOST}:{self.peer[n]}",
                "--initial-advertise-peer-urls", f"http://{HOST}:{self.peer[n]}",
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", os.path.basename(self.tmp) or "gantry-test",
                "--heartbeat-interval", "50", "--election-timeout", "500",
                "--logger", "zap", "--log-level", "warn"]

    def start(self, timeout=30.0):
        os.makedirs(self.tmp, exist_ok=True)
        for n in self.names:
            self.procs[n] = Proc(n, self._argv(n), os.path.join(self.tmp, f"{n}.log"))
        deadline = time.time() + timeout
        for n in self.names:
            while True:
                if not self.procs[n].alive():
                    raise RuntimeError(f"etcd member {n} exited:\n{self.procs[n].tail()}")
                try:
                    url = f"http://{HOST}:{self.client[n]}/health"
                    with urllib.request.urlopen(url, timeout=2) as r:
                        if json.loads(r.read()).get("health") in ("true", True):
                            break
                except Exception:
                    pass
                if time.time() > deadline:
                    self.stop()
                    raise RuntimeError(f"etcd member {n} not healthy after {timeout} s")
                time.sleep(0.1)

    def env(self):
        return {"GANTRY_TEST_ETCD": ",".join(f"{HOST}:{self.client[n]}" for n in self.names)}

    def stop(self):
        for p in self.procs.values():
            p.stop()


if __name__ == "__main__":
    tmp = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="gantry-etcd-")
    # block them first, or sigwait never sees them and the members outlive this script
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    c = EtcdCluster(tmp)
    c.start()
    print(" ".join(f"{k}={v}" for k, v in c.env().items()), flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        c.stop()
