#!/usr/bin/env python3
"""/metrics latency under 100 scrapes/s with 8 (fake) GPUs, and the sampling interval's
jitter while being scraped; Debian's prometheus-node-exporter measured the same way, on the
same machine, as a reference exporter.

Run by hand after `cargo build --release -p costguard -p fake-nvml` and
`apt-get install prometheus-node-exporter`:
    python3 benches/metrics_latency.py [--seconds 30] [--rate 100] [--interval 250ms]

Latency is request sent -> whole body read, on one keep-alive connection (as Prometheus
scrapes), paced at --rate. Jitter: costguard_last_sample_timestamp_seconds is the wall time
each sample was taken; the gaps between consecutive distinct values, against the interval,
with no scrapes (read from /status once every 2 s) and under the scrape load.
"""
import argparse, http.client, json, os, shutil, socket, statistics, subprocess, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "costguard")
LIB = os.path.join(ROOT, "target", "release", "libnvidia_ml.so")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_http(port, path, needle=b"", limit=15):
    end = time.time() + limit
    while time.time() < end:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            body = c.getresponse().read()
            if needle in body:
                return body
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"nothing on :{port}{path}")


def last_sample(body):
    for line in body.split(b"\n"):
        if line.startswith(b"costguard_last_sample_timestamp_seconds "):
            return float(line.split()[1])
    return None


def scrape_load(port, seconds, rate, on_body=None):
    """Paced GETs of /metrics on one keep-alive connection; returns latencies in ms."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    lat, period = [], 1.0 / rate
    t_next = time.perf_counter()
    end = t_next + seconds
    while t_next < end:
        now = time.perf_counter()
        if now < t_next:
            time.sleep(t_next - now)
        t0 = time.perf_counter()
        conn.request("GET", "/metrics")
        body = conn.getresponse().read()
        lat.append((time.perf_counter() - t0) * 1000)
        if on_body:
            on_body(body)
        t_next += period
    return lat


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def gaps(stamps):
    s = sorted(set(stamps))
    return [b - a for a, b in zip(s, s[1:])]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--rate", type=int, default=100)
    ap.add_argument("--interval", default="250ms")
    a = ap.parse_args()
    interval = float(a.interval[:-2]) / 1000 if a.interval.endswith("ms") else float(a.interval[:-1])
    d = tempfile.mkdtemp()
    scen = os.path.join(d, "s.json")
    json.dump({"gpus": [{"name": "NVIDIA H100 80GB HBM3", "uuid": f"GPU-{i:08x}",
                         "timeline": [{"at": 0, "util": 70, "mem_used": 40 << 30,
                                       "power_mw": 450000}]} for i in range(8)]}, open(scen, "w"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSTGUARD_")}
    env["FAKE_NVML_SCENARIO"] = scen
    cg = subprocess.Popen([BIN, "-q", "--gpu", "nvml", "--nvml-lib", LIB, "--interval", a.interval,
                           "--listen", f"127.0.0.1:{port}", "--", "sleep", "100000"], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [cg]
    try:
        body = wait_http(port, "/metrics", b'costguard_gpu_utilization_ratio{gpu="7"')
        series = sum(1 for l in body.split(b"\n") if l and not l.startswith(b"#"))

        # Quiet phase: sample times read from /status every 2 s (no scrape load).
        quiet = []
        t_end = time.time() + a.seconds
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        seen = set()
        while time.time() < t_end:
            c.request("GET", "/metrics")
            v = last_sample(c.getresponse().read())
            time.sleep(interval * 0.9)  # catch each sample; 1 request per interval
            if v is not None:
                seen.add(v)
        quiet = gaps(seen)

        stamps = []
        lat = scrape_load(port, a.seconds, a.rate,
                          lambda b: stamps.append(last_sample(b)))
        loaded = gaps([s for s in stamps if s is not None])

        ne = shutil.which("prometheus-node-exporter")
        ne_lat, ne_series = None, None
        if ne:
            np_ = free_port()
            procs.append(subprocess.Popen([ne, f"--web.listen-address=127.0.0.1:{np_}"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            nb = wait_http(np_, "/metrics", b"node_")
            ne_series = sum(1 for l in nb.split(b"\n") if l and not l.startswith(b"#"))
            ne_lat = scrape_load(np_, a.seconds, a.rate)
    finally:
        for p in procs:
            p.terminate()
            p.wait()

    print(f"{a.rate} scrapes/s for {a.seconds} s on one keep-alive connection; 8 fake GPUs; "
          f"sampling every {a.interval}")
    print(f"{'exporter':26} {'series':>7} {'scrapes':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    print(f"{'costguard':26} {series:7d} {len(lat):8d} {pct(lat, 50):8.3f} {pct(lat, 99):8.3f} "
          f"{max(lat):8.3f}")
    if ne_lat:
        print(f"{'prometheus-node-exporter':26} {ne_series:7d} {len(ne_lat):8d} "
              f"{pct(ne_lat, 50):8.3f} {pct(ne_lat, 99):8.3f} {max(ne_lat):8.3f}")
    else:
        print("prometheus-node-exporter: not installed, not measured")
    print(f"{'sampling interval':26} {'gaps':>7} {'mean ms':>8} {'p99 |dev| ms':>13} {'max |dev| ms':>13}")
    for name, g in (("no scrapes", quiet), (f"{a.rate} scrapes/s", loaded)):
        dev = [abs(x - interval) * 1000 for x in g]
        print(f"{name:26} {len(g):7d} {1000 * statistics.mean(g):8.2f} {pct(dev, 99):13.3f} "
              f"{max(dev):13.3f}")


if __name__ == "__main__":
    main()
