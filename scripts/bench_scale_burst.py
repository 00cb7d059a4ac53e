#!/usr/bin/env python3
"""One burst of classify requests through `nimbus up`, autoscaled and with a fixed pool of the
same peak size: requests, time to the last answer, peak workers, worker-seconds. Prints a
Markdown table. Usage: scripts/bench_scale_burst.py [NIMBUS] [REQUESTS] [WORKERS]"""

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

NIMBUS = sys.argv[1] if len(sys.argv) > 1 else "target/release/nimbus"
REQUESTS = int(sys.argv[2]) if len(sys.argv) > 2 else 100
WORKERS = int(sys.argv[3]) if len(sys.argv) > 3 else 2
PHOTOS = "/usr/lib/python3/dist-packages/skimage/data"
EXPECT = {"chelsea.png": "cat", "coffee.png": "espresso", "camera.png": "tripod"}


def fleet(url):
    with urllib.request.urlopen(url + "/api/v1/fleet", timeout=30) as r:
        return json.load(r)


def running(url):
    try:
        samples = fleet(url)["samples"]
    except urllib.error.HTTPError:  # no autoscaler tick yet
        return 0
    return samples[-1]["running"] if samples else 0


def wait_for(check, secs=300):
    deadline = time.time() + secs
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise SystemExit("timed out")


def worker_seconds(samples, start_ms, end_ms):
    total = 0.0
    for a, b in zip(samples, samples[1:]):
        lo, hi = max(a["at_ms"], start_ms), min(b["at_ms"], end_ms)
        if hi > lo:
            total += a["running"] * (hi - lo) / 1000
    return total


def run(label, up_args, work, window=None):
    data = tempfile.mkdtemp()
    up = subprocess.Popen([NIMBUS, "--engine", f"sqlite://{data}/nimbus.db", "up", "--port", "0",
                           "--interval", "500ms", "--idle", "10s", *up_args],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = up.stdout.readline().strip().rstrip("/")
        warm = WORKERS if label == "fixed" else 1
        wait_for(lambda: running(url) == warm)
        start = time.time()
        bench = subprocess.run([NIMBUS, "bench", "classify", "--url", url, "--images", f"{work}/images",
                                "--expect", f"{work}/expect.csv", "--requests", str(REQUESTS),
                                "--concurrency", str(REQUESTS), "--wait", "120"],
                               capture_output=True, text=True)
        end = time.time()
        line = next((l for l in bench.stdout.splitlines() if "responses are correct" in l), bench.stdout)
        if bench.returncode != 0 or f"{REQUESTS} responses are correct" not in line:
            raise SystemExit(f"{label}: {bench.stdout}{bench.stderr}")
        if window is None:
            wait_for(lambda: running(url) == 1)
            tail_end = time.time()
        else:  # a fixed pool never shrinks: the same window as the autoscaled run's
            tail_end = start + window
            time.sleep(max(0.0, tail_end - time.time()) + 1)
        samples = fleet(url)["samples"]
        in_burst = [s for s in samples if start * 1000 <= s["at_ms"] <= end * 1000]
        peak = max(s["running"] for s in in_burst)
        during = worker_seconds(samples, start * 1000, end * 1000)
        tail = worker_seconds(samples, start * 1000, tail_end * 1000)
        row = f"| {label} | {REQUESTS} | {end - start:.2f} s | {peak} | {during:.1f} | {tail:.1f} ({tail_end - start:.0f} s) |"
        return row, tail_end - start
    finally:
        up.terminate()
        up.wait(timeout=60)


def main():
    work = tempfile.mkdtemp()
    os.makedirs(f"{work}/images")
    for name in EXPECT:
        subprocess.run(["cp", f"{PHOTOS}/{name}", f"{work}/images/"], check=True)
    with open(f"{work}/expect.csv", "w") as f:
        f.write("file,words\n" + "".join(f"{n},{w}\n" for n, w in EXPECT.items()))
    print("| app tier | requests | time to the last answer | peak workers | worker-seconds to the last answer | worker-seconds until the autoscaled tier is back at its minimum |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    row, window = run("autoscaled (backlog, min 1)", ["--min", "1", "--max", str(WORKERS)], work)
    print(row)
    print(run("fixed", ["--min", str(WORKERS), "--max", str(WORKERS)], work, window)[0])


main()
