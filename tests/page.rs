//! `/`, looked at the way a person looks at it: Debian's Chromium, headless, loads the page
//! from a running costguard on the fake NVML. The test reads the DOM the browser rendered
//! (`--dump-dom`, after the page's script polled `/status`) and checks the numbers a person
//! would read against `/status`; the page as served (what a browser without JavaScript
//! shows) reads the same, in plain tables; nothing on
//! it reveals a secret; screenshots at a phone's width and a desktop's land under
//! `target/pictures/` (and, with `COSTGUARD_UPDATE_PICTURES=1`, in `docs/pictures/` for the
//! README) and are checked to be real renders of the asked size.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::*;

/// Chromium, headless, with a profile of its own; killed by `timeout` if it hangs.
fn chromium(profile: &Path, args: &[&str], url: &str) -> Output {
    let out = Command::new("timeout")
        .args(["-k", "5", "90", "chromium", "--headless", "--no-sandbox"])
        .args(["--disable-gpu", "--disable-quic", "--no-first-run"])
        .args([
            "--disable-background-networking",
            "--disable-component-update",
        ])
        .args(["--disable-sync", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("chromium (Debian's chromium, installed by scripts/test)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The DOM after the page's script ran for 5 s of virtual time.
fn dom(profile: &Path, url: &str) -> String {
    let args = ["--virtual-time-budget=5000", "--dump-dom"];
    String::from_utf8(chromium(profile, &args, url).stdout).expect("utf-8 DOM")
}

/// What a browser without JavaScript shows: the page as served. (Headless Chromium cannot
/// dump a page with scripts off: `--blink-settings=scriptEnabled=false` prints nothing and
/// `--disable-javascript` is ignored.)
fn served(port: u16) -> String {
    http_get(port, "/").expect("/ answers")
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

/// The text a person reads in the element whose `data-k` is `path`.
fn shown(dom: &str, path: &str) -> String {
    let key = format!("data-k=\"{path}\"");
    let at = dom
        .find(&key)
        .unwrap_or_else(|| panic!("{key} not on the page"));
    let rest = &dom[at..];
    let open = rest.find('>').expect("tag end") + 1;
    let close = rest[open..].find('<').expect("text end");
    unescape(&rest[open..open + close])
}

/// Every (data-k, text) on the page, in order.
fn all_shown(dom: &str) -> Vec<(String, String)> {
    dom.match_indices("data-k=\"")
        .map(|(at, m)| {
            let rest = &dom[at + m.len()..];
            let key = &rest[..rest.find('"').expect("attr end")];
            (key.to_string(), shown(&dom[at..], key))
        })
        .collect()
}

fn dollars(text: &str) -> f64 {
    text.trim_start_matches('$')
        .parse()
        .unwrap_or_else(|_| panic!("not dollars: {text}"))
}

/// "1h02m05s", "4m07s", "42s" in seconds.
fn seconds(text: &str) -> f64 {
    let mut total = 0.0;
    let mut num = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: f64 = num
            .parse()
            .unwrap_or_else(|_| panic!("not a duration: {text}"));
        num.clear();
        total += n * match c {
            'd' => 86400.0,
            'h' => 3600.0,
            'm' => 60.0,
            's' => 1.0,
            _ => panic!("not a duration: {text}"),
        };
    }
    total
}

fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[1..4], b"PNG", "not a PNG");
    let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    (be(16), be(20))
}

/// A screenshot at `w`×`h` into target/pictures/`name`, checked to be a real render.
fn screenshot(profile: &Path, url: &str, name: &str, (w, h): (u32, u32)) -> std::path::PathBuf {
    let out = repo_root().join("target/pictures");
    std::fs::create_dir_all(&out).expect("target/pictures");
    let file = out.join(name);
    let _ = std::fs::remove_file(&file);
    chromium(
        profile,
        &[
            "--virtual-time-budget=3000",
            &format!("--screenshot={}", file.display()),
            &format!("--window-size={w},{h}"),
        ],
        url,
    );
    let bytes = std::fs::read(&file).expect("screenshot written");
    assert_eq!(png_size(&bytes), (w, h), "{name}");
    assert!(
        bytes.len() > 30_000,
        "{name}: a real render, not a blank page: {} bytes",
        bytes.len()
    );
    file
}

/// Waits (up to `secs`) until /status answers with a document `ok` accepts; fails the test
/// (saying `what` it waited for, with the last /status seen) if it does not, and at once, with
/// costguard's exit status and stderr, if costguard has exited.
fn status_until(run: &mut Serving, secs: u64, what: &str, ok: impl Fn(&serde_json::Value) -> bool) {
    let mut last = serde_json::Value::Null;
    let mut exited = None;
    let seen = wait_until(Duration::from_secs(secs), || {
        // Whether it had exited before the read: then nothing more can come.
        exited = run.child.try_wait().ok().flatten();
        last = http_get(run.port, "/status")
            .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
            .unwrap_or_default();
        ok(&last) || exited.is_some()
    });
    if let (false, Some(st)) = (ok(&last), exited) {
        panic!(
            "{what}: costguard exited ({st}) first; its stderr:\n{}",
            run.stderr()
        );
    }
    assert!(
        seen,
        "{what}: not within {secs} s; the last /status on {}: {last}\nits stderr:\n{}",
        run.port,
        run.stderr()
    );
}

fn status(port: u16) -> serde_json::Value {
    let body = http_get(port, "/status").expect("/status answers");
    serde_json::from_str(&body).expect("status JSON")
}

/// costguard on two fake A100s for run `id`, quiet, serving on a port of its choosing.
fn serving(dir: &Path, id: &str) -> Command {
    let mut c = costguard_on_gpus(dir, &two_gpus());
    c.env("COSTGUARD_STATE_DIR", dir.join("state"))
        .args(["--listen", "127.0.0.1:0", "--run-id", id, "--quiet"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("costguard.err")).expect("stderr file"));
    c
}

/// A costguard `serving` started, and the port it bound.
struct Serving {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Serving {
    fn start(mut c: Command, dir: &Path, id: &str) -> Serving {
        let mut child = c.spawn().expect("costguard starts");
        let port = try_bound_port(&dir.join("state"), id, &mut child, Duration::from_secs(30))
            .unwrap_or_else(|e| {
                panic!(
                    "{e}\nits stderr:\n{}",
                    std::fs::read_to_string(dir.join("costguard.err")).unwrap_or_default()
                )
            });
        Serving {
            child,
            port,
            dir: dir.to_path_buf(),
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("costguard.err")).unwrap_or_default()
    }
}

fn two_gpus() -> serde_json::Value {
    serde_json::json!({"gpus": [
        {"name": "NVIDIA A100-SXM4-80GB", "uuid": "GPU-00000000-1111-2222-3333-444455556666",
         "timeline": [{"at": 0, "util": 87, "mem_used": 60u64 << 30, "power_mw": 310000, "temp": 57}]},
        {"name": "NVIDIA A100-SXM4-80GB", "uuid": "GPU-00000001-1111-2222-3333-444455556666",
         "timeline": [{"at": 0, "util": 40, "mem_used": 20u64 << 30, "power_mw": 180000, "temp": 49}]}
    ]})
}

#[test]
#[ignore = "chromium: scripts/test runs it"]
fn a_browser_reads_the_live_run_as_status_has_it() {
    let dir = tempdir();
    let mut c = serving(dir.path(), "looked-at");
    c.args([
        "--usd-per-hour",
        "36",
        "--max-usd",
        "50",
        "--max-wall",
        "10m",
    ])
    .args(["--idle", "5m"])
    .args([
        "--webhook",
        "http://127.0.0.1:9/hook?token=SEKRET-HOOK-0042",
    ])
    .args([
        "--",
        "sh",
        "-c",
        "sleep 120",
        "job",
        "--api-key=SEKRET-ARG-0042",
    ]);
    let mut run = Serving::start(c, dir.path(), "looked-at");
    let port = run.port;
    let url = format!("http://127.0.0.1:{port}/");
    status_until(
        &mut run,
        30,
        "costguard serves /status with both GPUs",
        |s| {
            s["gpus"].as_array().is_some_and(|g| g.len() == 2)
                && s["spend_dollars"].as_f64().unwrap_or(0.0) > 0.0
        },
    );

    let profile = dir.path().join("chromium");
    let page = dom(&profile, &url);
    let st = status(port);
    // The script ran and polled /status (every 2 s over 5 s of virtual time).
    let polls = page
        .split("data-polls=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|n| n.parse::<u32>().ok());
    assert!(
        polls.is_some_and(|n| n >= 2),
        "the page polled /status: {polls:?}"
    );

    assert_eq!(shown(&page, "state"), "running");
    assert!(page.contains("<h1>looked-at "), "the run id heads the page");
    assert_eq!(shown(&page, "budget_dollars"), "$50.00");
    assert_eq!(shown(&page, "rate_dollars_per_hour"), "$36.00/h");
    assert_eq!(shown(&page, "limits.max_wall_seconds"), "10m00s");
    assert_eq!(shown(&page, "limits.idle_seconds"), "5m00s");
    assert_eq!(shown(&page, "gpus.0.util_gpu_pct"), "87%");
    assert_eq!(shown(&page, "gpus.1.util_gpu_pct"), "40%");
    assert_eq!(shown(&page, "gpus.0.mem_used"), "60.0 GiB");
    assert_eq!(shown(&page, "gpus.1.mem_total"), "80.0 GiB");
    assert_eq!(shown(&page, "gpus.0.power_watts"), "310 W");
    // The moving numbers: read a moment before /status was asked, so never ahead of it.
    let spend = dollars(&shown(&page, "spend_dollars"));
    let now = st["spend_dollars"].as_f64().expect("spend");
    assert!(
        spend <= now + 0.005 && spend >= now - 0.3,
        "page {spend} vs /status {now}"
    );
    let elapsed = seconds(&shown(&page, "elapsed_seconds"));
    let now = st["elapsed_seconds"].as_f64().expect("elapsed");
    assert!(
        elapsed <= now + 1.0 && elapsed >= now - 30.0,
        "page {elapsed}s vs /status {now}s"
    );
    let left = seconds(&shown(&page, "seconds_to_wall_ceiling"));
    assert!(
        (left + elapsed - 600.0).abs() <= 2.0,
        "wall ceiling in {left}s after {elapsed}s"
    );
    let to_usd = seconds(&shown(&page, "seconds_to_usd_ceiling"));
    let want = (50.0 - spend) / 36.0 * 3600.0;
    assert!(
        (to_usd - want).abs() <= 60.0,
        "dollar ceiling in {to_usd}s, want ~{want}s"
    );
    assert!(
        page.contains("id=\"budget-line\""),
        "the timeline is on the page"
    );
    assert!(
        shown(&page, "waiting_on").contains("ceiling"),
        "what it waits on"
    );
    assert!(!page.contains("SEKRET"), "a secret reached the page");
    assert!(
        page.contains("[redacted]"),
        "the job's secret flag is masked"
    );

    // No script: the same numbers, server-rendered, in plain tables.
    let plain = served(port);
    assert!(plain.contains("<table class=\"kv\">"));
    assert_eq!(shown(&plain, "budget_dollars"), "$50.00");
    assert_eq!(shown(&plain, "gpus.1.util_gpu_pct"), "40%");
    assert!(!plain.contains("SEKRET"));

    screenshot(&profile, &url, "page-phone.png", (412, 915));
    screenshot(&profile, &url, "page-live.png", (1200, 1400));
    end(run.child);
}

#[test]
#[ignore = "chromium: scripts/test runs it"]
fn a_killed_plan_reads_the_same_with_and_without_javascript() {
    let dir = tempdir();
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        "[[phase]]\nname = \"prep\"\ncommand = \"sleep 2\"\n\
         [[phase]]\nname = \"train\"\ncommand = [\"sh\", \"-c\", \"echo step 1/10; sleep 60\"]\n",
    )
    .expect("plan");
    let mut c = serving(dir.path(), "pictured-plan");
    c.args([
        "--usd-per-hour",
        "3600",
        "--max-usd",
        "6",
        "--linger",
        "120s",
    ])
    .args(["--plan", &path_str(&plan)]);
    let mut run = Serving::start(c, dir.path(), "pictured-plan");
    let port = run.port;
    status_until(
        &mut run,
        40,
        "the plan was killed at its dollar ceiling",
        |s| s["state"] == "killed",
    );
    let url = format!("http://127.0.0.1:{port}/");
    let profile = dir.path().join("chromium");
    let live = dom(&profile, &url);
    let plain = served(port);
    assert!(live.contains("data-polls"), "the script ran");

    // Every number the script rewrote reads as the server wrote it.
    let (a, b) = (all_shown(&live), all_shown(&plain));
    // What the reader of a killed plan looks for is there, by name (the GPU cards only when
    // the killed phase lived long enough for a sample, so they are not asked for here).
    let keys: Vec<&str> = a.iter().map(|(k, _)| k.as_str()).collect();
    for want in [
        "state",
        "outcome_detail",
        "spend_dollars",
        "budget_dollars",
        "rate_dollars_per_hour",
        "elapsed_seconds",
        "run_elapsed_seconds",
        "sessions",
        "kills",
        "host.job_rss_bytes",
        "updated_at",
    ] {
        assert!(keys.contains(&want), "{want} is not on the page: {a:?}");
    }
    assert_eq!(a, b, "the script's formats are the server's");

    assert_eq!(shown(&plain, "state"), "killed");
    assert!(
        shown(&plain, "outcome_detail").contains("train killed at its usd cap"),
        "{}",
        shown(&plain, "outcome_detail")
    );
    let spend = dollars(&shown(&plain, "spend_dollars"));
    assert!(
        (6.0..6.1).contains(&spend),
        "stopped at the $6 ceiling: {spend}"
    );
    assert_eq!(shown(&plain, "kills"), "1");
    assert!(
        plain.contains("class=\"mark kill\""),
        "the kill on the timeline"
    );
    assert!(
        plain.contains("Phases <small>2 of 2</small>"),
        "phases X of Y"
    );
    assert!(plain.contains(">prep</td><td><span class=\"state s-completed\">completed</span>"));
    assert!(plain.contains(">train</td><td><span class=\"state s-killed\">killed (usd)</span>"));
    // At $1 a second a loaded machine may see the kill a few cents past the ceiling.
    assert!(plain.contains(">killed (usd)</span></td><td>usd: spent $6.0"));
    assert!(plain.contains(" of $6.00 at $3600.00/h"));

    let shot = screenshot(&profile, &url, "page.png", (1200, 1500));
    let pics = repo_root().join("docs/pictures");
    if std::env::var_os("COSTGUARD_UPDATE_PICTURES").is_some() {
        std::fs::create_dir_all(&pics).expect("docs/pictures");
        std::fs::copy(&shot, pics.join("page.png")).expect("copy page.png");
    }
    let readme = std::fs::read(pics.join("page.png")).unwrap_or_default();
    assert!(
        readme.len() > 30_000 && png_size(&readme) == (1200, 1500),
        "docs/pictures/page.png is missing or stale: regenerate it with \
         COSTGUARD_UPDATE_PICTURES=1 cargo test --test page"
    );
    end(run.child);
}
