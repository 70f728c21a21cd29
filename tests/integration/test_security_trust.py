"""Who may speak for whom ("A run reaches only what its service grants"): each Gantry
process has a broker user of its own and tokend serves only the controllers'; Redis needs
a password and a session in it must carry tokend's MAC; the throttle does not tell which
user names exist; the first admin password is never logged; an API key cannot mint API
keys; common passwords are refused; `--value` warns. All against the real stack."""
import hashlib
import json
import os
import stat
import subprocess
import time
import uuid

import amqp
import pytest

from conftest import BIN_DIR
from testenv.stack import GantryStack
from test_server import login, request

ADMIN_PW = "admin-password-1"


@pytest.fixture
def trust(servers, tmp_path):
    """tokend and one controller in a cluster of their own (its own broker users, Redis
    keys and throttle counters); admin's password set to ADMIN_PW; s.token is admin's."""
    redis, rabbit = servers
    redis.wait_stable()
    cluster = f"trust{uuid.uuid4().hex[:8]}"
    s = GantryStack(str(tmp_path / "stack"), BIN_DIR, redis=redis, rabbit=rabbit,
                    env_extra={"GANTRY_APPLICATION_CLUSTER_ID": cluster})
    s.start(controllers=1)
    try:
        s.port = s.controllers[0].port
        st, b = request(s.port, "POST", "/api/v1/password", {"username": "admin",
                        "password": s.admin_password, "new_password": ADMIN_PW})
        assert st == 200, b
        s.token = login(s.port, "admin", ADMIN_PW)
        yield s
    finally:
        s.stop()


def amqp_conn(rabbit, user, password):
    c = amqp.Connection(rabbit.env()["GANTRY_TEST_AMQP"], userid=user, password=password)
    c.connect()
    return c


def publish_refused(conn, exchange, key, body, **props):
    """Publishes and waits for the broker's verdict (a round trip on the channel): the
    AMQP error it answered with, or None when it took the message."""
    ch = conn.channel()
    try:
        ch.basic_publish(amqp.Message(body, **props), exchange=exchange, routing_key=key)
        ch.basic_qos(0, 1, False)
    except amqp.exceptions.AMQPError as e:
        return e
    ch.close()
    return None


def rpc(conn, exchange, key, body, timeout=15, **props):
    """A request to tokend over direct reply-to, as the controller makes it; its reply."""
    ch = conn.channel()
    replies = []
    ch.basic_consume("amq.rabbitmq.reply-to", no_ack=True, callback=replies.append)
    corr = uuid.uuid4().hex
    ch.basic_publish(amqp.Message(json.dumps(body), reply_to="amq.rabbitmq.reply-to",
                                  correlation_id=corr, **props),
                     exchange=exchange, routing_key=key)
    deadline = time.monotonic() + timeout
    while not replies and time.monotonic() < deadline:
        try:
            conn.drain_events(timeout=1)
        except TimeoutError:
            pass
    ch.close()
    assert replies, "no reply from gantry-tokend"
    return json.loads(replies[0].body)


def user_names(s):
    st, b = request(s.port, "GET", "/api/v1/users", token=s.token)
    assert st == 200, b
    return {u["name"] for u in b["items"]}


# ---- 1. anyone on the broker acting as the controllers ------------------------------

def test_runner_and_scheduler_cannot_publish_to_tokend(trust, servers):
    """Attack 1: with the runner's (or the scheduler's) broker credentials, a create_user
    for an admin is refused by RabbitMQ itself, through the auth exchange and through
    the default exchange alike."""
    _, rabbit = servers
    queue = f"gantry.{trust.cluster}.auth"
    req = json.dumps({"op": "create_user", "username": "mallory", "role": "admin",
                      "password": "Mallory-Pass-1234"})
    for role in ("runner", "scheduler"):
        user, password = trust.broker_users[role]
        conn = amqp_conn(rabbit, user, password)
        try:
            for exchange in (queue, ""):
                err = publish_refused(conn, exchange, queue, req, user_id=user,
                                      reply_to="amq.rabbitmq.reply-to")
                assert isinstance(err, amqp.exceptions.AccessRefused), (role, exchange, err)
                assert "refused for user" in str(err)
            # nor can it declare its way in: a queue dead-lettering into the auth exchange
            ch = conn.channel()
            with pytest.raises(amqp.exceptions.AccessRefused):
                ch.queue_declare(f"exec.{trust.cluster}.sneaky", durable=True,
                                 auto_delete=False,
                                 arguments={"x-dead-letter-exchange": queue,
                                            "x-dead-letter-routing-key": queue})
        finally:
            conn.close()
    assert "mallory" not in user_names(trust)


