"""The controller's HTTP surface against hostile or careless clients: framing by
RFC 9112 over raw sockets, /health/status without a token, connection caps, and
mutual TLS with certificates made by openssl. Real gantry-controller, tokend, Redis
and RabbitMQ, as in test_server.py."""
import http.client
import json
import socket
import ssl
import subprocess

import pytest

from conftest import BIN_DIR, ClientGantry
from testenv.stack import GantryStack


def raw(port, data, timeout=20):
    """Sends data, reads until the server closes (a timeout fails the test: the
    connection must be closed)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        chunks = []
        while True:
            try:
                b = s.recv(65536)
            except ConnectionResetError:
                break
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)
    finally:
        s.close()


def answer(resp):
    head, _, body = resp.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, json.loads(body) if body else None


def get(port, path, token=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, json.loads(body)


POST = b"POST /api/v1/login HTTP/1.1\r\nHost: x\r\n"
MALFORMED = {
    "two different Content-Length": POST + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}x",
    "Content-Length list that differs": POST + b"Content-Length: 2, 3\r\n\r\n{}x",
    "Content-Length +2": POST + b"Content-Length: +2\r\n\r\n{}",
    "Content-Length -1": POST + b"Content-Length: -1\r\n\r\n",
    "Content-Length not digits": POST + b"Content-Length: 2a\r\n\r\n{}",
    "Content-Length overflow": POST + b"Content-Length: 184467440737095516160\r\n\r\n{}",
    "Transfer-Encoding and Content-Length":
        POST + b"Content-Length: 7\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "Transfer-Encoding gzip": POST + b"Transfer-Encoding: gzip\r\n\r\n",
    "chunked not last": POST + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    "space before the colon": POST + b"Transfer-Encoding : chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "obs-fold": b"GET /health/status HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n",
    "control character": b"GET /health/status HTTP/1.1\r\nHost: x\r\nX-A: 1\x012\r\n\r\n",
    "bare CR": b"GET /health/status HTTP/1.1\r\nHost: x\r\nX-A: 1\r2\r\n\r\n",
    "name not a token": b"GET /health/status HTTP/1.1\r\nHost: x\r\nX(A): 1\r\n\r\n",
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_framing_is_refused(stack, case):
    port = stack.controllers[0].port
    status, headers, body = answer(raw(port, MALFORMED[case]))
    assert status == 400, (case, body)
    assert headers.get("connection") == "close"
    assert headers.get("content-type") == "application/json"
    assert body["error"]["code"] == "invalid_argument" and body["error"]["message"], body
    # and the server goes on serving
    assert get(port, "/health/status?exclude-services=true")[0] == 200


def test_health_without_a_token_names_no_address(client, stack):
    port = stack.controllers[0].port
    for token in (None, "not-a-valid-token"):
        st, b = get(port, "/health/status", token)
        assert st == 200 and b["status"] == "ok", b
        assert set(b) == {"status", "dependencies"}, b
        assert set(b["dependencies"]) == {"store", "broker", "sessions"}
        assert all(d == {"state": "up"} for d in b["dependencies"].values()), b
        text = json.dumps(b)
        assert "127.0.0.1" not in text and str(port) not in text
    st, b = get(port, "/health/status?exclude-services=true")
    assert st == 200 and b == {"status": "ok"}
    # any valid token gets the details
    token = client.work.joinpath("token").read_text().strip()
    st, b = get(port, "/health/status", token)
    assert st == 200 and b["node"].endswith(f":{port}"), b
    assert ":" in b["dependencies"]["sessions"]["address"], b


def test_connections_over_the_cap_get_503(servers, tmp_path):
    redis, rabbit = servers
    s = GantryStack(str(tmp_path / "cap"), BIN_DIR, redis=redis, rabbit=rabbit,
                    env_extra={"GANTRY_SERVER_MAX_CONNECTIONS": "2"})
    s.start(controllers=1)
    held = []
    try:
        port = s.controllers[0].port
        # accepted in order: these two take the slots before the third is looked at
        held = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(2)]
        status, headers, body = answer(raw(port, b"GET /health/status HTTP/1.1\r\nHost: x\r\n\r\n"))
        assert status == 503 and headers.get("retry-after") == "1", body
        assert body["error"]["code"] == "unavailable"
        assert "too many connections" in body["error"]["message"]
        held[0].sendall(b"GET /health/status?exclude-services=true HTTP/1.1\r\nHost: x\r\n"
                        b"Connection: close\r\n\r\n")
        data = b""
        while True:
            b = held[0].recv(65536)
            if not b:
                break
            data += b
        assert data.startswith(b"HTTP/1.1 200 "), data
        # that slot is free again once its answer was written
        assert get(port, "/health/status?exclude-services=true")[0] == 200
    finally:
        for c in held:
            c.close()
        s.stop()


def make_pki(d):
    run = lambda *a: subprocess.run(a, check=True, capture_output=True, cwd=d)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
        "-keyout", "ca.key", "-out", "ca.crt")
    (d / "srv.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    (d / "cli.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, cn in (("server", "127.0.0.1"), ("client", "gantry-cli")):
        run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")
        run("openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "srv.ext" if name == "server" else "cli.ext",
            "-out", f"{name}.crt")
    # a client certificate from a CA the server does not trust
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=stranger",
        "-keyout", "stranger.key", "-out", "stranger.crt")


def test_mutual_tls(servers, tmp_path):
    d = tmp_path / "pki"
    d.mkdir()
    make_pki(d)
    redis, rabbit = servers
    s = GantryStack(str(tmp_path / "mtls"), BIN_DIR, redis=redis, rabbit=rabbit,
                    env_extra={"GANTRY_SERVER_USE_TLS": "true",
                               "GANTRY_SERVER_CERTIFICATE_FILE": str(d / "server.crt"),
                               "GANTRY_SERVER_PRIVATE_KEY_FILE": str(d / "server.key"),
                               "GANTRY_SERVER_CLIENT_CERT_AUTH": "true",
                               "GANTRY_APPLICATION_CA_CERTIFICATE_FILE": str(d / "ca.crt")})
    s.start(controllers=1)
    try:
        port = s.controllers[0].port

        def health(cert=None):
            ctx = ssl.create_default_context(cafile=str(d / "ca.crt"))
            if cert:
                ctx.load_cert_chain(str(d / f"{cert}.crt"), str(d / f"{cert}.key"))
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=20)
            try:
                conn.request("GET", "/health/status")
                r = conn.getresponse()
                return r.status, json.loads(r.read())
            finally:
                conn.close()

        # no client certificate, or one from another CA: the handshake is refused (with
        # TLS 1.3 the client hears of it on its first read)
        for cert in (None, "stranger"):
            with pytest.raises((ssl.SSLError, ConnectionError)):
                health(cert)
        st, b = health("client")
        assert st == 200 and b["status"] == "ok", b

        # the CLI presents [client] certificate_file and private_key_file
        conf = tmp_path / "client.conf"
        base = f"""[application]
