#!/usr/bin/env python3
"""CPU and memory of costguard sampling 8 (fake) GPUs at 1 Hz, read from /proc,
side by side with gpustat (PyPI) watching the same fake GPUs in the same run.

Run by hand after `cargo build --release -p costguard -p fake-nvml`:
    python3 -m venv /tmp/gs && /tmp/gs/bin/pip install gpustat
    python3 benches/sampling_cost.py [--seconds 60] [--gpus 8] [--gpustat /tmp/gs/bin/gpustat]

gpustat loads the fake through LD_LIBRARY_PATH (a directory holding a
libnvidia-ml.so.1 link to the fake), exactly as it would load a real driver.
Without --gpustat (or with gpustat not on PATH) only costguard is measured.
"""
import argparse, json, os, shutil, subprocess, tempfile, time

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
    ap.add_argument("--interval", type=float, default=1.0, help="costguard's sampling interval, seconds")
    ap.add_argument("--gpustat", default=shutil.which("gpustat"))
    a = ap.parse_args()
    d = tempfile.mkdtemp()
    scen = {"gpus": [{"name": "NVIDIA H100 80GB HBM3", "uuid": f"GPU-{i:08x}",
                      "timeline": [{"at": 0, "util": 70, "mem_used": 40 << 30, "power_mw": 450000}]}
                     for i in range(a.gpus)]}
    path = os.path.join(d, "s.json")
    json.dump(scen, open(path, "w"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSTGUARD_")}
    env.update(FAKE_NVML_SCENARIO=path, COSTGUARD_LISTEN="127.0.0.1:0")
    procs = {"costguard": subprocess.Popen(
        [BIN, "-q", "--gpu", "nvml", "--nvml-lib", LIB, "--interval", f"{int(a.interval * 1000)}ms",
         "--", "sleep", str(a.seconds + 30)], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)}
    if a.gpustat:
        libdir = os.path.join(d, "lib")
        os.mkdir(libdir)
        os.symlink(LIB, os.path.join(libdir, "libnvidia-ml.so.1"))
        genv = dict(env, LD_LIBRARY_PATH=libdir)
        procs["gpustat -i 1"] = subprocess.Popen(
            [a.gpustat, "-i", "1", "--no-color"], env=genv,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # One-shot cost: what a cron/sidecar polling `gpustat --json` pays per sample.
        t = time.time()
        r = subprocess.run(["/usr/bin/time", "-f", "%U %S %M", a.gpustat, "--json"], env=genv,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        one_shot = r.stderr.strip().splitlines()[-1].split()
        one_shot_wall = time.time() - t
    time.sleep(3)  # past start-up and NVML init
    c0 = {n: cpu_seconds(p.pid) for n, p in procs.items()}
    t0 = time.time()
    peak = {n: 0.0 for n in procs}
    while time.time() - t0 < a.seconds:
        time.sleep(1)
        for n, p in procs.items():
            peak[n] = max(peak[n], rss_mib(p.pid))
    c1 = {n: cpu_seconds(p.pid) for n, p in procs.items()}
    t1 = time.time()
    rss = {n: rss_mib(p.pid) for n, p in procs.items()}
    for p in procs.values():
        p.terminate()
        p.wait()
    w = t1 - t0
    print(f"gpus={a.gpus} interval={a.interval:g}s window={w:.0f}s clock_ticks={TICK}/s (one tick = {1000 / TICK:.0f} ms)")
    print(f"{'process':14} {'cpu % of a core':>16} {'cpu ms/sample':>14} {'rss MiB':>8} {'peak rss MiB':>13}")
    for n in procs:
        cpu = c1[n] - c0[n]
        per = a.interval if n == "costguard" else 1.0
        print(f"{n:14} {100 * cpu / w:16.3f} {1000 * cpu * per / w:14.2f} {rss[n]:8.1f} {peak[n]:13.1f}")
    if a.gpustat:
        u, s_, m = float(one_shot[0]), float(one_shot[1]), int(one_shot[2])
        print(f"{'gpustat --json':14} one-shot process: cpu {1000 * (u + s_):.0f} ms, "
              f"wall {1000 * one_shot_wall:.0f} ms, max rss {m / 1024:.1f} MiB")

if __name__ == "__main__":
    main()