def test_tokend_serves_only_the_controllers(trust, servers):
    """Attack 1, second wall: a broker user that may publish to the auth exchange but is
    not one of [tokend] controller_users is answered forbidden, and logged; it cannot
    claim to be the controller (RabbitMQ checks user_id), and a request without a
    user_id is refused as well."""
    _, rabbit = servers
    exchange = queue = f"gantry.{trust.cluster}.auth"
    impostor, pw = f"impostor-{trust.cluster}", uuid.uuid4().hex
    rabbit.add_users({impostor: (pw, "^$", f"^gantry\\.{trust.cluster}\\.auth$", "^$")})
    conn = amqp_conn(rabbit, impostor, pw)
    try:
        create = {"op": "create_user", "username": "mallory", "role": "admin",
                  "password": "Mallory-Pass-1234"}
        r = rpc(conn, exchange, queue, create, user_id=impostor)
        assert r["ok"] is False and r["error"]["code"] == "forbidden", r
        assert "controller_users" in r["error"]["message"]
        r = rpc(conn, exchange, queue, {"op": "create_apikey", "username": "admin"})
        assert r["ok"] is False and r["error"]["code"] == "forbidden", r
        # claiming the controller's name: the broker refuses the message itself
        err = publish_refused(conn, exchange, queue, json.dumps(create),
                              user_id=trust.broker_users["controller"][0])
        assert isinstance(err, amqp.exceptions.PreconditionFailed), err
        assert "user_id property set to" in str(err)
    finally:
        conn.close()
    assert "mallory" not in user_names(trust)
    log = trust.tokend.tail(200)
    assert f"refused a request from broker user {impostor}" in log
    assert "no user_id" in log
    # the controller itself is served, as always
    st, b = request(trust.port, "POST", "/api/v1/users",
                    {"name": "vera", "role": "viewer", "password": "Vera-Pass-2024"},
                    token=trust.token)
    assert st == 201, b


# ---- 2. Redis alone vouching for a session ------------------------------------------

def redis_cli(redis, *args, auth=True):
    port = redis.master_addr().rsplit(":", 1)[1]
    argv = ["redis-cli", "-h", "127.0.0.1", "-p", port]
    if auth:
        argv += ["--user", "default", "--pass", redis.admin_password, "--no-auth-warning"]
    p = subprocess.run(argv + list(args), capture_output=True, text=True, timeout=30)
    return p.stdout.strip() + p.stderr.strip()


def test_forged_redis_session_is_refused(trust, servers):
    """Attack 2: Redis now needs a password; and someone who has it (or any other way
    to write Redis) still cannot make, alter or move a session: without tokend's MAC
    the controller answers 401 and logs why."""
    redis, _ = servers
    prefix = f"gantry:{trust.cluster}:"
    tok = "forged-" + uuid.uuid4().hex
    key = prefix + "session:" + hashlib.sha256(tok.encode()).hexdigest()
    forged = json.dumps({"user": "x", "role": "admin", "kind": "login",
                         "must_change_password": False,
                         "expires_at": int(time.time() * 1000) + 3600_000})
    # without the password Redis takes nothing
    assert "NOAUTH" in redis_cli(redis, "SET", key, forged, auth=False)
    assert redis_cli(redis, "SET", key, forged, "PX", "600000") == "OK"
    st, b = request(trust.port, "GET", "/api/v1/whoami", token=tok)
    assert st == 401 and b["error"]["code"] == "unauthenticated", b
    st, _ = request(trust.port, "GET", "/api/v1/users", token=tok)
    assert st == 401
    assert "refused a token" in trust.controllers[0].tail(100)

    # a genuine viewer session with its role raised: 401
    st, b = request(trust.port, "POST", "/api/v1/users",
                    {"name": "otto", "role": "viewer", "password": "Otto-Pass-2024"},
                    token=trust.token)
    assert st == 201, b
    otto = login(trust.port, "otto", "Otto-Pass-2024")
    okey = prefix + "session:" + hashlib.sha256(otto.encode()).hexdigest()
    genuine = json.loads(redis_cli(redis, "GET", okey))
    assert genuine["mac"] and genuine["role"] == "viewer"
    assert request(trust.port, "GET", "/api/v1/whoami", token=otto)[0] == 200
    raised = dict(genuine, role="admin")
    assert redis_cli(redis, "SET", okey, json.dumps(raised), "PX", "600000") == "OK"
    assert request(trust.port, "GET", "/api/v1/whoami", token=otto)[0] == 401
    # and the admin's genuine record copied under the forged token: 401 (bound to its token)
    akey = prefix + "session:" + hashlib.sha256(trust.token.encode()).hexdigest()
    assert redis_cli(redis, "SET", key, redis_cli(redis, "GET", akey), "PX", "600000") == "OK"
    assert request(trust.port, "GET", "/api/v1/whoami", token=tok)[0] == 401
    # the real admin session is untouched
    st, b = request(trust.port, "GET", "/api/v1/whoami", token=trust.token)
    assert st == 200 and b["role"] == "admin"


