"""Server and client modes: gantry-controller, gantry-tokend, Redis through
Sentinel and RabbitMQ, all real, on loopback ports of their own."""
import http.client
import json
import os
import socket
import threading
import time

from conftest import ROOT, ClientGantry


def request(port, method, path, body=None, token=None, raw=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    if data is not None:
        h.setdefault("Content-Type", "application/json")
    c.request(method, path, body=data, headers=h)
    r = c.getresponse()
    text = r.read()
    c.close()
    try:
        return r.status, json.loads(text) if text else None
    except ValueError:
        return r.status, text.decode(errors="replace")


def login(port, user, password):
    st, b = request(port, "POST", "/api/v1/login", {"username": user, "password": password})
    assert st == 200, b
    return b["token"]


def test_first_login_must_change_password(stack, tmp_path):
    port = stack.controllers[0].port
    assert stack.admin_password, stack.tokend.tail()
    st, b = request(port, "POST", "/api/v1/login", {"username": "admin", "password": "wrong"})
    assert st == 401 and b["error"]["code"] == "unauthenticated"
    token = login(port, "admin", stack.admin_password)
    st, b = request(port, "GET", "/api/v1/services", token=token)
    assert st == 403 and b["error"]["code"] == "password_change_required"
    c = ClientGantry(tmp_path, stack, stack.controllers[0])
    p = c("login", "admin", "--password-stdin", input=f"{stack.admin_password}\n", check=1)
    assert "--change-password" in p.stderr
    c("login", "admin", "--change-password", "--password-stdin",
      input=f"{stack.admin_password}\nnew-secret-pw\n", check=0)
    token_file = c.work / "token"
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    assert c.json("get", "services")["items"] == []
    # the old temporary password no longer works
    st, _ = request(port, "POST", "/api/v1/login", {"username": "admin", "password": stack.admin_password})
    assert st == 401


def test_examples_run_remotely(client, examples_repo):
    client("create", "repository", "examples", "--url", examples_repo, check=0)
    client("create", "decorator", "hello-inputs", "--schema", f"@{ROOT}/examples/python/decorator.json",
           check=0)
    client("create", "service", "python-script", "hello", "--repository", "examples",
           "--working-dir", "python", "--filename", "hello.py", "--decorator", "hello-inputs", check=0)
    p = client("run", "service", "hello", "--set", "name=Ada", "--set", "count=2", check=0)
    assert p.stdout.count("Hello, Ada!") == 2 and "state: succeeded" in p.stdout
    client("create", "service", "ansible-playbook", "site", "--repository", "examples",
           "--working-dir", "ansible", "--playbook", "site.yml", "--inventory", "inventory.ini", check=0)
    assert "Working on edge with checks" in client("run", "service", "site", "--set", "target=edge",
                                                   check=0).stdout
    client("create", "secret", "token", input="tok-value-1\n", check=0)
    client("create", "service", "executable", "report", "--repository", "examples", "--working-dir",
           "shell", "--filename", "report.sh", "--secret", "name=token,type=env,target=API_TOKEN", check=0)
    ex = client.json("run", "service", "report", "--set", "x=1")
    assert ex["state"] == "succeeded" and "API_TOKEN is set (11 characters)" in ex["stdout"]
    assert "tok-value-1" not in json.dumps(client.json("describe", "secret", "token"))
    # bad input is refused by the server with the same messages as locally
    p = client("run", "service", "hello", "--set", "name=x", "--set", "count=9", check=2)
    assert "$.inputs.count" in p.stderr
    p = client("delete", "repository", "examples", check=2)
    assert "service hello" in p.stderr
    assert [e["state"] for e in client.json("get", "executions")["items"]] == ["succeeded"] * 3


def test_tokens_roles_and_api_keys(client, stack):
    port = stack.controllers[0].port
    st, b = request(port, "GET", "/api/v1/services")
    assert st == 401 and b["error"]["code"] == "unauthenticated"
    st, b = request(port, "GET", "/api/v1/services", token="not-a-token")
    assert st == 401
    p = client("create", "user", "vera", "--role", "viewer", check=0)
    temp = p.stdout.split("must be changed at the first login): ")[1].strip()
    client("create", "user", "otto", "--role", "operator", "--password-stdin",
           input="otto-password\n", check=0)
    users = {u["name"]: u["role"] for u in client.json("get", "users")["items"]}
    assert users == {"admin": "admin", "vera": "viewer", "otto": "operator"}
    st, b = request(port, "POST", "/api/v1/password",
                    {"username": "vera", "password": temp, "new_password": "vera-password"})
    assert st == 200, b
    vera = login(port, "vera", "vera-password")
    otto = login(port, "otto", "otto-password")
    assert request(port, "GET", "/api/v1/services", token=vera)[0] == 200
    st, b = request(port, "POST", "/api/v1/repositories", {"name": "r", "url": "/x"}, token=vera)
    assert st == 403 and "admin" in b["error"]["message"]
    st, b = request(port, "POST", "/api/v1/services/none/run", {}, token=vera)
    assert st == 403 and "operator" in b["error"]["message"]
    assert request(port, "POST", "/api/v1/services/none/run", {}, token=otto)[0] == 404
    assert request(port, "GET", "/api/v1/users", token=otto)[0] == 403
    # an API key works like a token, until it is revoked by a password change
    st, b = request(port, "POST", "/api/v1/apikeys", {"name": "ci"}, token=otto)
    assert st == 201 and b["api_key"]
    key = b["api_key"]
    assert request(port, "GET", "/api/v1/whoami", token=key)[1]["user"] == "otto"
    st, _ = request(port, "POST", "/api/v1/password",
                    {"username": "otto", "password": "otto-password", "new_password": "otto-password-2"})
    assert st == 200
    assert request(port, "GET", "/api/v1/whoami", token=key)[0] == 401
    assert request(port, "GET", "/api/v1/whoami", token=otto)[0] == 401
    client("delete", "user", "vera", check=0)
    assert request(port, "GET", "/api/v1/whoami", token=vera)[0] == 401


def test_logout_revokes_on_every_controller(client, stack):
    a, b = stack.controllers[0].port, stack.controllers[1].port
    token = client.work.joinpath("token").read_text().strip()
    assert request(b, "GET", "/api/v1/services", token=token)[0] == 200
    client("logout", check=0)
    assert not client.work.joinpath("token").exists()
    assert request(a, "GET", "/api/v1/services", token=token)[0] == 401
    assert request(b, "GET", "/api/v1/services", token=token)[0] == 401
    p = client("get", "services", check=2)
    assert "gantry login" in p.stderr


def test_expired_token(servers, tmp_path):
    from testenv.stack import GantryStack
    from conftest import BIN_DIR
    redis, rabbit = servers
    s = GantryStack(str(tmp_path / "short"), BIN_DIR, redis=redis, rabbit=rabbit,
                    env_extra={"GANTRY_SESSIONS_TOKEN_TTL": "2s"})
    s.start(controllers=1)
    try:
        port = s.controllers[0].port
        st, _ = request(port, "POST", "/api/v1/password", {"username": "admin",
                        "password": s.admin_password, "new_password": "admin-password-1"})
        assert st == 200
        token = login(port, "admin", "admin-password-1")
        assert request(port, "GET", "/api/v1/services", token=token)[0] == 200
        time.sleep(1.2)  # use renews the sliding expiry
        assert request(port, "GET", "/api/v1/services", token=token)[0] == 200
        time.sleep(3)
        st, b = request(port, "GET", "/api/v1/services", token=token)
        assert st == 401 and "expired" in b["error"]["message"]
    finally:
        s.stop()


def test_bad_requests_keep_the_server_serving(client, stack):
    port = stack.controllers[0].port
    token = client.work.joinpath("token").read_text().strip()
    st, b = request(port, "POST", "/api/v1/repositories", raw=b"{not json", token=token)
    assert st == 400 and b["error"]["code"] == "invalid_argument"
    st, b = request(port, "POST", "/api/v1/repositories", {"name": "r", "url": 5}, token=token)
    assert st == 400 and b["error"]["field"] == "$.url"
    st, b = request(port, "POST", "/api/v1/repositories", {"name": "r", "url": "/x", "x": 1}, token=token)
    assert st == 400 and b["error"]["field"] == "$.x"
    # over [server] max_body_size (1 MiB): a JSON 413; far over it, evhttp refuses before
    # reading (libevent 2.1 cannot see headers earlier) — still 413, and the server goes on
    st, b = request(port, "POST", "/api/v1/repositories", raw=b"{" + b" " * (3 << 19) + b"}", token=token)
    assert st == 413 and b["error"]["code"] == "too_large"
    try:
        st, _ = request(port, "POST", "/api/v1/repositories", raw=b"{" + b" " * (8 << 20) + b"}",
                        token=token)
        assert st == 413
    except (ConnectionError, http.client.HTTPException):
        pass  # the server may close while the client is still sending
    assert request(port, "GET", "/api/v1/nothing", token=token)[0] == 404
    assert request(port, "GET", "/elsewhere")[0] == 404
    assert request(port, "PUT", "/api/v1/services", {}, token=token)[0] == 405
    st, b = request(port, "POST", "/api/v1/login", raw=b"[]")
    assert st == 400
    # a slow client and a half-closed one do not stop others
    slow = socket.create_connection(("127.0.0.1", port))
    slow.sendall(b"POST /api/v1/login HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    half = socket.create_connection(("127.0.0.1", port))
    half.sendall(b"GET /health/status HTTP/1.1\r\nHost: x\r\n")
    half.shutdown(socket.SHUT_WR)
    garbage = socket.create_connection(("127.0.0.1", port))
    garbage.sendall(b"\x16\x03\x01\x02\x00garbage\r\n\r\n")
    for _ in range(20):
        assert request(port, "GET", "/api/v1/services", token=token)[0] == 200
    for s in (slow, half, garbage):
        s.close()
    assert request(port, "GET", "/health/status?exclude-services=true")[0] == 200


def test_health_and_metrics(client, stack):
    port = stack.controllers[0].port
    st, b = request(port, "GET", "/health/status")
    assert st == 200 and b["status"] == "ok", b
    assert set(b["dependencies"]) == {"store", "broker", "sessions"}
    assert all(d["state"] == "up" for d in b["dependencies"].values())
    st, text = request(port, "GET", "/metrics")
    assert st == 200
    assert 'gantry_http_requests_total{method="GET",code="200"}' in text
    assert "gantry_http_request_duration_seconds_bucket" in text
    assert 'gantry_executions{state="succeeded"}' in text


def test_tokend_away_gives_503(client, stack):
    port = stack.controllers[0].port
    stack.tokend.kill()
    t0 = time.monotonic()
    st, b = request(port, "POST", "/api/v1/login", {"username": "admin", "password": "x"})
    assert st == 503 and "gantry-tokend" in b["error"]["message"]
    assert time.monotonic() - t0 < 20
    # reading still works: tokens are checked in Redis, not by tokend
    token = client.work.joinpath("token").read_text().strip()
    assert request(port, "GET", "/api/v1/services", token=token)[0] == 200
    stack.tokend.start()
    assert request(port, "POST", "/api/v1/login", {"username": "admin",
                   "password": "admin-password-1"})[0] == 200


def test_sentinel_failover_loses_no_session(client, stack, servers):
    redis, _ = servers
    token = client.work.joinpath("token").read_text().strip()
    ports = [c.port for c in stack.controllers]
    results = []
    stop = threading.Event()

    def hammer():
        i = 0
        while not stop.is_set():
            st, _ = request(ports[i % 2], "GET", "/api/v1/services", token=token)
            results.append(st)
            i += 1
            time.sleep(0.01)

    t = threading.Thread(target=hammer)
    t.start()
    time.sleep(0.5)
    old = redis.master_addr()
    redis.kill_master()
    redis.wait_for_failover(old, timeout=60)
    time.sleep(1.0)
    stop.set()
    t.join()
    assert 401 not in results, "a valid session was lost during the failover"
    assert results.count(200) > 10
    # after the failover every request succeeds again
    for p in ports:
        assert request(p, "GET", "/api/v1/services", token=token)[0] == 200
    redis.restart(old)  # the old master comes back as a replica
    redis.wait_stable()


def test_openapi_matches_the_routes(stack, client):
    import subprocess
    import yaml
    spec = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text())
    served = subprocess.run([os.path.join(stack.bin_dir, "gantry-controller"), "--routes"],
                            capture_output=True, text=True, check=True).stdout.split("\n")
    served = {tuple(l.split(" ", 1)) for l in served if l}
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops
                  if m in ("get", "post", "put", "patch", "delete")}
    # the API's {kind} routes are documented once per kind
    kinds = ["repositories", "services", "decorators", "secrets"]
    expanded = set()
    for m, p in served:
        if "{kind}" in p:
            expanded |= {(m, p.replace("{kind}", k)) for k in kinds}
        else:
            expanded.add((m, p))
    norm = lambda p: p.replace("{id}", "{name}")  # noqa: E731
    assert {(m, norm(p)) for m, p in expanded} == {(m, norm(p)) for m, p in documented}
    port = stack.controllers[0].port
    token = client.work.joinpath("token").read_text().strip()
    for m, p in sorted(documented):
        st, b = request(port, m, p.replace("{name}", "x").replace("{id}", "x"),
                        body={} if m in ("POST", "PATCH") else None, token=token)
        assert not (st == 404 and isinstance(b, dict) and b["error"]["message"] == "no such route"), (m, p)
        assert st != 405, (m, p)


