#!/usr/bin/env python3
"""What asking the box costs the job's start: `costguard -q --no-listen -- true` with
detection off, on a box with no metadata server, with one that never answers, and with an
AWS one that answers — each beside `timeout 10 true`, median of N interleaved runs, inside a
network namespace of its own (root, as CI). Also how long detection itself took there
(`costguard check`'s price line), which the job never waits for.

    benches/detect_cost.py [N]      # default N=30; build first: cargo build --release

Prints a table. Not a test: numbers depend on the machine.
"""
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE = os.path.join(ROOT, "tests/cloud/fake_box.py")


def binary():
    for p in ("target/release/costguard", "target/debug/costguard"):
        full = os.path.join(ROOT, p)
        if os.path.exists(full):
            return full
    sys.exit("build costguard first: cargo build --release")


CASES = [
    ("--provider none", "none", None),
    ("auto, no metadata server (no route)", "auto", None),
    ("auto, a server that never answers", "auto", "silent"),
    ("auto, AWS IMDSv2 answering (p4d)", "auto", "aws --type p4d.24xlarge --region us-west-2"),
]


def inner(n, provider, cg):
    """Runs inside the namespace: N interleaved pairs, medians in ms, and the check's line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSTGUARD_")}
    env.update(COSTGUARD_PROVIDER=provider, COSTGUARD_GPU="none",
               COSTGUARD_STATE_DIR=os.environ["BENCH_STATE"])
    ours, theirs = [], []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run([cg, "-q", "--no-listen", "--", "true"], env=env, check=True)
        ours.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        subprocess.run(["timeout", "10", "true"], check=True)
        theirs.append((time.perf_counter() - t) * 1000)
    check = subprocess.run([cg, "check", "--max-wall", "1m", "--notify-command", "true",
                            "--on-exit", ":", "--", "true"], env=env, capture_output=True, text=True)
    price = next((l for l in check.stdout.splitlines() if l.startswith("price:")), "")
    print(json.dumps({"ours": statistics.median(ours), "timeout": statistics.median(theirs),
                      "price": price}))


def outer(n):
    cg = binary()
    rows = []
    for name, provider, fake in CASES:
        state = subprocess.run(["mktemp", "-d"], capture_output=True, text=True).stdout.strip()
        setup = "ip link set lo up"
        if fake:
            setup += (f"; ip addr add 169.254.169.254/32 dev lo; python3 {FAKE} {fake} --bind 169.254.169.254"
                      f" --port 80 --log {state}/req.jsonl --ready {state}/ready & f=$!;"
                      f" while [ ! -s {state}/ready ]; do sleep 0.01; done")
        script = (f"{setup}; BENCH_STATE={state}/s python3 {os.path.abspath(__file__)} --inner {n} {provider} {cg};"
                  f" rc=$?; [ -n \"${{f:-}}\" ] && kill $f; exit $rc")
        out = subprocess.run(["unshare", "--net", "sh", "-c", script], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"{name}: {out.stderr}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append((name, r))
        subprocess.run(["rm", "-rf", state])
    print(f"costguard -q --no-listen -- true vs timeout 10 true, median of {n} interleaved pairs ({os.path.relpath(cg, ROOT)})\n")
    print(f"| {'box':<38} | costguard ms | timeout ms | difference ms | detection (costguard check) |")
    print(f"|{'-' * 40}|--------------|------------|---------------|-----------------------------|")
    for name, r in rows:
        d = r["ours"] - r["timeout"]
        price = r["price"].replace("price:", "").strip()
        print(f"| {name:<38} | {r['ours']:12.1f} | {r['timeout']:10.1f} | {d:13.1f} | {price[:90]} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--inner":
        inner(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        outer(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
