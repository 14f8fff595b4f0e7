#!/usr/bin/env python3
"""What the page costs: size and latency of /, /status, /series and /timeline.svg when the
series is full (720 points) for 8 GPUs and 200 marks, i.e. a week-long run on a full node.

Run by hand after `cargo build --release -p costguard -p fake-nvml`:
    python3 benches/page_cost.py [--requests 200]

A first short run creates the run; its series.json is then replaced by a synthetic full one
(720 points, 8 GPUs, 200 marks) and the run resumed with the same --run-id, so the endpoint
serves the biggest series it ever holds. Latency: request sent -> whole body read, one
keep-alive connection, sequential.
"""
import argparse, http.client, json, os, socket, statistics, subprocess, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "costguard")
LIB = os.path.join(ROOT, "target", "release", "libnvidia_ml.so")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    a = ap.parse_args()
    work = tempfile.mkdtemp()
    scen = {"gpus": [{"name": "NVIDIA H100 80GB HBM3", "uuid": f"GPU-{i:08x}-1111-2222-3333-444455556666",
                      "timeline": [{"at": 0, "util": 90, "mem_used": 60 << 30, "power_mw": 600000, "temp": 60}]}
                     for i in range(8)]}
    with open(os.path.join(work, "scen.json"), "w") as f:
        json.dump(scen, f)
    env = dict(os.environ, COSTGUARD_STATE_DIR=os.path.join(work, "state"), COSTGUARD_GPU="nvml",
               COSTGUARD_NVML_LIB=LIB, FAKE_NVML_SCENARIO=os.path.join(work, "scen.json"))
    base = [BIN, "--quiet", "--usd-per-hour", "98", "--max-usd", "20000", "--run-id", "week"]
    subprocess.run(base + ["--no-listen", "--max-wall", "2s", "--", "sleep", "10"], env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time() - 7 * 86400
    step = 7 * 86400 / 720
    points = [{"t": t0 + k * step, "usd": 98 * k * step / 3600, "util": 85.0, "rss": 3e10,
               "gpus": [{"i": g, "u": 80.0 + g, "m": 70.0 + g} for g in range(8)]} for k in range(720)]
    marks = [{"t": t0 + k * 3000, "kind": "warning", "reason": "budget", "message": "x" * 80} for k in range(200)]
    run_dir = os.path.join(work, "state", "runs", "week")
    with open(os.path.join(run_dir, "series.json"), "w") as f:
        json.dump({"step": step, "points": points, "marks": marks}, f)
    port = free_port()
    p = subprocess.Popen(base + ["--listen", f"127.0.0.1:{port}", "--", "sleep", "120"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3)
        print(f"series.json on disk: {os.path.getsize(os.path.join(run_dir, 'series.json')) / 1024:.0f} KiB "
              f"(720 points x 8 GPUs, 200 marks)")
        print(f"{'path':<14} {'bytes':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        for path in ["/", "/status", "/series", "/timeline.svg"]:
            lat, size = [], 0
            for _ in range(a.requests):
                t = time.perf_counter()
                conn.request("GET", path)
                body = conn.getresponse().read()
                lat.append((time.perf_counter() - t) * 1000)
                size = len(body)
            lat.sort()
            print(f"{path:<14} {size:>9} {statistics.median(lat):>8.2f} {lat[int(len(lat) * 0.99) - 1]:>8.2f} {lat[-1]:>8.2f}")
        with open(f"/proc/{p.pid}/status") as f:
            rss = next(l for l in f if l.startswith("VmRSS")).split()[1]
        print(f"costguard RSS after {4 * a.requests} requests: {int(rss) / 1024:.1f} MiB")
    finally:
        p.kill()
        p.wait()


if __name__ == "__main__":
    main()
