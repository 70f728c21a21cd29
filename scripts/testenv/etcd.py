"""A three-member etcd cluster on loopback ports of its own.

    cluster = EtcdCluster(tmpdir)   # nothing runs yet; EtcdCluster(tmpdir, host=ADDR,
                                    # netns=NAME): every member on ADDR inside that
                                    # network namespace (scripts/testenv/netns.py)
    cluster.start()                 # returns once every member serves /health
    os.environ.update(cluster.env())  # GANTRY_TEST_ETCD=host:port,host:port,host:port
                                      # GANTRY_TEST_ETCD_TLS=localhost:port (member 0, TLS
                                      # with client certificates), GANTRY_TEST_ETCD_TLS_DIR
                                      # (ca.pem, client.pem, client.key, other-ca.pem)
    cluster.kill_leader()           # SIGKILL the member that leads now; returns its name
    cluster.start_member(name)      # starts a stopped member again on its data directory
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
import subprocess
import sys
import tempfile
import time
import urllib.request

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from testenv.common import Proc, free_port, netns_argv, netns_call  # noqa: E402
else:
    from .common import Proc, free_port, netns_argv, netns_call

HOST = "127.0.0.1"


def _get_json(req):
    with urllib.request.urlopen(req, timeout=2) as r:
        return json.loads(r.read())


class EtcdCluster:
    """auth=True: after start, etcd's auth is on, with a root user and a "gantry" user that
    may read and write /gantry/ (passwords in env()); tokens expire after token_ttl s."""

    def __init__(self, tmp, members=3, auth=False, token_ttl=300, host=HOST, netns=None):
        """host, netns: every member listens on host, inside that network namespace
        (scripts/testenv/netns.py; None: this one)."""
        self.tmp = tmp
        self.host, self.netns = host, netns
        self.names = [f"etcd{i}" for i in range(members)]
        self.client = {n: free_port() for n in self.names}
        self.peer = {n: free_port() for n in self.names}
        self.tls_port = free_port()   # member 0 also listens with TLS and client certificates
        self.tls_dir = os.path.join(tmp, "tls")
        self.procs = {}
        self.auth = auth
        self.token_ttl = token_ttl
        self.passwords = {}

    def _argv(self, n):
        h = self.host
        initial = ",".join(f"{m}=http://{h}:{self.peer[m]}" for m in self.names)
        return ["etcd", "--name", n, "--data-dir", os.path.join(self.tmp, n),
                "--listen-client-urls", f"http://{h}:{self.client[n]}" + (
                    f",https://{h}:{self.tls_port}" if n == self.names[0] and not self.auth else ""),
                "--advertise-client-urls", f"http://{h}:{self.client[n]}",
                "--listen-peer-urls", f"http://{h}:{self.peer[n]}",
                "--initial-advertise-peer-urls", f"http://{h}:{self.peer[n]}",
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", os.path.basename(self.tmp) or "gantry-test",
                "--heartbeat-interval", "50", "--election-timeout", "500",
                "--logger", "zap", "--log-level", "warn",
                "--auth-token-ttl", str(self.token_ttl)] + (
                    self._tls_args() if n == self.names[0] and not self.auth else [])

    def _tls_args(self):
        # etcd's JSON gateway dials its own TLS listener with the server certificate as a
        # client certificate, hence IP:<host> and clientAuth in the server's.
        d = self.tls_dir
        return ["--cert-file", os.path.join(d, "server.pem"),
                "--key-file", os.path.join(d, "server.key"),
                "--trusted-ca-file", os.path.join(d, "ca.pem"), "--client-cert-auth"]

    def _make_certs(self):
        d = self.tls_dir
        os.makedirs(d, exist_ok=True)

        def ossl(*args):
            subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

        key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        for ca in ("ca", "other-ca"):   # other-ca: an unrelated CA, for "wrong CA" tests
            ossl("req", "-x509", *key, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "3",
                 "-subj", f"/CN=gantry-test-etcd-{ca}")
        for name, ext in (("server", f"subjectAltName=DNS:localhost,IP:{self.host}\n"
                                     "extendedKeyUsage=serverAuth,clientAuth\n"),
                          ("client", "extendedKeyUsage=clientAuth\n")):
            with open(os.path.join(d, f"{name}.ext"), "w") as f:
                f.write(ext)
            ossl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN=gantry-test-etcd-{name}")
            ossl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "3", "-extfile", f"{name}.ext")

    def _etcdctl(self, *args, user=None):
        env = dict(os.environ, ETCDCTL_API="3")
        argv = ["etcdctl", "--endpoints", f"{self.host}:{self.client[self.names[0]]}"]
        if user:
            argv += ["--user", f"{user}:{self.passwords[user]}"]
        subprocess.run(netns_argv(self.netns, argv + list(args)), check=True, capture_output=True, env=env, timeout=30)

    def _enable_auth(self):
        import secrets
        for u in ("root", "gantry"):
            self.passwords[u] = secrets.token_hex(12)
            self._etcdctl("user", "add", u, "--new-user-password", self.passwords[u])
        self._etcdctl("role", "add", "gantry-rw")
        self._etcdctl("role", "grant-permission", "gantry-rw", "--prefix=true", "readwrite",
                      "/gantry/")
        self._etcdctl("user", "grant-role", "gantry", "gantry-rw")
        self._etcdctl("user", "grant-role", "root", "root")
        self._etcdctl("auth", "enable")

    def start(self, timeout=30.0):
        os.makedirs(self.tmp, exist_ok=True)
        self._make_certs()
        for n in self.names:
            self.procs[n] = Proc(n, self._argv(n), os.path.join(self.tmp, f"{n}.log"),
                                 netns=self.netns)
        deadline = time.time() + timeout
        for n in self.names:
            try:
                self._wait_healthy(n, deadline)
            except RuntimeError:
                self.stop()
                raise
        if self.auth:
            self._enable_auth()

    def _status(self, n):
        req = urllib.request.Request(f"http://{self.host}:{self.client[n]}/v3/maintenance/status",
                                     data=b"{}", method="POST")
        return netns_call(self.netns, _get_json, req)

    def leader(self, timeout=15.0):
        """The name of the member that leads now (after an election, the new one)."""
        deadline = time.time() + timeout
        while True:
            for n in self.names:
                if not self.procs[n].alive():
                    continue
                try:
                    st = self._status(n)
                except Exception:
                    continue
                if st.get("leader") and st.get("leader") == st.get("header", {}).get("member_id"):
                    return n
            if time.time() > deadline:
                raise RuntimeError(f"no etcd leader within {timeout} s")
            time.sleep(0.05)

    def kill_leader(self):
        n = self.leader()
        self.procs[n].kill()
        return n

    def start_member(self, n, timeout=30.0):
        if n not in self.procs:
            raise RuntimeError(f"no etcd member {n!r}")
        if self.procs[n].alive():
            return
        self.procs[n].start()
        self._wait_healthy(n, time.time() + timeout)

    def _wait_healthy(self, n, deadline):
        while True:
            if not self.procs[n].alive():
                raise RuntimeError(f"etcd member {n} exited:\n{self.procs[n].tail()}")
            try:
                url = f"http://{self.host}:{self.client[n]}/health"
                if netns_call(self.netns, _get_json, url).get("health") in ("true", True):
                    return
            except Exception:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"etcd member {n} not healthy in time")
            time.sleep(0.1)

    def control_commands(self):
        """For a control socket: kill-leader (answers the name), start NAME."""
        return {"kill-leader": self.kill_leader, "start": self.start_member}

    def hosts(self):
        """The members' client addresses, host:port, as [store] etcd_hosts wants them."""
        return [f"{self.host}:{self.client[n]}" for n in self.names]

    def tls_hosts(self):
        """Member 0's TLS listener (client certificates required), host:port."""
        return [f"{self.host}:{self.tls_port}"]

    def env(self):
        if self.auth:
            return {"GANTRY_TEST_ETCD_AUTH": ",".join(self.hosts()),
                    "GANTRY_TEST_ETCD_AUTH_PASSWORD": self.passwords["gantry"],
                    "GANTRY_TEST_ETCD_AUTH_TOKEN_TTL": str(self.token_ttl)}
        return {"GANTRY_TEST_ETCD": ",".join(self.hosts()),
                "GANTRY_TEST_ETCD_TLS": f"localhost:{self.tls_port}",
                "GANTRY_TEST_ETCD_TLS_DIR": self.tls_dir}

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
