"""The Celery app of bench/celery_baseline.py, imported both by the benchmark (to submit)
and by the worker it starts (`python3 -m celery -A celery_tasks worker`).

Configured from the environment, which celery_baseline.py sets for itself and its worker:
  GANTRY_BENCH_CELERY_BROKER  AMQP URL of the broker (results come back over it: rpc://)
  GANTRY_BENCH_CELERY_QUEUE   the queue (and direct exchange) of this run only
"""
import os
import subprocess

from celery import Celery

QUEUE = os.environ.get("GANTRY_BENCH_CELERY_QUEUE", "gantry-bench")

app = Celery("gantry_bench",
             broker=os.environ.get("GANTRY_BENCH_CELERY_BROKER", "amqp://guest:guest@127.0.0.1//"),
             backend="rpc://")
app.conf.update(
    task_default_queue=QUEUE,
    task_default_exchange=QUEUE,
    task_default_routing_key=QUEUE,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    # Fail fast when the broker is unreachable instead of retrying for minutes.
    broker_connection_timeout=5,
    broker_connection_retry=False,
    broker_connection_max_retries=0,
    # No broadcast queues (pidbox) nor worker events: nothing but the run's own queue
    # on the broker, and nothing but the tasks on the wire.
    worker_enable_remote_control=False,
    worker_send_task_events=False,
    worker_hijack_root_logger=False,
)


@app.task(name="gantry_bench.run_true")
def run_true(program="/bin/true"):
    """Runs the program once (no shell) and returns its exit status; fails when non-zero."""
    return subprocess.run([program], check=True).returncode
