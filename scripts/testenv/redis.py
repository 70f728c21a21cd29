"""A Redis master, one replica and three Sentinels on loopback ports of their own.

    cluster = RedisCluster(tmpdir)   # nothing runs yet
    cluster.start()                  # returns once the sentinels agree and can fail over
    os.environ.update(cluster.env()) # GANTRY_TEST_REDIS, GANTRY_TEST_SENTINELS, ..._MASTER_NAME
    old = cluster.kill_master()      # SIGKILL, by pid
    new = cluster.wait_for_failover(old)
    cluster.restart(old)             # comes back; the sentinels turn it into a replica
    cluster.stop()

Every node has its own directory under tmpdir holding its config file (sentinels
rewrite theirs), its data and its log (<name>.log). Processes are only ever stopped by
the pid this object started; a system redis-server on 6379 is never touched.

Nothing answers without a password (Redis 7 ACL users, as a production setup should
have them; see README "Security model"):
  data nodes  default            everything (the harness, tests that poke at Redis)
              gantry             the app: GET SET DEL PEXPIRE INCR SADD SMEMBERS SREM MULTI
                                 EXEC PING ROLE SELECT on keys gantry*
              sentinel-monitor   what Sentinel needs to monitor and fail over
              replica            replication (masteruser/masterauth on both nodes)
  sentinels   default            everything, also how sentinels talk to each other
              gantry-sentinel    the app: SENTINEL GET-MASTER-ADDR-BY-NAME, PING
The passwords are random per cluster; env() hands them to the tests.

Manual use:
    python3 scripts/testenv/redis.py [TMPDIR]            # prints the env, runs until ^C
    python3 scripts/testenv/redis.py [TMPDIR] -- CMD...  # runs CMD with the env, then stops
"""
import os
import secrets
import signal
import socket
import sys
import tempfile
import time

if __package__ in (None, ""):  # run as a script: make `testenv` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from testenv.common import Proc, free_port, netns_call, wait_port  # noqa: E402
else:
    from .common import Proc, free_port, netns_call, wait_port

MASTER_NAME = "gantry-test"
HOST = "127.0.0.1"
APP_USER = "gantry"
SENTINEL_APP_USER = "gantry-sentinel"
# What the app needs on the data nodes (common/sessions.c), and on the sentinels.
APP_COMMANDS = ("-@all +get +set +del +pexpire +incr +sadd +smembers +srem +multi +exec "
                "+discard +ping +role +select +hello +client|setname")
SENTINEL_APP_COMMANDS = "-@all +ping +hello +sentinel|get-master-addr-by-name"
# Sentinel's own needs on the data nodes (from the Redis Sentinel documentation).
MONITOR_COMMANDS = ("allchannels +multi +slaveof +replicaof +ping +exec +subscribe "
                    "+config|rewrite +role +publish +info +client|setname +client|kill "
                    "+script|kill")


class RedisError(Exception):
    """An error reply (-ERR ...) from a server."""


def _encode(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def _read_reply(f):
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed by the server")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return RedisError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        if len(data) != n + 2:
            raise ConnectionError("connection closed by the server")
        return data[:-2].decode(errors="replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read_reply(f) for _ in range(n)]
    raise ConnectionError(f"unexpected reply {line!r}")


def command(port, *args, timeout=2.0, host=HOST, auth=None):
    """Sends one command to host:port and returns its reply (str, int, None, list);
    raises RedisError for an error reply, OSError when the server does not answer.
    auth: a password (AUTH password) or (user, password), sent first."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        if auth is not None:
            creds = (auth,) if isinstance(auth, str) else tuple(auth)
            s.sendall(_encode(("AUTH",) + creds))
        s.sendall(_encode(args))
        with s.makefile("rb") as f:
            if auth is not None:
                first = _read_reply(f)
                if isinstance(first, RedisError):
                    raise first
            reply = _read_reply(f)
    if isinstance(reply, RedisError):
        raise reply
    return reply


def _pairs(flat):
    """SENTINEL MASTER / INFO-like flat [k, v, k, v...] list to a dict."""
    return dict(zip(flat[0::2], flat[1::2])) if flat else {}


def _wait(what, cond, timeout, interval=0.1):
    """Polls cond() until it returns something truthy; raises naming what."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            got = cond()
            if got:
                return got
        except (OSError, RedisError) as e:
            last = e
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}"
                       + (f" (last error: {last})" if last else ""))


