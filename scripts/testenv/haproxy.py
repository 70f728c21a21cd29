"""Debian's haproxy in front of controllers, on a loopback port of its own.

    lb = HAProxy(tmpdir, [port1, port2])   # nothing runs yet
    lb.start()                             # returns once it listens
    lb.port                                # where clients connect
    lb.stop()                              # SIGTERM by pid, then SIGKILL

The configuration is deploy/haproxy.cfg's, with the test's addresses: health checks of
GET /health/status every 200 ms, one failure takes a controller out, one success puts
it back."""
import os

from .common import Proc, free_port, wait_port

TEMPLATE = """\
global
    maxconn 1024

defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    retries 2
    option redispatch

frontend gantry
    bind {bind}:{port}
    default_backend controllers

backend controllers
    option httpchk GET /health/status
    http-check expect status 200
    default-server inter {inter}ms fall 1 rise 1
{servers}
"""


class HAProxy:
    def __init__(self, tmp, backends, inter_ms=200, bind="127.0.0.1", netns=None):
        """backends: ports on 127.0.0.1, or "addr:port" strings; bind and netns: where
        haproxy listens (a netns.Host's address and namespace)."""
        self.tmp = tmp
        self.backends = [b if isinstance(b, str) else f"127.0.0.1:{b}" for b in backends]
        self.inter_ms = inter_ms
        self.bind, self.netns = bind, netns
        self.port = free_port()
        self.proc = None

    def start(self):
        os.makedirs(self.tmp, exist_ok=True)
        cfg = os.path.join(self.tmp, "haproxy.cfg")
        servers = "\n".join(f"    server c{i} {b} check" for i, b in enumerate(self.backends))
        with open(cfg, "w") as f:
            f.write(TEMPLATE.format(bind=self.bind, port=self.port, inter=self.inter_ms,
                                    servers=servers))
        # -db: stay in the foreground, so the pid we hold is haproxy's own
        self.proc = Proc("haproxy", ["haproxy", "-db", "-f", cfg], os.path.join(self.tmp, "haproxy.log"),
                         netns=self.netns)
        wait_port(self.port, host=self.bind, netns=self.netns, proc=self.proc.proc, what="haproxy")
        return self

    def stop(self):
        if self.proc is not None:
            self.proc.stop()
