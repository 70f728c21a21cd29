#!/usr/bin/python3
"""A baseline for the runner benchmark: Celery (Debian's python3-celery) on the same
RabbitMQ. Starts a Celery worker (prefork pool) as a subprocess, submits K tasks that each
run /bin/true with subprocess.run (no shell), waits for every result (rpc:// result
backend, over the same broker), and prints executions/s and p50/p99 submit-to-result
latency. Stops the worker it started and deletes its queue.

  bench/celery_baseline.py [--broker AMQP_URL] [-n K] [-c CONCURRENCY] [--json]

The broker defaults to amqp://guest:guest@$GANTRY_TEST_AMQP// (set by
`python3 -m scripts.testenv.rabbitmq -- CMD`). Debian's python3-celery lives in
/usr/lib/python3/dist-packages: run this with /usr/bin/python3 (another python3 first on
PATH is left for /usr/bin/python3 automatically).
"""
import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

HERE = os.path.dirname(os.path.abspath(__file__))
SYSTEM_PYTHON = "/usr/bin/python3"
REEXEC_GUARD = "GANTRY_BENCH_CELERY_REEXEC"


def die(msg, code=1):
    sys.stderr.write(f"celery_baseline: {msg}\n")
    sys.exit(code)


def import_celery():
    """Imports celery; re-executes under Debian's python3 once when this interpreter (a
    pyenv or venv one) cannot see python3-celery."""
    try:
        import celery  # noqa: F401
        import kombu  # noqa: F401
        return celery
    except ImportError as e:
        missing = e
    if (os.path.realpath(sys.executable) != os.path.realpath(SYSTEM_PYTHON)
            and os.access(SYSTEM_PYTHON, os.X_OK) and not os.environ.get(REEXEC_GUARD)):
        os.environ[REEXEC_GUARD] = "1"
        os.execv(SYSTEM_PYTHON, [SYSTEM_PYTHON, os.path.abspath(__file__)] + sys.argv[1:])
    die(f"Celery is not available to {sys.executable} ({missing}); install Debian's "
        f"python3-celery (apt-get install python3-celery) and run with {SYSTEM_PYTHON}")


def redact(url):
    u = urlsplit(url)
    if u.password is None:
        return url
    host = u.hostname or ""
    netloc = f"{u.username}:***@{host}" + (f":{u.port}" if u.port else "")
    return urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment))


def default_broker():
    hp = os.environ.get("GANTRY_TEST_AMQP")
    return f"amqp://guest:guest@{hp}//" if hp else None


def percentile(sorted_values, p):
    """Nearest-rank percentile (the same definition as bench/spawn_rate.c)."""
    n = len(sorted_values)
    return sorted_values[max(1, min(n, math.ceil(p * n / 100))) - 1]


def check_broker(app, url):
    """Connects once (no retries); exits with a clear message when the broker is not there."""
    conn = app.connection_for_write()
    try:
        conn.connect()
    except Exception as e:  # refused, timed out, access refused, bad URL...
        die(f"cannot connect to the broker at {redact(url)}: {type(e).__name__}: {e}")
    finally:
        conn.release()


class Worker:
    """`python3 -m celery -A celery_tasks worker` in a session (process group) of its own,
    so it and its pool processes can be stopped by its pid alone."""

    def __init__(self, concurrency, env, log_path):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        argv = [sys.executable, "-m", "celery", "-A", "celery_tasks", "worker",
                "--pool", "prefork", "--concurrency", str(concurrency),
                "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
                "--without-heartbeat", "-n", f"gantry-bench-{os.getpid()}@%h"]
        self.proc = subprocess.Popen(argv, env=env, cwd=HERE, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.pid = self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def tail(self, n=30):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout=20.0):
        """SIGTERM (Celery's warm shutdown) to the worker; SIGKILL to its process group
        when it has not exited in time, or when pool processes outlive it."""
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)  # the group it leads: it and its children
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self.log.close()


def delete_queue(app, queue):
    """Removes this run's queue and exchange from the broker (best effort)."""
    try:
        with app.connection_for_write() as conn:
            ch = conn.default_channel
            ch.queue_delete(queue)
            ch.exchange_delete(queue)
    except Exception as e:
        sys.stderr.write(f"celery_baseline: could not delete queue {queue}: {e}\n")


def pump(consumer):
    """Processes every result message already received, without blocking."""
    if getattr(consumer, "_connection", None) is None:
        return  # not consuming yet: nothing can have arrived
    while True:
        try:
            consumer.drain_events(timeout=0)
        except socket.timeout:
            return


def wait_results(app, worker, results, done_at, count, timeout, what):
    """Drains result messages until count results are done; fails when the worker died
    or timeout seconds passed."""
    consumer = app.backend.result_consumer
    deadline = time.monotonic() + timeout
    while len(done_at) < count:
        if not worker.alive():
            die(f"the Celery worker exited ({worker.proc.returncode}) during {what}:\n"
                f"{worker.tail()}")
        if time.monotonic() > deadline:
            die(f"timed out after {timeout:.0f}s during {what}: {len(done_at)} of {count} "
                f"results\n{worker.tail()}")
        try:
            consumer.drain_events(timeout=0.5)
        except socket.timeout:
            pass