mode = client
working_dir = {tmp_path}/client-work
ca_certificate_file = {d}/ca.crt

[client]
host = 127.0.0.1
port = {port}
use_tls = true
"""
        conf.write_text(base + f"certificate_file = {d}/client.crt\nprivate_key_file = {d}/client.key\n")
        g = ClientGantry.__new__(ClientGantry)
        g.tmp, g.work, g.config, g.extra = tmp_path, tmp_path / "client-work", conf, {}
        g("login", "admin", "--change-password", "--password-stdin",
          input=f"{s.admin_password}\nadmin-password-1\n", check=0)
        assert g.json("get", "services")["items"] == []
        # without its certificate the CLI is turned away, with a message naming the server
        conf.write_text(base)
        p = g("get", "services", check=3)
        assert f"127.0.0.1:{port}" in p.stderr, p.stderr
    finally:
        s.stop()


def test_client_cert_auth_needs_tls_and_a_ca(tmp_path):
    """Refused at start, naming the keys."""
    import os
    for extra, missing in (("use_tls = false\n", "[server] use_tls is false"),
                           ("use_tls = true\ncertificate_file = /x.pem\nprivate_key_file = /y.pem\n",
                            "[application] ca_certificate_file is not set")):
        conf = tmp_path / "server.conf"
        conf.write_text(f"[application]\nmode = server\nworking_dir = {tmp_path}/w\n\n"
                        f"[server]\nclient_cert_auth = true\n{extra}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("GANTRY_")}
        p = subprocess.run([os.path.join(BIN_DIR, "gantry-controller"), "--config", str(conf)],
                           capture_output=True, text=True, env=env, timeout=60)
        assert p.returncode == 2, p
        assert "[server] client_cert_auth" in p.stderr and missing in p.stderr, p.stderr