def wait_state(port, token, ex_id, states, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st, b = request(port, "GET", f"/api/v1/executions/{ex_id}", token=token)
        assert st == 200, b
        if b["state"] in states:
            return b
        time.sleep(0.1)
    raise AssertionError(f"execution {ex_id} still {b['state']}")


def test_cancel_on_another_controller(client, stack, scripts_repo, tmp_path):
    from test_sandbox import sleeps, wait_for  # a run's files stay in its sandbox
    repo = scripts_repo("wait.sh", "echo started\nsleep 30.375\necho finished\n")
    client("create", "repository", "s", "--url", repo, check=0)
    client("create", "service", "executable", "wait", "--repository", "s", "--filename", "wait.sh",
           check=0)
    token = client.work.joinpath("token").read_text().strip()
    a, b = stack.controllers[0].port, stack.controllers[1].port
    st, ex = request(a, "POST", "/api/v1/services/wait/run", {}, token=token)
    assert st == 202 and ex["state"] == "accepted"
    wait_state(a, token, ex["id"], {"running"})
    # "running" is stored before the child starts: cancel once it has printed
    assert wait_for(lambda: sleeps("30.375") == 1)
    st, r = request(b, "POST", f"/api/v1/executions/{ex['id']}/cancel", token=token)
    assert st == 202 and r["cancel_requested"] is True
    done = wait_state(b, token, ex["id"], {"canceled", "failed", "succeeded"}, timeout=20)
    assert done["state"] == "canceled" and done["stdout"] == "started\n"
    assert wait_for(lambda: sleeps("30.375") == 0, 10)
    assert request(a, "POST", f"/api/v1/executions/{ex['id']}/cancel", token=token)[0] == 409


def test_tls_end_to_end(servers, tmp_path):
    import ssl
    import subprocess
    from testenv.stack import GantryStack
    from conftest import BIN_DIR
    d = tmp_path / "pki"
    d.mkdir()
    run = lambda *a: subprocess.run(a, check=True, capture_output=True, cwd=d)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.crt")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr")
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "ext", "-out", "server.crt")
    redis, rabbit = servers
    s = GantryStack(str(tmp_path / "tls"), BIN_DIR, redis=redis, rabbit=rabbit,
                    env_extra={"GANTRY_SERVER_USE_TLS": "true",
                               "GANTRY_SERVER_CERTIFICATE_FILE": str(d / "server.crt"),
                               "GANTRY_SERVER_PRIVATE_KEY_FILE": str(d / "server.key")})
    s.start(controllers=1)
    try:
        port = s.controllers[0].port
        assert "https://" in s.controllers[0].tail()
        ctx = ssl.create_default_context(cafile=str(d / "ca.crt"))
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
        conn.request("GET", "/health/status")
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["status"] == "ok"
        assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")
        conn.close()
        # TLS below 1.2 is refused
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.load_verify_locations(str(d / "ca.crt"))
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.minimum_version = ssl.TLSVersion.TLSv1
        try:
            c2 = http.client.HTTPSConnection("127.0.0.1", port, context=old, timeout=10)
            c2.request("GET", "/health/status")
            c2.getresponse()
            raise AssertionError("a TLS 1.1 handshake succeeded")
        except (ssl.SSLError, ConnectionError):
            pass
        # the CLI in client mode, trusting the CA
        conf = tmp_path / "client.conf"
        conf.write_text(f"""[application]
mode = client
working_dir = {tmp_path}/client-work
ca_certificate_file = {d}/ca.crt

[client]
host = 127.0.0.1
port = {port}
use_tls = true
""")
        g = ClientGantry.__new__(ClientGantry)
        g.tmp, g.work, g.config, g.extra = tmp_path, tmp_path / "client-work", conf, {}
        g("login", "admin", "--change-password", "--password-stdin",
          input=f"{s.admin_password}\nadmin-password-1\n", check=0)
        assert g.json("get", "services")["items"] == []
        # without the CA the certificate is not trusted: a clear error, nothing sent
        conf.write_text(conf.read_text().replace(f"ca_certificate_file = {d}/ca.crt\n", ""))
        p = g("get", "services", check=3)
        assert "certificate" in p.stderr and f"127.0.0.1:{port}" in p.stderr
    finally:
        s.stop()


def test_a_burst_of_runs_all_finish(client, stack, scripts_repo):
    """Every accepted execution reaches a terminal state: none waits for a wake-up
    that went elsewhere (a regression test for the worker pool)."""
    repo = scripts_repo("quick.sh", "echo $2\n")
    client("create", "repository", "q", "--url", repo, check=0)
    client("create", "service", "executable", "quick", "--repository", "q", "--filename", "quick.sh",
           check=0)
    token = client.work.joinpath("token").read_text().strip()
    ports = [c.port for c in stack.controllers]
    ids = []
    for i in range(24):
        st, ex = request(ports[i % 2], "POST", "/api/v1/services/quick/run", {"inputs": {"n": i}},
                         token=token)
        assert st == 202, ex
        ids.append(ex["id"])
    for i, ex_id in enumerate(ids):
        done = wait_state(ports[0], token, ex_id, {"succeeded", "failed", "lost", "canceled"})
        assert done["state"] == "succeeded" and done["stdout"] == f"{i}\n"
