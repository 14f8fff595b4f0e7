#!/usr/bin/env python3
"""CPU and memory of costguard sampling 8 (fake) GPUs at 1 Hz, read from /proc.

Run by hand after `cargo build --release -p costguard -p fake-nvml`:
    python3 benches/sampling_cost.py [--seconds 60] [--gpus 8]
"""
import argparse, json, os, subprocess, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "costguard")
LIB = os.path.join(ROOT, "target", "release", "libnvidia_ml.so")
TICK = os.sysconf("SC_CLK_TCK")

def cpu_seconds(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK  # utime + stime

def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--gpus", type=int, default=8)
    a = ap.parse_args()
    d = tempfile.mkdtemp()
    scen = {"gpus": [{"name": "NVIDIA H100 80GB HBM3", "uuid": f"GPU-{i:08x}",
                      "timeline": [{"at": 0, "util": 70, "mem_used": 40 << 30, "power_mw": 450000}]}
                     for i in range(a.gpus)]}
    path = os.path.join(d, "s.json")
    json.dump(scen, open(path, "w"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSTGUARD_")}
    env.update(FAKE_NVML_SCENARIO=path, COSTGUARD_LISTEN="127.0.0.1:0")
    p = subprocess.Popen([BIN, "-q", "--gpu", "nvml", "--nvml-lib", LIB, "--interval", "1s",
                          "--", "sleep", str(a.seconds + 30)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(3)  # past start-up and NVML init
    c0, t0 = cpu_seconds(p.pid), time.time()
    peak = 0.0
    while time.time() - t0 < a.seconds:
        time.sleep(1)
        peak = max(peak, rss_mib(p.pid))
    c1, t1 = cpu_seconds(p.pid), time.time()
    rss = rss_mib(p.pid)
    p.terminate()
    p.wait()
    cpu = c1 - c0
    print(f"gpus={a.gpus} interval=1s window={t1 - t0:.0f}s clock_ticks={TICK}/s")
    print(f"{'process':12} {'cpu % of a core':>16} {'cpu ms/sample':>14} {'rss MiB':>8} {'peak rss MiB':>13}")
    print(f"{'costguard':12} {100 * cpu / (t1 - t0):16.3f} {1000 * cpu / (t1 - t0):14.2f} {rss:8.1f} {peak:13.1f}")

if __name__ == "__main__":
    main()
