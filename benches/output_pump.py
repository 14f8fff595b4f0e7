#!/usr/bin/env python3
"""The output pump beside `cat`: throughput of 100-byte lines through costguard (which reads
the job's output for progress when --stall is given) against a plain pipe into `cat`, and
costguard's memory while `yes` floods it.

Run by hand after `cargo build --release`:
    python3 benches/output_pump.py [--bytes 2000000000] [--flood-seconds 20] [--bin PATH]
        [--regex 'step (\d+)'] [--no-flood]
Prints a table. Targets: >= 500 MB/s of 100-byte lines, RSS <= 32 MiB; with --regex, the
--progress-regex path at >= 50 % of the --stall-only one.
"""
import argparse, os, subprocess, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINE = "x" * 99  # with its newline, 100 bytes


def rss_kib(pid, field):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def timed(cmd, env):
    t = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bytes", type=int, default=2_000_000_000)
    ap.add_argument("--flood-seconds", type=int, default=20)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "costguard"))
    ap.add_argument("--regex", help="also time --progress-regex REGEX (the lines never match)")
    ap.add_argument("--no-flood", action="store_true", help="skip the memory flood")
    a = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSTGUARD_")}
    env.update(COSTGUARD_GPU="none", COSTGUARD_STATE_DIR=tempfile.mkdtemp())
    job = f"yes {LINE} | head -c {a.bytes}"
    plain = timed(["sh", "-c", f"{job} | cat"], env)
    guarded = timed([a.bin, "-q", "--no-listen", "--stall", "1h", "--", "sh", "-c", job], env)
    mb = a.bytes / 1e6
    print(f"{'path':34} {'seconds':>8} {'MB/s':>8}")
    print(f"{'yes | head | cat':34} {plain:8.2f} {mb / plain:8.0f}")
    print(f"{'costguard --stall (reads output)':34} {guarded:8.2f} {mb / guarded:8.0f}")
    if a.regex:
        rx = timed([a.bin, "-q", "--no-listen", "--stall", "1h", "--progress-regex", a.regex,
                    "--", "sh", "-c", job], env)
        print(f"{'costguard --stall --progress-regex':34} {rx:8.2f} {mb / rx:8.0f}")
    if a.no_flood:
        return
    # Memory under a flood: `yes` for N seconds, costguard's RSS sampled every 100 ms.
    p = subprocess.Popen([a.bin, "-q", "--no-listen", "--stall", "1h", "--max-wall",
                          f"{a.flood_seconds}s", "--", "yes"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak, samples = 0, []
    t0 = time.time()
    while p.poll() is None:
        r = rss_kib(p.pid, "VmRSS")
        peak = max(peak, r)
        samples.append(r)
        time.sleep(0.1)
    hwm = max(peak, 0)
    print(f"\nflood: `yes` for {a.flood_seconds}s through costguard --stall "
          f"({time.time() - t0:.1f}s wall, exit {p.returncode})")
    print(f"{'costguard rss MiB':34} {'at 1 s':>8} {'peak':>8}")
    at1 = samples[min(10, len(samples) - 1)] if samples else 0
    print(f"{'':34} {at1 / 1024:8.1f} {hwm / 1024:8.1f}")


if __name__ == "__main__":
    main()
