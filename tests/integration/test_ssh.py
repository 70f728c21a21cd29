"""A repository behind SSH, fetched with a private key kept as a Gantry secret:
a real sshd on a loopback port of its own, stopped by its pid afterwards."""
import os
import shutil
import socket
import subprocess
import time

import pytest

from conftest import git

SSHD = "/usr/sbin/sshd"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sshd(tmp_path):
    if not os.path.exists(SSHD):
        pytest.skip(f"SKIPPED: {SSHD} not installed (scripts/install-deps installs openssh-server)")
    d = tmp_path / "sshd"
    d.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d / "host_key"], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d / "client_key"],
                   check=True)
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory
    port = free_port()
    (d / "sshd_config").write_text(f"""\
ListenAddress 127.0.0.1
Port {port}
HostKey {d}/host_key
AuthorizedKeysFile {d}/authorized_keys
PidFile {d}/sshd.pid
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
""")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", d / "sshd_config"], stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    yield {"port": port, "key": (d / "client_key").read_text(), "user": os.environ.get("USER", "root")}
    proc.terminate()  # by its pid, never by name
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="sshd on a private port needs root here")
def test_private_key_repository(gantry, sshd, scripts_repo, tmp_path):
    repo = scripts_repo("hello.sh", "echo over-ssh\n")
    url = f"ssh://root@127.0.0.1:{sshd['port']}{repo}"
    # without the key the fetch fails, clearly, and never prompts
    gantry("create", "repository", "r", "--url", url, check=0)
    gantry("create", "service", "executable", "s", "--repository", "r", "--filename", "hello.sh",
           check=0)
    ex = gantry.json("run", "service", "s", check=1)
    assert ex["state"] == "failed" and "fetching" in ex["error"]
    # with the key as a secret it works, and the key never lands on disk afterwards
    gantry("create", "secret", "deploy-key", input=sshd["key"], check=0)
    gantry("update", "repository", "r", "--private-key-name", "deploy-key", check=0)
    ex = gantry.json("run", "service", "s")
    assert ex["stdout"] == "over-ssh\n", ex
    leftovers = [p for p in gantry.work.rglob("*.key") if p.name != "secrets.key"]
    assert leftovers == []
    assert "PRIVATE KEY" not in (gantry.work / "gantry.db").read_text(errors="replace")
