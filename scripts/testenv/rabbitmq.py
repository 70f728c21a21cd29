"""A real RabbitMQ node for tests: Debian's rabbitmq-server on loopback ports of its own,
with its data, logs, config and Erlang cookie under a temporary directory.

    mq = RabbitMQ(tmpdir); mq.start(); env.update(mq.env()); ...; mq.stop()

The node gets its own epmd (started here, on a port of its own, through ERL_EPMD_PORT),
so stopping it never touches an epmd or a system rabbitmq-server someone else runs.
Everything is stopped by pid / process group, never by name.

Gantry's broker users: gantry_permissions(cluster) is the permission table of one cluster
(README, "Security model"); mq.add_gantry_users(cluster) creates a user per role with it
(one `rabbitmqctl import_definitions`) and returns {role: (user, password)}. guest stays an
administrator, for tests that poke at the broker directly.

Run a command against a fresh node (with TLS too). It sees GANTRY_TEST_AMQP, the TLS
variables of RabbitMQ.env(), GANTRY_TEST_AMQP_RESTART_CMD (restarts the node and returns
when it is ready again) and GANTRY_TEST_AMQP_CONTROL_CMD (append "kill", "start" or
"restart"):

    python3 -m scripts.testenv.rabbitmq -- build/san/tests/unit/bus_test
"""
import base64
import hashlib
import json
import os
import pwd
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import Proc, control_client, free_port, netns_argv, serve_control, wait_port  # noqa: E402
else:
    from .common import Proc, control_client, free_port, netns_argv, serve_control, wait_port

SBIN = "/usr/lib/rabbitmq/bin"
START_TIMEOUT = 60.0

ROLES = ("controller", "scheduler", "runner", "tokend")


def gantry_permissions(cluster):
    """{role: (configure, write, read)}: the RabbitMQ permission regexes of each Gantry
    process of a cluster. Permissions are by resource name (queues and exchanges alike)
    and publishing needs write on the exchange, so each queue family has an exchange of
    its own (common/bus.h, "Routes") and nobody but tokend may write the default exchange
    (tokend answers through it: direct reply-to). What follows:
      - only the controllers may publish to gantry.<c>.auth (tokend's queue);
      - only controllers and the scheduler may publish work (gantry.<c>.exec);
      - runners publish results (gantry.<c>.results) and may bind their dead-letter
        queues; they cannot write any exec queue or exchange.
    Declaring a work queue with its dead-letter exchange gantry.<c>.dead needs write on
    that exchange and read on the queue, hence those grants."""
    c = re.escape(cluster)

    def rx(*alts):
        return "^(" + "|".join(alts) + ")$"

    return {
        "controller": (rx(rf"gantry\.{c}\.(exec|dead)", rf"exec\.{c}\..+"),
                       rx(rf"gantry\.{c}\.(auth|exec|dead)", rf"exec\.{c}\..+"),
                       rx(rf"gantry\.{c}\.(exec|dead)", rf"exec\.{c}\..+")),
        "scheduler": (rx(rf"gantry\.{c}\.(exec|results|dead)", rf"exec\.{c}\..+",
                         rf"results\.{c}(\.dead)?"),
                      rx(rf"gantry\.{c}\.(exec|dead)", rf"exec\.{c}\..+", rf"results\.{c}(\.dead)?"),
                      rx(rf"gantry\.{c}\.(exec|results|dead)", rf"exec\.{c}\..+",
                         rf"results\.{c}(\.dead)?")),
        "runner": (rx(rf"gantry\.{c}\.(results|dead)", rf"exec\.{c}\..+", rf"results\.{c}(\.dead)?"),
                   rx(rf"gantry\.{c}\.(results|dead)", rf"exec\.{c}\..+\.dead",
                      rf"results\.{c}(\.dead)?"),
                   rx(rf"gantry\.{c}\.(results|dead)", rf"exec\.{c}\..+", rf"results\.{c}(\.dead)?")),
        "tokend": (rx(rf"gantry\.{c}\.auth"),
                   rx(rf"gantry\.{c}\.auth", r"amq\.default"),
                   rx(rf"gantry\.{c}\.auth")),
    }


