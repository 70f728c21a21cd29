"""Shared pieces of the test servers: ports, waiting, processes stopped by pid, and
network namespaces (netns.py): a server may run in one (Proc(netns=NAME) prefixes
`ip netns exec NAME`), and netns_call(NAME, fn) runs fn with its sockets in it."""
import ctypes
import os
import signal
import socket
import subprocess
import threading
import time

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def netns_argv(netns, argv):
    """argv run inside network namespace netns (None: as it is)."""
    return list(argv) if netns is None else ["ip", "netns", "exec", netns, *argv]


def netns_call(netns, fn, *args, **kw):
    """fn(*args, **kw) on a thread of its own that joined netns (a network namespace is
    per thread, so the caller's stays as it was): the sockets fn opens live there."""
    if netns is None:
        return fn(*args, **kw)
    out = {}

    def body():
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, f"setns into network namespace {netns}: {os.strerror(e)}")
            finally:
                os.close(fd)
            out["value"] = fn(*args, **kw)
        except BaseException as e:  # handed to the caller's thread
            out["error"] = e

    t = threading.Thread(target=body, name=f"netns-{netns}")
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _connects(host, port):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_port(port, timeout=30.0, proc=None, what="server", host="127.0.0.1", netns=None):
    """Waits until host:port (seen from netns) accepts connections; raises with the reason."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}")
        if netns_call(netns, _connects, host, port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {host}:{port} within {timeout:.0f}s")


class Proc:
    """A started server process: stop() sends SIGTERM to its pid (then SIGKILL),
    kill() sends SIGKILL; log is the file its output goes to. With netns, it runs in that
    network namespace (`ip netns exec` execs in place: the pid is the server's)."""

    def __init__(self, name, argv, log, env=None, cwd=None, user=None, netns=None):
        self.name, self.argv, self.log_path = name, netns_argv(netns, argv), log
        self.netns = netns
        self.env, self.cwd, self.user = env, cwd, user
        self.proc = None
        self.start()

    def start(self):
        out = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                     cwd=self.cwd, start_new_session=True, user=self.user)
        out.close()

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig=signal.SIGKILL):
        """Kills the process group this server leads (it may have children)."""
        if self.alive():
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)

    def stop(self, timeout=15):
        if not self.alive():
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        except ProcessLookupError:
            pass

    def tail(self, n=40):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""


def serve_control(path, lock, commands):
    """Answers one-line commands on a unix socket so a test can fault a server:
    commands maps a word to a function of the rest of the line that returns the answer
    ("ok" when it returns None). Errors are answered as "error: ..."."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)

    def loop():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            with c:
                words = c.recv(256).decode().split()
                try:
                    fn = commands.get(words[0]) if words else None
                    if fn is None:
                        raise RuntimeError(f"unknown command {' '.join(words)!r}")
                    with lock:
                        answer = fn(*words[1:])
                    c.sendall(f"{answer or 'ok'}\n".encode())
                except Exception as e:  # reported to the test, which fails on it
                    c.sendall(f"error: {e}\n".encode())

    threading.Thread(target=loop, daemon=True).start()
    return srv


def control_client(path, cmd):
    """Sends cmd to a serve_control socket, prints the answer; 0 unless it is an error."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.connect(path)
        c.sendall(cmd.encode() + b"\n")
        c.shutdown(socket.SHUT_WR)
        answer = c.makefile().read().strip()
    print(answer)
    return 1 if answer.startswith("error") else 0


if __name__ == "__main__":
    import sys
    if len(sys.argv) >= 4 and sys.argv[1] == "--control":
        sys.exit(control_client(sys.argv[2], " ".join(sys.argv[3:])))
    sys.exit("usage: common.py --control SOCKET COMMAND [ARGS...]")