# ---- 3. the smaller ones ------------------------------------------------------------

def test_throttle_does_not_tell_which_users_exist(trust):
    """Failed logins for a user and for a name that is none get the same answers: 401
    "invalid username or password" until the account delay starts, then the same 429
    (before, an unknown name never got the 429). The delay starts after three failures
    and doubles from one second, so each sequence is some 401s and then a 429; how many
    401s depends only on how fast this machine answers."""
    st, b = request(trust.port, "POST", "/api/v1/users",
                    {"name": "known-user", "role": "viewer", "password": "Known-Pass-2024"},
                    token=trust.token)
    assert st == 201, b
    first_429 = {}
    for name in ("known-user", "ghost-user"):
        answers = []
        while len(answers) < 9 and (not answers or answers[-1][0] != 429):
            answers.append(request(trust.port, "POST", "/api/v1/login",
                                   {"username": name, "password": "wrong-password"}))
        assert answers[-1][0] == 429, (name, answers)
        assert len(answers) >= 4, (name, answers)  # three failures pass through
        for st, b in answers[:-1]:
            assert (st, b) == (401, {"error": {"code": "unauthenticated",
                                               "message": "invalid username or password"}})
        first_429[name] = answers[-1][1]["error"]
    for e in first_429.values():
        assert e["code"] == "throttled"
        assert e["message"].startswith("too many failed logins for this account; retry in")


def test_first_admin_password_is_a_file_not_a_log_line(trust, tmp_path):
    path = trust.admin_password_file
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    with open(path) as f:
        first = f.read().strip()
    assert first == trust.admin_password and len(first) == 16
    log = trust.tokend.tail(400)
    assert first not in log
    assert path in log
    # --recover-admin-user: a new password, in the same kind of file, printed nowhere
    p = subprocess.run([os.path.join(BIN_DIR, "gantry-tokend"), "--recover-admin-user"],
                       env=trust.env("tokend"), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    with open(path) as f:
        second = f.read().strip()
    assert second != first and len(second) == 16
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    assert second not in p.stdout + p.stderr and path in p.stdout
    st_, b = request(trust.port, "POST", "/api/v1/login", {"username": "admin",
                     "password": second})
    assert st_ == 200 and b["must_change_password"] is True


def test_an_api_key_cannot_create_api_keys(trust):
    st, b = request(trust.port, "POST", "/api/v1/apikeys", {"name": "ci"}, token=trust.token)
    assert st == 201, b
    key = b["api_key"]
    assert request(trust.port, "GET", "/api/v1/whoami", token=key)[1]["kind"] == "apikey"
    st, b = request(trust.port, "POST", "/api/v1/apikeys", {"name": "offspring"}, token=key)
    assert st == 403 and b["error"]["code"] == "forbidden", b
    assert "API key cannot create API keys" in b["error"]["message"]
    st, b = request(trust.port, "POST", "/api/v1/apikeys", {}, token=trust.token)
    assert st == 201, b


def test_common_passwords_are_refused(trust):
    for pw in ("password123", "Password1", "qwertyuiop", "12345678"):
        st, b = request(trust.port, "POST", "/api/v1/users",
                        {"name": "rita", "role": "viewer", "password": pw}, token=trust.token)
        assert st == 400 and b["error"]["field"] == "$.password", (pw, b)
        assert "common passwords" in b["error"]["message"]
    st, b = request(trust.port, "POST", "/api/v1/users",
                    {"name": "ritaritarita", "role": "viewer", "password": "RitaRitaRita"},
                    token=trust.token)
    assert st == 400 and "user name" in b["error"]["message"], b
    st, b = request(trust.port, "POST", "/api/v1/password",
                    {"username": "admin", "password": ADMIN_PW, "new_password": "iloveyou"})
    assert st == 400 and b["error"]["field"] == "$.new_password", b
    st, b = request(trust.port, "POST", "/api/v1/users",
                    {"name": "rita", "role": "viewer", "password": "Rita-Pass-2024"},
                    token=trust.token)
    assert st == 201, b


def test_secret_value_on_the_command_line_warns(gantry):
    p = gantry("create", "secret", "a", "--value", "s3cret-a", check=0)
    assert "--value puts the secret on the command line" in p.stderr
    assert "--value-file" in p.stderr and "s3cret-a" not in p.stderr
    p = gantry("create", "secret", "b", "--value", "-", input="s3cret-b\n", check=0)
    assert "warning" not in p.stderr
    f = gantry.tmp / "value"
    f.write_text("s3cret-c\n")
    p = gantry("create", "secret", "c", "--value-file", f, check=0)
    assert "warning" not in p.stderr
    p = gantry("create", "secret", "d", input="s3cret-d\n", check=0)
    assert "warning" not in p.stderr
    names = {s["name"] for s in gantry.json("get", "secrets")["items"]}
    assert {"a", "b", "c", "d"} <= names
