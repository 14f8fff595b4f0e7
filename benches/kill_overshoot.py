#!/usr/bin/env python3
"""Overshoot, wrapper overhead and escaped processes: costguard against coreutils `timeout`.

Run by hand after `cargo build --release` (no GPU needed):
    python3 benches/kill_overshoot.py [--trials 20]
Prints a table. Overshoot is measured from the deadline (start + limit) until the wrapper has
exited; costguard exits only once the job's whole tree is gone, `timeout` once its child is.
"""
import argparse, os, shutil, signal, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "costguard")
ENV = {k: v for k, v in os.environ.items() if not k.startswith("COSTGUARD_")}
ENV.update(COSTGUARD_GPU="none", COSTGUARD_LISTEN="127.0.0.1:0")

def timed(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t

def escaping_job(d):
    return ("echo $$ > {d}/leader; "
            "setsid sh -c 'echo $$ > {d}/setsid; exec sleep 300' & "
            "sh -c 'trap \"\" TERM; echo $$ > {d}/stubborn; while :; do sleep 1; done' & "
            "sleep 300").format(d=d)

def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False

def escaped(wrapper):
    d = tempfile.mkdtemp()
    subprocess.run(wrapper + ["sh", "-c", escaping_job(d)], env=ENV,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids = []
    for name in ("leader", "setsid", "stubborn"):
        try:
            pids.append(int(open(os.path.join(d, name)).read()))
        except (OSError, ValueError):
            pass
    left = [p for p in pids if alive(p)]
    for p in left:  # clean up what escaped, by pid
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    shutil.rmtree(d, ignore_errors=True)
    return len(left)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--limit", type=float, default=0.5)
    a = ap.parse_args()
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release")
    lim = a.limit
    cg_wall = [BIN, "-q", "--kill-grace", "1s", "--max-wall", f"{int(lim*1000)}ms", "--"]
    cg_usd = [BIN, "-q", "--kill-grace", "1s", "--usd-per-hour", "3600", "--max-usd", f"{lim:.2f}", "--"]
    to = ["timeout", "-k", "1", str(lim)]
    rows = []
    for name, w in (("timeout", to), ("costguard --max-wall", cg_wall), ("costguard --max-usd", cg_usd)):
        over = [(timed(w + ["sleep", "30"]) - lim) * 1000 for _ in range(a.trials)]
        rows.append((name, statistics.median(over), max(over)))
    true_bare = [timed(["true"]) * 1000 for _ in range(a.trials)]
    true_to = [timed(["timeout", "100", "true"]) * 1000 for _ in range(a.trials)]
    true_cg = [timed([BIN, "-q", "--no-listen", "--", "true"]) * 1000 for _ in range(a.trials)]
    esc_to = escaped(["timeout", "-k", "1", str(lim)])
    esc_cg = escaped([BIN, "-q", "--kill-grace", "1s", "--max-wall", f"{int(lim*1000)}ms", "--"])
    print(f"trials={a.trials} limit={lim}s machine={os.uname().machine} cores={os.cpu_count()}")
    print(f"{'wrapper':24} {'overshoot p50 ms':>17} {'overshoot max ms':>17}")
    for name, med, mx in rows:
        print(f"{name:24} {med:17.2f} {mx:17.2f}")
    print()
    print(f"{'command':24} {'median ms':>10} {'overhead ms':>12}")
    b = statistics.median(true_bare)
    for name, xs in (("true", true_bare), ("timeout 100 true", true_to), ("costguard -- true", true_cg)):
        print(f"{name:24} {statistics.median(xs):10.2f} {statistics.median(xs) - b:12.2f}")
    print()
    print(f"{'wrapper':24} {'escaped processes (of 3)':>25}")
    print(f"{'timeout -k 1':24} {esc_to:25d}")
    print(f"{'costguard':24} {esc_cg:25d}")

if __name__ == "__main__":
    main()