def _password_hash(password):
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt[4] + sha256(salt + password))."""
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def _stable_port():
    """A free port below the kernel's ephemeral range. A node that restarts must get its
    ports back: one from the ephemeral range (free_port()) can meanwhile become some
    client's source port -- even a reconnecting client's own, connected to itself -- and
    the node then fails with dist_port_already_used or eaddrinuse."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    if low <= 11000:
        return free_port()
    for _ in range(500):
        port = random.randrange(10000, low)
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))  # the node's dist check binds every interface
            except OSError:
                continue
        return port
    return free_port()


def _procs():
    """{pid: (ppid, pgid, starttime)} of the live (non-zombie) processes, from /proc."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The fields after the ")" that closes the command name: state ppid pgrp ...
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 19 and fields[0] != "Z":
            out[int(name)] = (int(fields[1]), int(fields[2]), fields[19])
    return out


def _tree(pid):
    """The processes pid leads: its process group and every descendant (beam starts
    erl_child_setup and inet_gethost in sessions of their own), as (pid, starttime)."""
    procs = _procs()
    found = {p for p, (_, pgid, _) in procs.items() if pgid == pid or p == pid}
    grew = True
    while grew:
        kids = {p for p, (ppid, _, _) in procs.items() if ppid in found} - found
        found |= kids
        grew = bool(kids)
    return {(p, procs[p][2]) for p in found}


def _alive(tree):
    procs = _procs()
    return {(p, st) for p, st in tree if p in procs and procs[p][2] == st}


class RabbitMQ:
    """One rabbitmq-server node under tmpdir. start() returns when the node accepts AMQP
    and `rabbitmqctl await_startup` says it booted; start_seconds is how long it took."""

    def __init__(self, tmpdir, user="guest", password="guest", tls=False, host="127.0.0.1",
                 netns=None):
        """host: the AMQP listeners' address; netns: the network namespace the node, its
        epmd and rabbitmqctl run in (scripts/testenv/netns.py), None for this one."""
        self.tmpdir = os.path.abspath(tmpdir)
        self.host, self.netns = host, netns
        self.port = _stable_port()
        self.tls = tls
        self.tls_port = _stable_port() if tls else None
        self.dist_port = _stable_port()
        self.epmd_port = _stable_port()
        self.node = f"gantry-test-{self.port}@localhost"
        self.user, self.password = user, password
        self.base = os.path.join(self.tmpdir, f"rabbitmq-{self.port}")
        self.gantry_users = {}  # cluster -> {role: (user, password)}, made by add_gantry_users
        self.proc = None
        self.epmd = None
        self.start_seconds = None
        # Debian's node runs as `rabbitmq`; as root we drop to it (as the package's own
        # wrapper does), so everything the node writes must be that user's.
        self.run_as = None
        if os.geteuid() == 0:
            try:
                self.run_as = pwd.getpwnam("rabbitmq")
            except KeyError:
                self.run_as = None
        self._prepare()

    # -- layout ----------------------------------------------------------------------
    def _prepare(self):
        dirs = {d: os.path.join(self.base, d) for d in ("mnesia", "log", "home", "etc")}
        for d in dirs.values():
            os.makedirs(d, exist_ok=True)
        etc = dirs["etc"]
        self.log_dir = dirs["log"]
        self.config_file = os.path.join(etc, "rabbitmq.conf")
        with open(self.config_file, "w") as f:
            # Small test machines: the default 50 MB free-disk alarm is fine, but make it
            # explicit so a node on a nearly full /tmp says why it blocks publishers.
            f.write("disk_free_limit.absolute = 50MB\n"
                    "log.console = false\n"
                    "log.file.level = info\n")
            if (self.user, self.password) != ("guest", "guest"):
                # Created at the first boot only (guest/guest is the default, loopback-only).
                f.write(f"default_user = {self.user}\ndefault_pass = {self.password}\n")
            if self.tls:
                self._make_certs(etc)
                # Client certificates are checked when presented, not required.
                f.write(f"listeners.ssl.1 = {self.host}:{self.tls_port}\n"
                        f"ssl_options.cacertfile = {self.ca_file}\n"
                        f"ssl_options.certfile = {os.path.join(etc, 'server.pem')}\n"
                        f"ssl_options.keyfile = {os.path.join(etc, 'server.key')}\n"
                        "ssl_options.verify = verify_peer\n"
                        "ssl_options.fail_if_no_peer_cert = false\n")
        self.plugins_file = os.path.join(etc, "enabled_plugins")
        with open(self.plugins_file, "w") as f:
            f.write("[].\n")
        with open(os.path.join(etc, "advanced.config"), "w") as f:
            # Erlang distribution on loopback only (it listens on every interface by default).
            f.write("[{kernel, [{inet_dist_use_interface, {127,0,0,1}}]}].\n")
        self.conf_env_file = os.path.join(etc, "rabbitmq-env.conf")
        open(self.conf_env_file, "w").close()  # do not read /etc/rabbitmq's
        cookie = os.path.join(dirs["home"], ".erlang.cookie")
        if not os.path.exists(cookie):
            with open(cookie, "w") as f:
                f.write(os.urandom(20).hex().upper())
            os.chmod(cookie, 0o400)
        self.home = dirs["home"]
        self.mnesia = dirs["mnesia"]
        if self.run_as is not None:
            uid, gid = self.run_as.pw_uid, self.run_as.pw_gid
            for root, subdirs, files in os.walk(self.base):
                os.chown(root, uid, gid)
                for name in files:
                    os.chown(os.path.join(root, name), uid, gid)
            # The node user must be able to reach base: add search permission (only) on
            # the directories above it that lack it, up to tmpdir.
            d = self.base
            while True:
                d = os.path.dirname(d)
                mode = os.stat(d).st_mode
                if not mode & 0o001:
                    os.chmod(d, (mode & 0o7777) | 0o001)
                if d == self.tmpdir or d == "/":
                    break
            probe = subprocess.run(self._argv(["test", "-w", self.mnesia], netns=False),
                                   capture_output=True)
            if probe.returncode != 0:
                raise RuntimeError(f"user rabbitmq cannot write {self.mnesia}: put tmpdir where "
                                   f"it can reach it (e.g. under /tmp)")

    def _make_certs(self, etc):
        """A test CA, a server certificate for DNS:localhost, a client certificate, and an
        unrelated CA (for "wrong CA" tests). EC keys: quick to make."""
        def ossl(*args):
            subprocess.run(["openssl", *args], cwd=etc, check=True, capture_output=True)

        key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        for ca in ("ca", "other-ca"):
            ossl("req", "-x509", *key, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "3",
                 "-subj", f"/CN=gantry-test-{ca}")
        for name, ext in (("server", "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n"),
                          ("client", "extendedKeyUsage=clientAuth\n")):
            with open(os.path.join(etc, f"{name}.ext"), "w") as f:
                f.write(ext)
            ossl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN=gantry-test-{name}")
            ossl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "3", "-extfile", f"{name}.ext")
        self.ca_file = os.path.join(etc, "ca.pem")

    def _env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update({
            "HOME": self.home,
            "PATH": "/usr/lib/rabbitmq/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LC_ALL": "C.UTF-8",
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": self.host,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": self.mnesia,
            "RABBITMQ_LOG_BASE": self.log_dir,
            "RABBITMQ_CONFIG_FILE": self.config_file,
            "RABBITMQ_ADVANCED_CONFIG_FILE": os.path.join(self.base, "etc", "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": self.plugins_file,
            "RABBITMQ_CONF_ENV_FILE": self.conf_env_file,
            "RABBITMQ_PID_FILE": os.path.join(self.mnesia, "node.pid"),
        })
        return env

    def _argv(self, argv, netns=True):
        """argv as the node's user, in the node's network namespace (netns=True) or here
        (False; Proc adds the namespace itself)."""
        if self.run_as is not None:
            # setpriv execs in place (the pid stays ours) and keeps the environment, unlike su.
            argv = ["setpriv", f"--reuid={self.run_as.pw_uid}", f"--regid={self.run_as.pw_gid}",
                    "--clear-groups", "--"] + argv
        return netns_argv(self.netns if netns else None, argv)

    # -- lifecycle -------------------------------------------------------------------
    def start(self):
        t0 = time.monotonic()
        if self.epmd is None or not self.epmd.alive():
            self.epmd = Proc("epmd", self._argv(["epmd", "-port", str(self.epmd_port)], False),
                             os.path.join(self.log_dir, "epmd.out"), env=self._env(),
                             cwd=self.base, netns=self.netns)
            wait_port(self.epmd_port, timeout=10, proc=self.epmd.proc, what="epmd",
                      netns=self.netns)
        self.proc = Proc("rabbitmq-server",
                         self._argv([os.path.join(SBIN, "rabbitmq-server")], False),
                         os.path.join(self.log_dir, "server.out"), env=self._env(), cwd=self.base,
                         netns=self.netns)
        try:
            wait_port(self.port, timeout=START_TIMEOUT, proc=self.proc.proc,
                      what=f"rabbitmq-server {self.node}", host=self.host, netns=self.netns)
            if self.tls:
                wait_port(self.tls_port, timeout=START_TIMEOUT, proc=self.proc.proc,
                          what=f"rabbitmq-server {self.node} (TLS)", host=self.host,
                          netns=self.netns)
            self._ctl("await_startup", "--timeout", str(int(START_TIMEOUT)))
        except Exception:
            sys.stderr.write(self.tail())
            self.stop_node()  # epmd stays; stop() ends it
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def _ctl(self, *args, timeout=START_TIMEOUT + 10):
        argv = self._argv([os.path.join(SBIN, "rabbitmqctl"), "-n", self.node, *args])
        r = subprocess.run(argv, env=self._env(), cwd=self.base, capture_output=True,
                           text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed ({r.returncode}): "
                               f"{r.stdout}{r.stderr}")
        return r.stdout

    # -- users ---------------------------------------------------------------------
    def add_users(self, users, vhost="/"):
        """Creates (or updates) users with their permissions in one import:
        users = {name: (password, configure, write, read)}."""
        defs = {
            "users": [{"name": n, "password_hash": _password_hash(pw),
                       "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []}
                      for n, (pw, _, _, _) in users.items()],
            "permissions": [{"user": n, "vhost": vhost, "configure": cf, "write": wr,
                             "read": rd} for n, (_, cf, wr, rd) in users.items()],
        }
        path = os.path.join(self.base, "etc", f"users-{secrets.token_hex(4)}.json")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(defs, f)
        try:
            if self.run_as is not None:
                os.chown(path, self.run_as.pw_uid, self.run_as.pw_gid)
            self._ctl("import_definitions", path)
        finally:
            os.unlink(path)

    def add_gantry_users(self, cluster):
        """One broker user per Gantry role of cluster, "gantry-<role>-<cluster>", with
        gantry_permissions(cluster); made once per node. Returns {role: (user, password)}."""
        if cluster not in self.gantry_users:
            perms = gantry_permissions(cluster)
            made = {r: (f"gantry-{r}-{cluster}", secrets.token_hex(16)) for r in ROLES}
            self.add_users({u: (pw, *perms[r]) for r, (u, pw) in made.items()})
            self.gantry_users[cluster] = made
        return self.gantry_users[cluster]

    def _reap(self, tree, timeout=15.0):
        """Waits until every process of tree is gone; SIGKILLs stragglers after timeout."""
        deadline = time.monotonic() + timeout
        while _alive(tree) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid, _ in _alive(tree):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        while _alive(tree):
            time.sleep(0.05)

    def stop_node(self, timeout=30):
        """Stops the node (SIGTERM to its process group: a clean shutdown), keeps epmd."""
        if self.proc is not None:
            tree = _tree(self.proc.pid)
            self.proc.stop(timeout=timeout)
            self._reap(tree)
            self.proc = None

    def stop(self):
        """Stops the node and its epmd; the data stays under tmpdir."""
        self.stop_node()
        if self.epmd is not None:
            tree = _tree(self.epmd.pid)
            self.epmd.stop()
            self._reap(tree)
            self.epmd = None

    def kill(self):
        """SIGKILLs the node's whole process group (a crash); epmd stays for a start()."""
        if self.proc is not None:
            tree = _tree(self.proc.pid)
            self.proc.kill()
            self._reap(tree)
            self.proc = None

    def restart(self):
        """Stops and starts the node on the same ports with the same data."""
        self.stop_node()
        return self.start()

    def env(self):
        """GANTRY_TEST_AMQP; with TLS also GANTRY_TEST_AMQP_TLS (localhost:port, the name
        the server certificate carries) and GANTRY_TEST_AMQP_TLS_DIR (ca.pem, other-ca.pem,
        client.pem, client.key)."""
        env = {"GANTRY_TEST_AMQP": f"{self.host}:{self.port}"}
        if self.tls:
            env["GANTRY_TEST_AMQP_TLS"] = f"localhost:{self.tls_port}"
            env["GANTRY_TEST_AMQP_TLS_DIR"] = os.path.dirname(self.ca_file)
        return env

    def tail(self, n=40):
        out = self.proc.tail(n) if self.proc is not None else ""
        log = os.path.join(self.log_dir, f"{self.node}.log")
        try:
            with open(log, errors="replace") as f:
                out += "".join(f.readlines()[-n:])
        except OSError:
            pass
        return out

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# -- command line: run a command against a fresh node --------------------------------
def control_commands(mq):
    """What the control socket does to the node: restart, kill, start."""
    def do(fn):
        def run():
            fn()   # answers "ok": the node's state is what the caller asked for
        return run
    return {"restart": do(mq.restart), "kill": do(mq.kill), "start": do(mq.start)}


