"""Machines for tests, as Linux network namespaces joined by one switch.

    net = Network(tmpdir)             # a switch namespace with a bridge, nothing else yet
    servers = net.add_host("servers") # a namespace, a veth pair into the bridge, an address
    servers.addr                      # 198.18.0.N, reachable from every other host
    servers.proc(name, argv, ...)     # a Proc running in it (`ip netns exec NS argv...`)
    servers.call(fn, *args)           # fn on a thread whose sockets live in it
    net.cut("runner-1"); net.mend("runner-1")   # that host's link down / up again
    net.close()                       # stops what the hosts run, by pid, then deletes the
                                      # namespaces (their links go with them)

Every namespace is named gtn<pid>-<host>, so parallel runs never meet; the bridge sits in
a namespace of its own (gtn<pid>-sw), so nothing is added to the root namespace and no
packet leaves these namespaces. Addresses come from 198.18.0.0/15 (RFC 2544, for
benchmarking), one /24 shared by the hosts of a run. Each host has a working directory
of its own, <tmpdir>/<host>. Needs root (CAP_NET_ADMIN) and iproute2.

Manual use:  python3 scripts/testenv/netns.py    (creates two hosts, pings, removes them)
"""
import os
import re
import subprocess
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from testenv.common import Proc, netns_argv, netns_call  # noqa: E402
else:
    from .common import Proc, netns_argv, netns_call

SUBNET = "198.18.0"   # /24, inside 198.18.0.0/15
PREFIX = "gtn"


def ip(*args, check=True):
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip() or r.returncode}")
    return r


def available():
    """None when namespaces can be made here, else the reason (for a loud skip)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"{PREFIX}{os.getpid()}-probe"
    r = ip("netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"ip netns add failed: {r.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


def remove_stale():
    """Deletes namespaces this harness made in runs whose process is gone (a killed
    pytest cannot clean up); never touches a namespace of a live run or anyone else's."""
    for line in ip("netns", "list", check=False).stdout.splitlines():
        m = re.match(rf"({PREFIX}(\d+)-\S+)", line)
        if m and not os.path.exists(f"/proc/{m.group(2)}"):
            ip("netns", "del", m.group(1), check=False)


class Host:
    """One machine: a network namespace with lo and eth0 (its address on the switch)."""

    def __init__(self, net, name, addr):
        self.net, self.name, self.addr = net, name, addr
        self.ns = f"{net.tag}-{name}"[:63]
        self.dir = os.path.join(net.dir, name)
        self.procs = []
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o755)

    def argv(self, argv):
        return netns_argv(self.ns, argv)

    def proc(self, name, argv, log=None, **kw):
        """A Proc in this host; its log defaults to <host dir>/<name>.log."""
        p = Proc(name, argv, log or os.path.join(self.dir, f"{name}.log"), netns=self.ns, **kw)
        self.procs.append(p)
        return p

    def run(self, argv, **kw):
        """subprocess.run(argv) in this host."""
        return subprocess.run(self.argv(argv), **kw)

    def call(self, fn, *args, **kw):
        return netns_call(self.ns, fn, *args, **kw)


class Network:
    def __init__(self, tmpdir):
        remove_stale()
        self.dir = os.path.abspath(str(tmpdir))
        os.makedirs(self.dir, exist_ok=True)
        self.tag = f"{PREFIX}{os.getpid()}"
        # one switch per Network object in this process
        n = 0
        while os.path.exists(f"/run/netns/{self.tag}-{n}-sw"):
            n += 1
        self.tag = f"{self.tag}-{n}"
        self.switch = f"{self.tag}-sw"
        self.hosts = {}
        self.namespaces = []
        self._add_ns(self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        # the switch forwards frames only; its own namespace has no address at all

    def _add_ns(self, ns):
        ip("netns", "add", ns)
        self.namespaces.append(ns)
        ip("-n", ns, "link", "set", "lo", "up")

    def add_host(self, name):
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,15}", name) or name in self.hosts:
            raise ValueError(f"host name {name!r}: lower-case, at most 16 characters, unique")
        n = len(self.hosts) + 1
        if n > 250:
            raise ValueError("at most 250 hosts")
        h = Host(self, name, f"{SUBNET}.{n}")
        try:
            self._add_ns(h.ns)
            port = f"p{n}"   # the switch's end of the cable
            ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0",
               "netns", h.ns)
            ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
            ip("-n", h.ns, "addr", "add", f"{h.addr}/24", "dev", "eth0")
            ip("-n", h.ns, "link", "set", "eth0", "up")
        except Exception:
            self.close()
            raise
        h.port = port
        self.hosts[name] = h
        return h

    def __getitem__(self, name):
        return self.hosts[name]

    def cut(self, name):
        """Pulls host name's cable: its switch port goes down (its packets are lost, its
        connections hang, as with a real partition)."""
        ip("-n", self.switch, "link", "set", self.hosts[name].port, "down")

    def mend(self, name):
        ip("-n", self.switch, "link", "set", self.hosts[name].port, "up")

    def close(self):
        """Stops every process the hosts started (by pid), then deletes the namespaces."""
        for h in self.hosts.values():
            for p in reversed(h.procs):
                try:
                    p.stop(timeout=10)
                except Exception:
                    p.kill()
        for ns in reversed(self.namespaces):
            ip("netns", "del", ns, check=False)
        self.namespaces = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _reaches(addr, port):
    import socket
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((addr, port)) == 0


if __name__ == "__main__":
    import tempfile
    why = available()
    if why:
        sys.exit(f"netns: {why}")
    with Network(tempfile.mkdtemp(prefix="gantry-netns-")) as net:
        a, b = net.add_host("a"), net.add_host("b")
        b.proc("listener", [sys.executable, "-m", "http.server", "-b", b.addr, "8000"])
        import time
        time.sleep(1)
        ok = a.call(_reaches, b.addr, 8000)
        net.cut("b")
        cut = a.call(_reaches, b.addr, 8000)
        print(f"a reaches b: {ok}; after the cut: {cut}")
        sys.exit(0 if ok and not cut else 1)