def run(args):
    celery = import_celery()
    broker = args.broker or default_broker()
    if not broker:
        die("no broker: give --broker amqp://USER:PASS@HOST:PORT// (or run under "
            "`python3 -m scripts.testenv.rabbitmq --`, which sets GANTRY_TEST_AMQP)", 2)
    if not broker.startswith(("amqp://", "pyamqp://")):
        die(f"--broker must be an amqp:// URL, not {redact(broker)}", 2)
    queue = f"gantry-bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.environ["GANTRY_BENCH_CELERY_BROKER"] = broker
    os.environ["GANTRY_BENCH_CELERY_QUEUE"] = queue
    sys.path.insert(0, HERE)
    import celery_tasks  # noqa: E402  (reads the environment set just above)
    app, task = celery_tasks.app, celery_tasks.run_true

    check_broker(app, broker)

    tmp = tempfile.mkdtemp(prefix="gantry-bench-celery-")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [HERE] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    worker = Worker(args.concurrency, env, os.path.join(tmp, "worker.log"))
    try:
        # Warm-up, untimed: the worker is consuming and every pool process has run a task.
        warm = [task.delay(args.program) for _ in range(args.warmup)]
        warm_done = {}
        for r in warm:
            r.then(lambda res: warm_done.setdefault(res.id, time.perf_counter()))
        wait_results(app, worker, warm, warm_done, len(warm), args.start_timeout,
                     "worker start-up (warm-up tasks)")
        bad = [r for r in warm if not r.successful()]
        if bad:
            die(f"warm-up task failed: {bad[0].state} {bad[0].result!r}")

        submitted, done_at, results = [], {}, []
        on_done = lambda res: done_at.setdefault(res.id, time.perf_counter())  # noqa: E731
        consumer = app.backend.result_consumer
        t_start = time.perf_counter()
        for i in range(args.runs):
            t = time.perf_counter()
            r = task.delay(args.program)
            submitted.append(t)
            results.append(r)
            r.then(on_done)
            if i % 16 == 15:
                pump(consumer)  # stamp results that came back while still submitting
        t_submitted = time.perf_counter()
        wait_results(app, worker, results, done_at, args.runs, args.timeout, "the run")
        t_end = max(done_at.values())

        failed = [r for r in results if not r.successful() or r.result != 0]
        if failed:
            r = failed[0]
            die(f"{len(failed)} of {args.runs} tasks failed; first: {r.state} {r.result!r}")
        lat = sorted(done_at[r.id] - t for r, t in zip(results, submitted))
    finally:
        worker.stop()
        delete_queue(app, queue)
        try:
            app.backend.result_consumer.stop()
        except Exception:
            pass
        if args.keep_log:
            sys.stderr.write(f"celery_baseline: worker log kept in {worker.log_path}\n")
        else:
            try:
                os.unlink(worker.log_path)
                os.rmdir(tmp)
            except OSError:
                pass

    seconds = t_end - t_start
    out = {
        "tool": "celery_baseline",
        "celery": celery.__version__,
        "python": sys.version.split()[0],
        "broker": redact(broker),
        "result_backend": "rpc://",
        "pool": "prefork",
        "concurrency": args.concurrency,
        "program": args.program,
        "runs": args.runs,
        "warmup": args.warmup,
        "seconds": round(seconds, 6),
        "submit_seconds": round(t_submitted - t_start, 6),
        "executions_per_second": round(args.runs / seconds, 1),
        "latency_ms": {
            "p50": round(percentile(lat, 50) * 1e3, 3),
            "p99": round(percentile(lat, 99) * 1e3, 3),
            "max": round(lat[-1] * 1e3, 3),
        },
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(f"celery {out['celery']} (prefork, concurrency {args.concurrency}, rpc:// results) "
              f"{args.program} via subprocess.run: {out['executions_per_second']:.0f} "
              f"executions/s ({args.runs} runs)")
        print(f"  submit-to-result latency: p50 {out['latency_ms']['p50']:.1f} ms, "
              f"p99 {out['latency_ms']['p99']:.1f} ms, max {out['latency_ms']['max']:.1f} ms "
              f"(all {args.runs} submitted in {out['submit_seconds']:.2f} s)")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", help="AMQP URL (default amqp://guest:guest@$GANTRY_TEST_AMQP//)")
    ap.add_argument("-n", "--runs", type=int, default=1000, help="tasks to time (default 1000)")
    ap.add_argument("-c", "--concurrency", type=int, default=2,
                    help="worker pool processes (default 2)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed tasks first (default 4 x concurrency)")
    ap.add_argument("--program", default="/bin/true",
                    help="what each task runs, no shell (default /bin/true)")
    ap.add_argument("--timeout", type=float, default=300,
                    help="seconds to wait for all results (default 300)")
    ap.add_argument("--start-timeout", type=float, default=60,
                    help="seconds to wait for the worker's first results (default 60)")
    ap.add_argument("--keep-log", action="store_true", help="keep the worker's log file")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    if args.runs < 1 or args.concurrency < 1:
        ap.error("--runs and --concurrency must be at least 1")
    if args.warmup is None:
        args.warmup = 4 * args.concurrency
    if args.warmup < 1:
        ap.error("--warmup must be at least 1 (it is how the worker is known to be ready)")

    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    # SIGTERM/SIGHUP unwind through run()'s finally, so the worker never outlives us.
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
