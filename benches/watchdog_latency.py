#!/usr/bin/env python3
"""Watchdog detection latency and false kills, on the fake NVML.

Run by hand after `cargo build --release -p costguard -p fake-nvml`:
    python3 benches/watchdog_latency.py [--trials 5] [--soak-seconds 20]

Latency: from the moment idleness or the stall begins to the moment the job's whole tree
is gone (costguard exits only after that), minus the configured window. The target is at
most one sampling interval plus the kill grace.
  idle:  the fake GPUs drop from 90 % to 1 % at a scripted wall-clock instant (the
         scenario's epoch_unix), the job keeps running.
  stall: a job at 100 % GPU prints "step N" and then hangs; the instant of its last line
         is written by the job itself.
  stall+grace: the same, but the hung job ignores SIGTERM, so the kill grace is spent too.
Soak: healthy scenarios run side by side with tight watchdogs (idle and stall windows of
2 s); any kill is a false kill.
"""
import argparse, json, os, random, statistics, subprocess, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "costguard")
LIB = os.path.join(ROOT, "target", "release", "libnvidia_ml.so")


def gpu(i, timeline, **kw):
    return dict(name="NVIDIA H100 80GB HBM3", uuid=f"GPU-{i:08x}", timeline=timeline, **kw)


def start(d, name, scenario, args, cmd, **popen):
    path = os.path.join(d, f"{name}.json")
    json.dump(scenario, open(path, "w"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSTGUARD_")}
    env.update(FAKE_NVML_SCENARIO=path, COSTGUARD_LISTEN="127.0.0.1:0")
    return subprocess.Popen([BIN, "-q", "--gpu", "nvml", "--nvml-lib", LIB] + args + ["--"] + cmd,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            **popen)


def idle_trial(d, interval, window, grace):
    # A random phase against costguard's sampling clock, so the wait for the next sample
    # is measured, not designed away.
    t_idle = time.time() + 2.0 + random.uniform(0, secs(interval))
    scen = {"epoch_unix": t_idle - 2.0,
            "gpus": [gpu(i, [{"at": 0, "util": 90}, {"at": 2.0, "util": 1}]) for i in range(2)]}
    p = start(d, "idle", scen, ["--interval", interval, "--idle", window, "--kill-grace", grace],
              ["sleep", "120"])
    err = p.communicate()[1]
    gone = time.time()
    assert p.returncode == 124 and "idle" in err, err
    return gone - t_idle


def stall_trial(d, interval, window, grace, ignore_term):
    mark = os.path.join(d, "last-line")
    job = ("import signal, sys, time\n"
           + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore_term else "")
           + "for i in range(1, 11):\n"
           "    print('step', i, flush=True); t = time.time(); time.sleep(0.1)\n"
           f"open({mark!r}, 'w').write(repr(t))\n"
           "while True: time.sleep(1)\n")
    scen = {"gpus": [gpu(0, [{"at": 0, "util": 100}])]}
    p = start(d, "stall", scen, ["--interval", interval, "--stall", window, "--kill-grace", grace,
                                 "--progress-regex", r"step (\d+)"], ["python3", "-c", job])
    err = p.communicate()[1]
    gone = time.time()
    assert p.returncode == 124 and "stall" in err, err
    return gone - float(open(mark).read())


def secs(s):
    return float(s.rstrip("ms")) / (1000 if s.endswith("ms") else 1)


def soak(d, seconds):
    """Healthy jobs that must never be killed."""
    steady = "i=0; while :; do i=$((i+1)); echo step $i; sleep 0.2; done"
    slow_steps = "i=0; while :; do i=$((i+1)); echo step $i; sleep 1.5; done"
    cases = {
        # busy GPUs, steady progress
        "busy": ([gpu(i, [{"at": 0, "util": 85}]) for i in range(4)], steady, []),
        # utilization just above the threshold
        "barely-busy": ([gpu(0, [{"at": 0, "util": 6}])], steady, []),
        # utilization dipping to 0 for 1 s every 3 s (shorter than the idle window)
        "dips": ([gpu(0, [{"at": t, "util": 0 if t % 3 == 2 else 90} for t in range(seconds + 10)])],
                 steady, []),
        # a long setup at 0 % under --idle-grace, then work
        "setup": ([gpu(0, [{"at": 0, "util": 0}, {"at": 4, "util": 95}])], steady,
                  ["--idle-grace", "5s"]),
        # progress slower than the output, but inside the stall window
        "slow-steps": ([gpu(0, [{"at": 0, "util": 99}])], slow_steps, []),
        # a GPU lost mid-run: unknown is never idle
        "lost-gpu": ([gpu(0, [{"at": 0, "util": 90}], lost_after=3.0),
                      gpu(1, [{"at": 0, "util": 90}])], steady, []),
        # telemetry hung for 4 s: unknown, not idle
        "hung-nvml": ([gpu(0, [{"at": 0, "util": 90}])], steady, []),
    }
    procs = {}
    for name, (gpus, script, extra) in cases.items():
        scen = {"gpus": gpus}
        if name == "hung-nvml":
            scen["hang"] = [{"call": "nvmlDeviceGetUtilizationRates", "after": 2, "secs": 4}]
        args = ["--interval", "500ms", "--idle", "2s", "--stall", "2s",
                "--progress-regex", r"step (\d+)", "--max-wall", f"{seconds}s"] + extra
        procs[name] = start(d, name, scen, args, ["sh", "-c", script])
    kills = {}
    for name, p in procs.items():
        err = p.communicate()[1]
        # --max-wall ends every case: that is the only kill allowed.
        kills[name] = [l for l in err.splitlines() if "killed" in l and "wall:" not in l]
    return kills


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--soak-seconds", type=int, default=20)
    a = ap.parse_args()
    d = tempfile.mkdtemp()
    print(f"{'watchdog':14} {'interval':>8} {'window':>7} {'grace':>6} {'n':>3} "
          f"{'overshoot p50':>14} {'max':>7} {'target':>7}")
    rows = [("idle", "1s", "5s", "1s", False), ("idle", "500ms", "3s", "1s", False),
            ("stall", "1s", "3s", "1s", False), ("stall+grace", "1s", "3s", "2s", True)]
    for kind, interval, window, grace, ignore in rows:
        over = []
        for _ in range(a.trials):
            if kind == "idle":
                lat = idle_trial(d, interval, window, grace)
            else:
                lat = stall_trial(d, interval, window, grace, ignore)
            over.append(lat - secs(window))
        target = secs(interval) + secs(grace)
        print(f"{kind:14} {interval:>8} {window:>7} {grace:>6} {len(over):3d} "
              f"{statistics.median(over):13.3f}s {max(over):6.3f}s {target:6.3f}s")
    t = time.time()
    kills = soak(d, a.soak_seconds)
    total = sum(len(v) for v in kills.values())
    print(f"soak: {len(kills)} healthy scenarios side by side, {a.soak_seconds} s each "
          f"({time.time() - t:.0f} s wall): false kills {total}")
    for name, v in kills.items():
        for line in v:
            print(f"  {name}: {line}")


if __name__ == "__main__":
    main()
