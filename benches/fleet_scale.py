#!/usr/bin/env python3
"""What a fleet of costguards costs Prometheus: N costguard instances (each guarding a sleep
on 8 fake GPUs) scraped by Debian's Prometheus; prints the head series, samples ingested per
second, Prometheus' RSS, scrape durations and each costguard's CPU and RSS, and extrapolates
linearly to 1,000 pods x 8 GPUs at a 15 s scrape interval.

Run by hand after `cargo build --release -p costguard -p fake-nvml`:
    python3 benches/fleet_scale.py [--pods 50] [--seconds 60] [--scrape 5s]
"""
import argparse, json, os, socket, subprocess, tempfile, time, urllib.parse, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "costguard")
LIB = os.path.join(ROOT, "target", "release", "libnvidia_ml.so")
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def stat(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    cpu = (int(f[11]) + int(f[12])) / TICK
    rss = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")) / 1024
    return cpu, rss


def query(port, q):
    url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(q)}"
    r = json.load(urllib.request.urlopen(url, timeout=5))["data"]["result"]
    return float(r[0]["value"][1]) if r else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=50)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--scrape", default="5s")
    a = ap.parse_args()
    d = tempfile.mkdtemp()
    scen = os.path.join(d, "s.json")
    json.dump({"gpus": [{"name": "NVIDIA H100 80GB HBM3", "uuid": f"GPU-{i:08x}",
                         "timeline": [{"at": 0, "util": 70, "mem_used": 40 << 30,
                                       "power_mw": 450000}]} for i in range(8)]}, open(scen, "w"))
    ports = [free_port() for _ in range(a.pods)]
    pp = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSTGUARD_")}
    env.update(FAKE_NVML_SCENARIO=scen, COSTGUARD_STATE_DIR=os.path.join(d, "state"))
    pods = [subprocess.Popen([BIN, "-q", "--gpu", "nvml", "--nvml-lib", LIB, "--listen",
                              f"127.0.0.1:{p}", "--max-usd", "1000", "--",
                              "sleep", str(a.seconds + 120)], env=env,
                             stdout=subprocess.DEVNULL,
                             stderr=open(os.path.join(d, f"pod-{p}.err"), "w")) for p in ports]
    cfg = os.path.join(d, "prometheus.yml")
    targets = ", ".join(f"'127.0.0.1:{p}'" for p in ports)
    open(cfg, "w").write(f"global:\n  scrape_interval: {a.scrape}\nscrape_configs:\n"
                         f"  - job_name: costguard\n    static_configs:\n      - targets: [{targets}]\n"
                         f"  - job_name: prometheus\n    static_configs:\n      - targets: ['127.0.0.1:{pp}']\n")
    prom = subprocess.Popen(["prometheus", f"--config.file={cfg}",
                             f"--storage.tsdb.path={os.path.join(d, 'tsdb')}",
                             f"--web.listen-address=127.0.0.1:{pp}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(5)
        dead = [p for p in pods if p.poll() is not None]
        if dead:
            raise SystemExit(f"{len(dead)} pods exited early; see {d}/pod-*.err")
        c0 = [stat(p.pid)[0] for p in pods]
        t0 = time.time()
        time.sleep(a.seconds)
        t1 = time.time()
        cg = [stat(p.pid) for p in pods]
        head = query(pp, "prometheus_tsdb_head_series")
        per_pod = query(pp, "avg(scrape_samples_scraped{job=\"costguard\"})")
        ingest = query(pp, "rate(prometheus_tsdb_head_samples_appended_total[30s])")
        p99 = query(pp, "quantile(0.99, scrape_duration_seconds{job=\"costguard\"})")
        _, prom_rss = stat(prom.pid)
        up = query(pp, "sum(up{job=\"costguard\"})")
    finally:
        prom.terminate()
        for p in pods:
            p.terminate()
        for p in pods + [prom]:
            p.wait()
    cpu = [(c[0] - b) / (t1 - t0) * 100 for c, b in zip(cg, c0)]
    rss = [c[1] for c in cg]
    print(f"{a.pods} costguard pods x 8 fake GPUs, scraped every {a.scrape}, {a.seconds} s")
    print(f"  targets up                 {up:.0f}")
    print(f"  series per pod (scraped)   {per_pod:.0f}")
    print(f"  Prometheus head series     {head:.0f}")
    print(f"  samples appended / s       {ingest:.0f}")
    print(f"  scrape duration p99        {1000 * p99:.2f} ms")
    print(f"  Prometheus RSS             {prom_rss:.0f} MiB")
    print(f"  costguard CPU per pod      {sum(cpu) / len(cpu):.3f} % of a core (max {max(cpu):.3f})")
    print(f"  costguard RSS per pod      {sum(rss) / len(rss):.1f} MiB (max {max(rss):.1f})")
    print("extrapolated to 1,000 pods x 8 GPUs, 15 s scrape:")
    print(f"  head series                {per_pod * 1000:.0f}")
    print(f"  samples appended / s       {per_pod * 1000 / 15:.0f}")
    per_series = prom_rss * 1024 / head
    print(f"  Prometheus RSS             {per_series * per_pod * 1000 / 1024:.0f} MiB at the measured "
          f"{per_series:.2f} KiB of RSS per head series (an upper bound: it charges Prometheus' fixed "
          f"memory to the series)")


if __name__ == "__main__":
    main()
