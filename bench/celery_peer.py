#!/usr/bin/env python3
"""Celery + Redis running the same no-op tasks as `nimbus bench tasks`, for a side-by-side.

Starts its own redis-server on a free 127.0.0.1 port and `--workers` prefork Celery worker
processes, sends `--tasks` no-op tasks, waits for every result, prints `tasks_per_second N`.
Installs nothing: says what is missing and how to get it.
"""
import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

APP = """
from celery import Celery
app = Celery("peer", broker="redis://127.0.0.1:{port}/0", backend="redis://127.0.0.1:{port}/1")
app.conf.worker_prefetch_multiplier = 64
@app.task
def noop():
    return None
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    missing = []
    try:
        import celery  # noqa: F401
        import redis  # noqa: F401
    except ImportError:
        missing.append("celery with redis: pip install 'celery[redis]'")
    if shutil.which("redis-server") is None:
        missing.append("redis-server: apt-get install redis-server")
    if missing:
        print("missing: " + "; ".join(missing))
        return 3

    port = free_port()
    work = tempfile.mkdtemp(prefix="celery-peer-")
    with open(os.path.join(work, "peerapp.py"), "w") as f:
        f.write(APP.format(port=port))
    redis_server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    env = dict(os.environ, PYTHONPATH=work)
    worker = None
    try:
        sys.path.insert(0, work)
        import peerapp

        for _ in range(100):
            try:
                peerapp.app.backend.client.ping()
                break
            except Exception:
                time.sleep(0.05)
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "peerapp", "worker", "--pool", "prefork",
             "--concurrency", str(args.workers), "--loglevel", "WARNING", "--without-gossip",
             "--without-mingle", "--without-heartbeat"],
            cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 60
        while not peerapp.app.control.ping(timeout=0.5):
            if time.time() > deadline:
                print("celery worker did not start")
                return 1
        start = time.perf_counter()
        results = [peerapp.noop.delay() for _ in range(args.tasks)]
        for r in results:
            r.get(timeout=300)
        elapsed = time.perf_counter() - start
        print(f"tasks_per_second {args.tasks / elapsed:.1f}")
        return 0
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        redis_server.terminate()
        redis_server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
