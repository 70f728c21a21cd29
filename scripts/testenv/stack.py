"""Gantry's server stack on one machine: Redis with Sentinels and RabbitMQ (see
redis.py, rabbitmq.py), gantry-tokend and one or more gantry-controllers sharing a
local store, each configured by a file of its own under the stack's directory.

Every process holds only its own credentials, as in a real deployment: the shared
server.conf has no secrets; each daemon gets its role's broker user and password
(rabbitmq.add_gantry_users: controller, scheduler, runner, tokend) and only tokend and
the controllers get Redis's (the app's ACL user) through their environment. The
session signing key (<working_dir>/sessions.key) is shared by tokend and the
controllers, which use the same working_dir; runners have their own and never see it.
The admin's first password is read from <working_dir>/initial-admin-password.

Across machines (etcd_hosts=[...], control=HOST, start_runner(host=HOST), with hosts from
netns.py): the store is that etcd cluster, tokend, the controllers and the scheduler run
in the control host, and each runner in its own host with a config file of its own in
its own directory: cluster id, its working dir, the etcd and broker addresses and the
key file. It shares no file with the controllers: the secrets key file is made once by
the stack (<dir>/server/secrets.key) and a copy is installed in each runner's host, as
an operator installs the same key file on every node that runs services."""
import base64
import os
import re
import shutil
import textwrap
import time

from .common import Proc, free_port
from .rabbitmq import RabbitMQ
from .redis import RedisCluster


class Daemon(Proc):
    """A Gantry daemon; start() returns once its readiness line is logged."""

    def __init__(self, name, argv, log, ready, env, netns=None):
        self.ready = ready
        super().__init__(name, argv, log, env=env, netns=netns)

    def start(self):
        if os.path.exists(self.log_path):
            self.offset = os.path.getsize(self.log_path)
        else:
            self.offset = 0
        super().start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with open(self.log_path, errors="replace") as f:
                f.seek(self.offset)
                if self.ready in f.read():
                    return
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            time.sleep(0.05)
        self.kill()   # nobody holds a daemon that never got ready: do not leave it running
        raise RuntimeError(f"{self.name} not ready within 30s:\n{self.tail()}")


