#!/usr/bin/env python3
"""What costguard costs a job's start and a ceiling's kill, beside coreutils `timeout`.

    benches/start_cost.py [--pairs 30] [--kills 10] [--bin PATH] [--baseline PATH]
    # build first: cargo build --release

Three tables, every run with COSTGUARD_PROVIDER=none (asking the box is off the start path
by design: benches/detect_cost.py measures it, in a network namespace) and a fresh temporary
COSTGUARD_STATE_DIR:

1. start: `costguard -q --no-listen -- true` against `timeout 10 true`, N interleaved pairs,
   median and p90 of the whole command's wall time;
2. overshoot: `timeout 1 sleep 5` against `costguard -q --no-listen --max-wall 1s -- sleep 5`
   and a dollar ceiling that lands at the same second (`--usd-per-hour 3600 --max-usd 1`),
   interleaved; overshoot = the command's wall time - 1 s;
3. where the time goes: the same start with COSTGUARD_TIMING=1 (each step writes its
   CLOCK_MONOTONIC instant to stderr, `src/timing.rs`), medians of each step's offset from
   the benchmark's spawn and of the gap since the step before;
4. where the overshoot goes: `--max-wall 1s -- sleep 5` with COSTGUARD_TIMING=1, each step
   from the ceiling's instant (costguard's clock starts at `main`: the ceiling is main + 1 s)
   to the process's end.

Not a test: numbers depend on the machine and on what else runs there (the load average is
printed with them).
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Each step, in the order a run reaches it, and what happens between it and the one before.
STEPS = [
    ("main", "exec of costguard, dynamic linking, Rust start-up"),
    ("clap", "command-line parsing"),
    ("parsed", "logging set-up"),
    ("resolved", "settings: config file, environment, flags"),
    ("runtime", "tokio runtime"),
    ("prepared", "prices and NVML (auto: the library looked for)"),
    ("claimed", "run id reserved, run directory locked"),
    ("recorded", "first ledger written"),
    ("opened", "metrics, config.json, started event"),
    ("leaf", "cgroup leaf created"),
    ("holder-started", "holder started"),
    ("holder", "holder's own start (exec and start-up, when it is exec'd)"),
    ("job-spawned", "job started inside the leaf"),
    ("job-ended", "job ran (true)"),
    ("holder-reaped", "holder's exit seen by costguard"),
    ("ledger-save", "ending: events, verdict, series"),
    ("ledger-saved", "final ledger written durably"),
    ("returned", "report, notifications, linger"),
    ("exit", "runtime shut down"),
]


def binary(given):
    if given:
        return given
    for p in ("target/release/costguard", "target/debug/costguard"):
        full = os.path.join(ROOT, p)
        if os.path.exists(full):
            return full
    sys.exit("build costguard first: cargo build --release")


def environment(state):
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSTGUARD_")}
    env.update(COSTGUARD_PROVIDER="none", COSTGUARD_STATE_DIR=state)
    return env


def timed(cmd, env):
    t = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return (time.perf_counter() - t) * 1000


def stats(xs):
    xs = sorted(xs)
    return statistics.median(xs), xs[min(len(xs) - 1, int(len(xs) * 0.9))]


def starts(cg, env, n, base=None):
    ours, theirs, based = [], [], []
    for _ in range(n):
        ours.append(timed([cg, "-q", "--no-listen", "--", "true"], env))
        theirs.append(timed(["timeout", "10", "true"], env))
        if base:
            based.append(timed([base, "-q", "--no-listen", "--", "true"], env))
    return ours, theirs, based


def overshoots(cg, env, n, base=None):
    cases = {
        "timeout 1 sleep 5": ["timeout", "1", "sleep", "5"],
        "costguard --max-wall 1s": [cg, "-q", "--no-listen", "--max-wall", "1s", "--",
                                    "sleep", "5"],
        "costguard --max-usd 1 at $3600/h": [cg, "-q", "--no-listen", "--usd-per-hour", "3600",
                                            "--max-usd", "1", "--", "sleep", "5"],
    }
    if base:
        cases["baseline --max-wall 1s"] = [base, "-q", "--no-listen", "--max-wall", "1s", "--",
                                           "sleep", "5"]
    out = {k: [] for k in cases}
    for _ in range(n):
        for name, cmd in cases.items():
            out[name].append(timed(cmd, env) - 1000)
    return out


def breakdown(cg, env, n):
    """Each step's offset from the spawn and gap since the step before, in ms, per run."""
    env = dict(env, COSTGUARD_TIMING="1")
    offsets = {s: [] for s, _ in STEPS}
    totals = []
    for _ in range(n):
        t0 = time.monotonic_ns()
        p = subprocess.run([cg, "-q", "--no-listen", "--", "true"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        totals.append((time.monotonic_ns() - t0) / 1e6)
        seen = {}
        for line in p.stderr.splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[0] == "costguard-timing":
                seen.setdefault(parts[3], (int(parts[1]) - t0) / 1e6)
        for s in offsets:
            if s in seen:
                offsets[s].append(seen[s])
    return offsets, totals


KILL_STEPS = [
    ("deadline", "the deadline's timer wakes the loop"),
    ("terminate", "the killed event; processes outside the leaf looked for (a /proc walk); protocol begins"),
    ("job-ended", "SIGTERM reaches the job; the holder reaps it"),
    ("holder-reaped", "the holder exits (no child left); costguard sees it"),
    ("ledger-save", "ending: verdict, events, series"),
    ("ledger-saved", "final ledger written durably (report and series beside it)"),
    ("returned", "report, notifications, linger"),
    ("exit", "runtime shut down"),
]


def kill_breakdown(cg, env, n):
    """Each kill step's median offset from the ceiling's instant (main + 1 s), in ms."""
    env = dict(env, COSTGUARD_TIMING="1")
    offsets = {s: [] for s, _ in KILL_STEPS}
    ends = []
    for _ in range(n):
        p = subprocess.run([cg, "-q", "--no-listen", "--max-wall", "1s", "--", "sleep", "5"],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        gone = time.monotonic_ns()
        seen = {}
        for line in p.stderr.splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[0] == "costguard-timing":
                seen.setdefault(parts[3], int(parts[1]))
        if "main" not in seen:
            continue
        due = seen["main"] + 1_000_000_000
        for s in offsets:
            if s in seen:
                offsets[s].append((seen[s] - due) / 1e6)
        ends.append((gone - due) / 1e6)
    return offsets, ends


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=30)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--bin")
    ap.add_argument("--baseline", help="another costguard build (e.g. an earlier commit's), "
                    "interleaved in the start and overshoot tables: the same machine state")
    a = ap.parse_args()
    cg = binary(a.bin)
    state = tempfile.mkdtemp(prefix="costguard-bench-")
    try:
        env = environment(state)
        subprocess.run([cg, "-q", "--no-listen", "--", "true"], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # warm the cache
        ours, theirs, based = starts(cg, env, a.pairs, a.baseline)
        over = overshoots(cg, env, a.kills, a.baseline)
        offsets, totals = breakdown(cg, env, a.pairs)
        kill_offsets, kill_ends = kill_breakdown(cg, env, a.kills)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    load = os.getloadavg()
    print(f"{os.path.relpath(cg, ROOT) if cg.startswith(ROOT) else cg}; {os.cpu_count()} cores, "
          f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; state dir on "
          f"{tempfile.gettempdir()}\n")
    print(f"start, {a.pairs} interleaved pairs      median ms    p90 ms")
    for name, xs in (("timeout 10 true", theirs), ("costguard -q --no-listen -- true", ours)):
        m, p = stats(xs)
        print(f"  {name:34} {m:9.2f} {p:9.2f}")
    d = [o - t for o, t in zip(ours, theirs)]
    print(f"  {'difference (pairwise)':34} {stats(d)[0]:9.2f} {stats(d)[1]:9.2f}")
    if based:
        m, p = stats(based)
        print(f"  {'baseline -q --no-listen -- true':34} {m:9.2f} {p:9.2f}")
        d = [o - t for o, t in zip(based, theirs)]
        print(f"  {'baseline difference (pairwise)':34} {stats(d)[0]:9.2f} {stats(d)[1]:9.2f}")
    print()
    print(f"ceiling overshoot, {a.kills} interleaved runs   median ms    p90 ms")
    for name, xs in over.items():
        m, p = stats(xs)
        print(f"  {name:38} {m:9.2f} {p:9.2f}")
    print()
    print(f"where the time goes (COSTGUARD_TIMING=1, {a.pairs} runs; ms from the spawn)")
    print(f"  {'step':15} {'at':>7} {'gap':>7}  what the gap is")
    prev = None
    for step, what in STEPS:
        xs = offsets[step]
        if not xs:
            continue
        at = statistics.median(xs)
        gap = at - prev if prev is not None else at
        print(f"  {step:15} {at:7.2f} {gap:7.2f}  {what}")
        prev = at
    end = statistics.median(totals)
    print(f"  {'(process gone)':15} {end:7.2f} {end - (prev or 0):7.2f}  exit, seen by the waiting parent")
    print()
    print(f"where the overshoot goes (--max-wall 1s, COSTGUARD_TIMING=1, {a.kills} runs; ms after"
          " the ceiling's instant)")
    print(f"  {'step':15} {'at':>7} {'gap':>7}  what the gap is")
    prev = 0.0
    for step, what in KILL_STEPS:
        xs = kill_offsets[step]
        if not xs:
            continue
        at = statistics.median(xs)
        print(f"  {step:15} {at:7.2f} {at - prev:7.2f}  {what}")
        prev = at
    if kill_ends:
        end = statistics.median(kill_ends)
        print(f"  {'(process gone)':15} {end:7.2f} {end - prev:7.2f}  exit, seen by the waiting parent")


if __name__ == "__main__":
    main()