def main(argv):
    if len(argv) >= 3 and argv[0] == "--control":
        return control_client(argv[1], " ".join(argv[2:]))
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        sys.stderr.write("usage: python3 -m scripts.testenv.rabbitmq -- COMMAND [ARGS...]\n")
        return 2

    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    # SIGTERM/SIGHUP unwind through the finally below, so the node never outlives us.
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    tmp = tempfile.mkdtemp(prefix="gantry-rabbitmq-")
    mq = RabbitMQ(tmp, tls=True)
    lock = threading.Lock()
    srv = child = None
    try:
        mq.start()
        print(f"rabbitmq {mq.node} on 127.0.0.1:{mq.port} ready in {mq.start_seconds:.1f}s",
              file=sys.stderr)
        ctl = os.path.join(tmp, "control.sock")
        srv = serve_control(ctl, lock, control_commands(mq))
        env = dict(os.environ, **mq.env())
        control = f"{sys.executable} {os.path.abspath(__file__)} --control {ctl}"
        env["GANTRY_TEST_AMQP_RESTART_CMD"] = f"{control} restart"
        env["GANTRY_TEST_AMQP_CONTROL_CMD"] = control  # + " kill" | " start" | " restart"
        child = subprocess.Popen(argv, env=env)
        rc = child.wait()
        if rc != 0:
            sys.stderr.write(mq.tail())
        return rc
    finally:
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if srv is not None:
            srv.close()
        with lock:
            mq.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