class GantryStack:
    def __init__(self, tmpdir, bin_dir, redis=None, rabbit=None, extra_config="", env_extra=None,
                 etcd_hosts=None, control=None):
        """etcd_hosts: host:port of each etcd member ([store] backend = etcd; None: the
        local SQLite file). control: the netns.Host that runs tokend, the controllers and
        the scheduler (None: this machine)."""
        self.dir = os.path.abspath(tmpdir)
        self.etcd_hosts = etcd_hosts
        self.control = control
        self.listen = control.addr if control else "127.0.0.1"
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.bin_dir = bin_dir
        self.own_servers = redis is None
        self.redis = redis or RedisCluster(os.path.join(self.dir, "redis"))
        self.rabbit = rabbit or RabbitMQ(os.path.join(self.dir, "rabbitmq"))
        self.extra_config = extra_config
        self.env_extra = env_extra or {}
        self.tokend = None
        self.controllers = []
        self.admin_password = None
        self.server_conf = os.path.join(self.dir, "server.conf")
        self.cluster = self.env_extra.get("GANTRY_APPLICATION_CLUSTER_ID", "stack")
        self.broker_users = None  # {role: (user, password)}, once the servers run
        self.admin_password_file = os.path.join(self.dir, "server", "initial-admin-password")

    def start_servers(self):
        if self.own_servers:
            self.redis.start()
            self.rabbit.start()
        self.broker_users = self.rabbit.add_gantry_users(self.cluster)

    def write_server_config(self):
        if self.broker_users is None:
            self.broker_users = self.rabbit.add_gantry_users(self.cluster)
        sentinels = self.redis.env()["GANTRY_TEST_SENTINELS"].replace(",", " ")
        if self.etcd_hosts:
            store = f"backend = etcd\netcd_hosts = {' '.join(self.etcd_hosts)}\netcd_use_tls = false\n"
            self.key_file = self._make_key_file()
            secrets = f"\n[secrets]\nencrypt_key_file = {self.key_file}\n"
        else:
            store, secrets = "backend = local\n", ""
        with open(self.server_conf, "w") as f:
            f.write(textwrap.dedent(f"""\
                [application]
                mode = server
                cluster_id = {self.cluster}
                working_dir = {self.dir}/server

                [server]
                listen_address = {self.listen}
                use_tls = false

                [store]
                @STORE@

                [sessions]
                sentinels = {sentinels}
                master_name = {self.redis.env()["GANTRY_TEST_REDIS_MASTER_NAME"]}

                [broker]
                hosts = {self.rabbit.env()["GANTRY_TEST_AMQP"]}
                # username and password: each daemon's own, from its environment

                [tokend]
                controller_users = {self.broker_users["controller"][0]}

                [runner]
                python = /usr/bin/python3
                pip_no_index = true
                kill_grace_period = 1s
                """).replace("@STORE@\n", store + secrets) + self.extra_config)

    def _make_key_file(self):
        """The cluster's secrets key file (as `openssl rand -base64 256`), made once."""
        path = os.path.join(self.dir, "server", "secrets.key")
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(base64.b64encode(os.urandom(256)).decode() + "\n")
        return path

    def env(self, role=None, **extra):
        """A daemon's environment: the shared config, and role's own credentials (None:
        no credentials at all, e.g. for the CLI)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("GANTRY_")}
        env["GANTRY_CONFIG"] = self.server_conf
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
        if role is not None:
            user, password = self.broker_users[role]
            env["GANTRY_BROKER_USERNAME"] = user
            env["GANTRY_BROKER_PASSWORD"] = password
        if role in ("tokend", "controller"):
            r = self.redis.env()
            env["GANTRY_SESSIONS_USERNAME"] = r["GANTRY_TEST_REDIS_USERNAME"]
            env["GANTRY_SESSIONS_PASSWORD"] = r["GANTRY_TEST_REDIS_PASSWORD"]
            env["GANTRY_SESSIONS_SENTINEL_USERNAME"] = r["GANTRY_TEST_SENTINEL_USERNAME"]
            env["GANTRY_SESSIONS_SENTINEL_PASSWORD"] = r["GANTRY_TEST_SENTINEL_PASSWORD"]
        env.update(self.env_extra)
        env.update(extra)
        return env

    def start_tokend(self):
        log = os.path.join(self.dir, "tokend.log")
        self.tokend = Daemon("gantry-tokend", [os.path.join(self.bin_dir, "gantry-tokend")], log,
                             "gantry-tokend ready", self.env("tokend"), netns=self._ns())
        # the first start writes the admin's temporary password to a file (never the log)
        try:
            with open(self.admin_password_file) as f:
                self.admin_password = f.read().strip() or None
        except FileNotFoundError:
            pass
        return self.tokend

    def start_controller(self, port=None):
        port = port or free_port()
        name = f"controller-{port}"
        log = os.path.join(self.dir, f"{name}.log")
        d = Daemon(name, [os.path.join(self.bin_dir, "gantry-controller")], log,
                   "gantry-controller ready", self.env("controller", GANTRY_SERVER_PORT=str(port)),
                   netns=self._ns())
        d.port = port
        d.addr = self.listen
        self.controllers.append(d)
        return d

    def _ns(self):
        return self.control.ns if self.control else None

    def runner_config(self, work, key_file):
        """A runner's own config file under work: what a remote runner needs, no more."""
        path = os.path.join(work, "gantry.conf")
        with open(path, "w") as f:
            f.write(textwrap.dedent(f"""\
                [application]
                mode = runner
                cluster_id = {self.cluster}
                working_dir = {work}

                [store]
                backend = etcd
                etcd_hosts = {' '.join(self.etcd_hosts)}
                etcd_use_tls = false

                [secrets]
                encrypt_key_file = {key_file}

                [broker]
                hosts = {self.rabbit.env()["GANTRY_TEST_AMQP"]}
                # username and password: the runner's own, from its environment

                [runner]
                python = /usr/bin/python3
                pip_no_index = true
                kill_grace_period = 1s
                """))
        return path

    def start_runner(self, capacity=2, pools="default", heartbeat="1s", drain="30s", host=None):
        """A gantry-runner: on this machine, sharing the controllers' store file and key
        file (local store); or, with host (a netns.Host, etcd store), in that host with
        its own config, working dir and copy of the key file."""
        n = len(getattr(self, "runners", [])) + 1
        self.runners = getattr(self, "runners", [])
        name = f"runner-{n}"
        knobs = dict(GANTRY_RUNNER_CAPACITY=str(capacity), GANTRY_RUNNER_POOLS=pools,
                     GANTRY_RUNNER_HEARTBEAT_INTERVAL=heartbeat, GANTRY_RUNNER_DRAIN_TIMEOUT=drain)
        if host is not None:
            if not self.etcd_hosts:
                raise ValueError("a runner in another host needs a shared store (etcd_hosts)")
            node = os.path.join(host.dir, self.cluster)   # this cluster's files on that host
            work = os.path.join(node, name)
            os.makedirs(work, mode=0o700, exist_ok=True)
            key = os.path.join(node, "secrets.key")
            if not os.path.exists(key):   # installed on the node, as an operator would
                shutil.copyfile(self.key_file, key)
                os.chmod(key, 0o400)
            log = os.path.join(node, f"{name}.log")
            env = {k: v for k, v in os.environ.items() if not k.startswith("GANTRY_")}
            env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
            user, password = self.broker_users["runner"]
            env.update(GANTRY_CONFIG=self.runner_config(work, key), GANTRY_BROKER_USERNAME=user,
                       GANTRY_BROKER_PASSWORD=password, **knobs)
            d = Daemon(name, [os.path.join(self.bin_dir, "gantry-runner")], log,
                       "gantry-runner ready", env, netns=host.ns)
            d.host = host
        else:
            log = os.path.join(self.dir, f"{name}.log")
            server = os.path.join(self.dir, "server")
            env = self.env("runner", GANTRY_APPLICATION_MODE="runner",
                           GANTRY_APPLICATION_WORKING_DIR=os.path.join(self.dir, name),
                           GANTRY_STORE_PATH=os.path.join(server, "gantry.db"),
                           GANTRY_SECRETS_ENCRYPT_KEY_FILE=os.path.join(server, "secrets.key"),
                           **knobs)
            d = Daemon(name, [os.path.join(self.bin_dir, "gantry-runner")], log,
                       "gantry-runner ready", env)
        with open(log, errors="replace") as f:
            m = re.findall(r"ready: (\S+),", f.read())
        d.runner_id = m[-1] if m else None
        self.runners.append(d)
        return d

    def start_scheduler(self, heartbeat="1s"):
        """A gantry-scheduler; several may run (one is active, by lease). self.scheduler
        is the first."""
        self.schedulers = getattr(self, "schedulers", [])
        n = len(self.schedulers) + 1
        log = os.path.join(self.dir, "scheduler.log" if n == 1 else f"scheduler-{n}.log")
        d = Daemon(f"gantry-scheduler-{n}", [os.path.join(self.bin_dir, "gantry-scheduler")],
                   log, "gantry-scheduler ready",
                   self.env("scheduler", GANTRY_RUNNER_HEARTBEAT_INTERVAL=heartbeat),
                   netns=self._ns())
        self.schedulers.append(d)
        if n == 1:
            self.scheduler = d
        return d

    def client_config(self, path, port, work=None):
        with open(path, "w") as f:
            f.write(textwrap.dedent(f"""\
                [application]
                mode = client
                working_dir = {work or os.path.join(os.path.dirname(path), "client-work")}

                [client]
                host = {self.listen}
                port = {port}
                use_tls = false
                """))
        return path

    def start(self, controllers=1):
        self.start_servers()
        self.write_server_config()
        self.start_tokend()
        for _ in range(controllers):
            self.start_controller()
        return self

    def stop(self):
        for d in getattr(self, "runners", []) + getattr(self, "schedulers", []):
            if d is not None:
                d.stop()
        for d in self.controllers + [self.tokend]:
            if d is not None:
                d.stop()
        if self.own_servers:
            self.rabbit.stop()
            self.redis.stop()