class RedisCluster:
    """One master, one replica, three sentinels (quorum 2) monitoring MASTER_NAME."""

    def __init__(self, tmpdir, down_after_ms=1000, failover_timeout_ms=5000, host=HOST,
                 netns=None):
        """host: every node's address; netns: the network namespace they all run in
        (scripts/testenv/netns.py), None for this one."""
        self.tmpdir = os.path.abspath(str(tmpdir))
        self.host, self.netns = host, netns
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.master_name = MASTER_NAME
        self.servers = {}     # port -> Proc, the data nodes (master and replica)
        self.sentinels = {}   # port -> Proc
        self.initial_master_port = None
        # One admin password for the default user everywhere (data nodes and sentinels,
        # which also use it between themselves); one per role besides.
        self.admin_password = secrets.token_hex(16)
        self.app_password = secrets.token_hex(16)
        self.sentinel_app_password = secrets.token_hex(16)
        self.monitor_password = secrets.token_hex(16)
        self.replica_password = secrets.token_hex(16)

    def _info(self, port, section):
        text = self.cmd(port, "INFO", section)
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def cmd(self, port, *args, **kw):
        """command() as the admin (the default user, on data nodes and sentinels alike)."""
        kw.setdefault("host", self.host)
        return netns_call(self.netns, command, port, *args, auth=self.admin_password, **kw)

    # --- configuration -------------------------------------------------------------

    def _node_dir(self, name):
        d = os.path.join(self.tmpdir, name)
        os.makedirs(d, exist_ok=True)
        return d

    def _common_conf(self, port, d):
        return (f"port {port}\nbind {self.host}\nprotected-mode no\ndaemonize no\n"
                f"dir {d}\nlogfile \"\"\n")

    def _start_server(self, name, port, replicaof=None):
        d = self._node_dir(name)
        conf = os.path.join(d, "redis.conf")
        text = self._common_conf(port, d) + "save \"\"\nappendonly no\n"
        # Both data nodes alike: after a failover either may be the master.
        text += (f"user default on >{self.admin_password} ~* &* +@all\n"
                 f"user {APP_USER} on >{self.app_password} resetkeys ~gantry* resetchannels "
                 f"{APP_COMMANDS}\n"
                 f"user sentinel-monitor on >{self.monitor_password} {MONITOR_COMMANDS}\n"
                 f"user replica on >{self.replica_password} +psync +replconf +ping\n"
                 f"masteruser replica\nmasterauth {self.replica_password}\n")
        if replicaof:
            text += f"replicaof {self.host} {replicaof}\n"
        with open(conf, "w") as f:
            f.write(text)
        p = Proc(name, ["redis-server", conf], os.path.join(d, f"{name}.log"), cwd=d,
                 netns=self.netns)
        self.servers[port] = p
        wait_port(port, timeout=20, proc=p.proc, what=name, host=self.host, netns=self.netns)
        return p

    def _start_sentinel(self, name, port, master_port):
        d = self._node_dir(name)
        conf = os.path.join(d, "sentinel.conf")
        with open(conf, "w") as f:
            f.write(self._common_conf(port, d)
                    + f"user default on >{self.admin_password} ~* &* +@all\n"
                    + f"user {SENTINEL_APP_USER} on >{self.sentinel_app_password} "
                    + f"{SENTINEL_APP_COMMANDS}\n"
                    + f"sentinel sentinel-user default\n"
                    + f"sentinel sentinel-pass {self.admin_password}\n"
                    + f"sentinel monitor {MASTER_NAME} {self.host} {master_port} 2\n"
                    + f"sentinel auth-user {MASTER_NAME} sentinel-monitor\n"
                    + f"sentinel auth-pass {MASTER_NAME} {self.monitor_password}\n"
                    + f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}\n"
                    + f"sentinel failover-timeout {MASTER_NAME} {self.failover_timeout_ms}\n"
                    + f"sentinel parallel-syncs {MASTER_NAME} 1\n")
        p = Proc(name, ["redis-sentinel", conf], os.path.join(d, f"{name}.log"), cwd=d,
                 netns=self.netns)
        self.sentinels[port] = p
        wait_port(port, timeout=20, proc=p.proc, what=name, host=self.host, netns=self.netns)
        return p

    # --- life cycle ----------------------------------------------------------------

    def start(self, timeout=60):
        """Starts every node and returns once the replica is in sync and each sentinel
        knows the master, the replica and the two other sentinels."""
        os.makedirs(self.tmpdir, exist_ok=True)
        try:
            mport = free_port()
            self.initial_master_port = mport
            self._start_server("redis-master", mport)
            rport = free_port()
            self._start_server("redis-replica", rport, replicaof=mport)
            _wait("the replica to sync",
                  lambda: self._info(rport, "replication").get("master_link_status") == "up", timeout)
            for i in range(3):
                self._start_sentinel(f"sentinel-{i + 1}", free_port(), mport)
            self.wait_stable(timeout)
        except BaseException:
            print(self.logs(), file=sys.stderr)
            self.stop()
            raise
        return self

    def wait_stable(self, timeout=60):
        """Waits until every running sentinel names the same master, sees it up, with
        one replica in sync and the two other sentinels: a failover can then happen."""
        def ok():
            addrs = set()
            for port, p in self.sentinels.items():
                if not p.alive():
                    continue
                m = _pairs(self.cmd(port, "SENTINEL", "MASTER", MASTER_NAME))
                flags = m.get("flags", "")
                if (flags != "master" or m.get("num-slaves") != "1"
                        or int(m.get("num-other-sentinels", 0)) < 2):
                    return False
                replicas = [_pairs(r) for r in self.cmd(port, "SENTINEL", "REPLICAS", MASTER_NAME)]
                if not any(r.get("flags") == "slave" and r.get("master-link-status") == "ok"
                           for r in replicas):
                    return False
                addrs.add((m["ip"], m["port"]))
            if len(addrs) != 1:
                return False
            _, port = addrs.pop()
            return self.cmd(int(port), "ROLE")[0] == "master"
        _wait("the sentinels to agree on a master with a replica in sync", ok, timeout, 0.2)

    def stop(self):
        """Stops every process this object started (sentinels first, so none fails over
        while the data nodes go down), by pid."""
        for p in list(self.sentinels.values()) + list(self.servers.values()):
            p.stop()

    def logs(self, n=40):
        """The tail of every node's log, for a failing test."""
        out = []
        for port, p in list(self.servers.items()) + list(self.sentinels.items()):
            out.append(f"--- {p.name} ({self.host}:{port}, {p.log_path})\n{p.tail(n)}")
        return "\n".join(out)

    def tail(self, n=40):
        """Same as logs(), under the name the other test servers use."""
        return self.logs(n)

    # --- faults --------------------------------------------------------------------

    def master_addr(self):
        """"127.0.0.1:port" of the master, as the first answering sentinel reports it."""
        last = None
        for port, p in self.sentinels.items():
            if not p.alive():
                continue
            try:
                ip, mport = self.cmd(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
                return f"{ip}:{mport}"
            except (OSError, RedisError, TypeError, ValueError) as e:
                last = e
        raise RuntimeError(f"no sentinel answered for {MASTER_NAME}: {last}")

    def _proc_for(self, addr):
        port = int(str(addr).rsplit(":", 1)[-1])
        if port not in self.servers:
            raise KeyError(f"{addr} is not a data node of this cluster")
        return self.servers[port]

    def kill_master(self):
        """SIGKILLs the current master (by the pid this object started); returns its addr."""
        addr = self.master_addr()
        self._proc_for(addr).kill()
        return addr

    def restart(self, addr):
        """Starts a killed data node again with its original config; the sentinels turn
        a returning old master into a replica of the new one."""
        p = self._proc_for(addr)
        if not p.alive():
            p.start()
            wait_port(int(str(addr).rsplit(":", 1)[-1]), timeout=20, proc=p.proc, what=p.name,
                      host=self.host, netns=self.netns)
        return p

    def wait_for_failover(self, old_addr, timeout=30):
        """Waits until every running sentinel names a master other than old_addr and that
        node says it is a master; returns its "127.0.0.1:port"."""
        def moved():
            addrs = set()
            for port, p in self.sentinels.items():
                if p.alive():
                    ip, mport = self.cmd(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
                    addrs.add(f"{ip}:{mport}")
            if len(addrs) != 1 or old_addr in addrs:
                return None
            addr = addrs.pop()
            if self.cmd(int(addr.rsplit(":", 1)[1]), "ROLE")[0] != "master":
                return None
            return addr
        return _wait(f"the sentinels to promote a new master instead of {old_addr}", moved,
                     timeout, 0.2)

    def env(self):
        """The variables the unit and integration tests read: the addresses, the app's
        credentials (GANTRY_TEST_REDIS_USERNAME/_PASSWORD for the data nodes,
        GANTRY_TEST_SENTINEL_USERNAME/_PASSWORD for the sentinels) and the admin's
        (GANTRY_TEST_REDIS_ADMIN_PASSWORD: the default user on every node)."""
        return {
            "GANTRY_TEST_REDIS": self.master_addr(),
            "GANTRY_TEST_SENTINELS": ",".join(f"{self.host}:{p}" for p in self.sentinels),
            "GANTRY_TEST_REDIS_MASTER_NAME": MASTER_NAME,
            "GANTRY_TEST_REDIS_USERNAME": APP_USER,
            "GANTRY_TEST_REDIS_PASSWORD": self.app_password,
            "GANTRY_TEST_SENTINEL_USERNAME": SENTINEL_APP_USER,
            "GANTRY_TEST_SENTINEL_PASSWORD": self.sentinel_app_password,
            "GANTRY_TEST_REDIS_ADMIN_PASSWORD": self.admin_password,
        }

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def main(argv):
    cmd = None
    if "--" in argv:
        i = argv.index("--")
        argv, cmd = argv[:i], argv[i + 1:]
    tmp = argv[0] if argv else tempfile.mkdtemp(prefix="gantry-redis-")

    def on_term(signum, frame):  # the servers run in sessions of their own: stop them
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    cluster = RedisCluster(tmp)
    cluster.start()
    try:
        env = cluster.env()
        if cmd:
            import subprocess
            return subprocess.call(cmd, env={**os.environ, **env})
        for k, v in env.items():
            print(f"export {k}={v}")
        print(f"# nodes under {tmp}; ^C stops them", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
