//! `GET /events` and `costguard watch`, with real processes: the stream read by a raw TCP
//! client (ids, kinds, the end, Last-Event-ID resumption), `watch` against a URL started
//! before costguard listens and against a run id, and `watch --desktop` showing a kill on a
//! real notification daemon (dunst on Xvfb, on a private session bus) seen by dbus-monitor and
//! in a screenshot (`target/pictures/watch-desktop.png`; with `COSTGUARD_UPDATE_PICTURES=1`,
//! also the README's `docs/pictures/watch-desktop.png`).

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// One server-sent event as read off the wire.
#[derive(Debug, Default)]
struct Sse {
    id: Option<String>,
    event: String,
    data: String,
}

/// Connects (retrying while nothing listens yet), asks `/events` over HTTP/1.0 (so the body is
/// plain, not chunked) with `last_id`, and reads until the server closes the stream.
fn read_events(port: u16, last_id: Option<&str>) -> (String, Vec<Sse>) {
    let mut conn = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            conn = std::net::TcpStream::connect(("127.0.0.1", port)).ok();
            conn.is_some()
        }),
        "nothing listens on {port}"
    );
    let mut s = conn.expect("connected");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let resume = last_id
        .map(|id| format!("Last-Event-ID: {id}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET /events HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n{resume}\r\n"
    )
    .expect("request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("the stream ends");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response");
    let events = body
        .split("\n\n")
        .filter(|b| !b.trim().is_empty() && !b.starts_with(':'))
        .map(|block| {
            let mut e = Sse::default();
            for line in block.lines() {
                match line.split_once(": ") {
                    Some(("id", v)) => e.id = Some(v.to_string()),
                    Some(("event", v)) => e.event = v.to_string(),
                    Some(("data", v)) => e.data = v.to_string(),
                    _ => {}
                }
            }
            e
        })
        .collect();
    (head.to_string(), events)
}

/// A run killed at `--max-wall 2s`, lingering 10 s, serving on a port of its choosing: it and
/// that port.
fn killed_run(state: &Path, id: &str) -> (Child, u16) {
    let mut run = killed_run_on(state, id, 0);
    let port = bound_port(state, id, &mut run, Duration::from_secs(10));
    (run, port)
}

/// `killed_run` on `port` (one the test holds: `hold_port`).
fn killed_run_on(state: &Path, id: &str, port: u16) -> Child {
    let mut c = guard(state);
    c.args(["--run-id", id, "--max-wall", "2s", "--linger", "10s"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--", "sleep", "30"])
        .stderr(Stdio::null());
    c.spawn().expect("costguard")
}

/// Ends a lingering costguard by its pid (TERM cuts the linger short) and returns its status.
fn end_linger(mut child: Child) -> Option<i32> {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    child.wait().ok()?.code()
}

/// Waits (bounded) for a child to exit; kills it by its pid if it does not.
fn exit_of(mut child: Child, limit: Duration) -> Option<i32> {
    let mut status = None;
    wait_until(limit, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    match status {
        Some(s) => s.code(),
        None => {
            end(child);
            None
        }
    }
}

#[test]
fn events_stream_ids_kinds_end_and_resumption() {
    let dir = tempdir();
    let (run, port) = killed_run(dir.path(), "sse-a");
    let (head, events) = read_events(port, None);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    let logged: Vec<String> = std::fs::read_to_string(dir.path().join("runs/sse-a/events.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["id"].as_str().unwrap_or_default().to_string())
        .collect();
    let streamed: Vec<String> = events.iter().filter_map(|e| e.id.clone()).collect();
    assert_eq!(streamed, logged, "the stream's ids are the run's event ids");
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds, ["started", "killed", "end"], "{events:?}");
    let killed: serde_json::Value = serde_json::from_str(&events[1].data).expect("event JSON");
    assert_eq!(killed["reason"], "wall");
    assert_eq!(killed["id"].as_str(), events[1].id.as_deref());
    let end: serde_json::Value = serde_json::from_str(&events[2].data).expect("end JSON");
    assert_eq!(end["exit_code"], 124, "{end}");
    assert_eq!(end["outcome"], "killed", "{end}");
    assert!(
        events[2].id.is_none(),
        "the end has no id: a resume never skips it"
    );

    // Resumed after the first event (the server lingers): only what came after it.
    let first = events[0].id.clone().expect("an id");
    let (_, again) = read_events(port, Some(&first));
    let kinds: Vec<&str> = again.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds, ["killed", "end"], "{again:?}");
    assert_eq!(again[0].id, events[1].id);
    // The browser's way: the id in the query.
    let body = http_get(
        port,
        &format!(
            "/events?last_event_id={}",
            events[1].id.as_deref().unwrap_or_default()
        ),
    )
    .expect("answer");
    assert!(
        !body.contains("event: killed") && body.contains("event: end"),
        "{body}"
    );
    assert_eq!(end_linger(run), Some(124));
}

/// `costguard watch TARGET` with its output captured.
fn watch(state: &Path, target: &str) -> Child {
    let mut c = guard(state);
    c.args(["watch", target])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c.spawn().expect("costguard watch")
}

fn output(mut child: Child, limit: Duration) -> (Option<i32>, String, String) {
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut o = String::new();
    let code = exit_of(child, limit);
    let _ = out.read_to_string(&mut o);
    (code, o, t.join().unwrap_or_default())
}

#[test]
fn watch_started_before_the_run_retries_then_exits_124_at_the_kill() {
    let dir = tempdir();
    // Held until the run binds it: refused meanwhile, and nothing else can take it.
    let held = hold_port();
    let port = held.port;
    let mut w = watch(dir.path(), &format!("http://127.0.0.1:{port}"));
    // Nothing listens yet: it says so once and keeps trying.
    let mut err = w.stderr.take().expect("stderr");
    let mut said = String::new();
    let mut buf = [0u8; 4096];
    while !said.contains("reconnecting") {
        let n = err.read(&mut buf).expect("watch's stderr");
        assert!(n > 0, "watch ended early: {said}");
        said.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(said.contains("cannot connect"), "{said}");
    w.stderr = Some(err);
    let run = killed_run_on(dir.path(), "watch-b", port);
    let (code, out, err) = output(w, Duration::from_secs(30));
    assert_eq!(code, Some(124), "stdout:\n{out}\nstderr:\n{err}");
    let kill = out
        .lines()
        .find(|l| l.contains(" killed ") && l.contains(" wall "))
        .unwrap_or_else(|| panic!("no kill line:\n{out}"));
    assert!(kill.contains("--max-wall 2.000s"), "{kill}");
    assert!(
        out.lines().last().is_some_and(|l| l.contains("end")
            && l.contains("run watch-b killed")
            && l.ends_with("(exit 124)")),
        "{out}"
    );
    assert_eq!(out.matches(" started ").count(), 1, "nothing twice:\n{out}");
    assert!(err.contains("connected"), "{err}");
    assert_eq!(end_linger(run), Some(124));
}

#[test]
fn watch_exits_0_for_a_completed_run_by_url_and_by_run_id() {
    let dir = tempdir();
    let mut c = guard(dir.path());
    c.args(["--run-id", "watch-ok", "--linger", "20s"])
        .args(["--listen", "127.0.0.1:0"])
        .args(["--", "true"])
        .stderr(Stdio::null());
    let mut run = c.spawn().expect("costguard");
    let port = bound_port(dir.path(), "watch-ok", &mut run, Duration::from_secs(10));
    // While it lingers: the URL replays the run and its end.
    let (code, out, err) = output(
        watch(dir.path(), &format!("http://127.0.0.1:{port}/")),
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains(" completed "), "{out}");
    assert!(out.trim_end().ends_with("(exit 0)"), "{out}");
    // By run id: an ended run is printed from its record.
    let (code, out, _) = output(watch(dir.path(), "watch-ok"), Duration::from_secs(30));
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(" started ") && out.contains(" completed "),
        "{out}"
    );
    assert!(out.contains("run watch-ok completed"), "{out}");
    assert_eq!(end_linger(run), Some(0));
}

#[test]
fn watch_by_run_id_finds_the_live_run_page() {
    let dir = tempdir();
    // Returns once the ledger names the page.
    let (run, _) = killed_run(dir.path(), "watch-id");
    let (code, out, err) = output(watch(dir.path(), "watch-id"), Duration::from_secs(30));
    assert_eq!(code, Some(124), "{out}\n{err}");
    assert!(out.contains(" killed "), "{out}");
    assert_eq!(end_linger(run), Some(124));
    let (code, _, err) = output(watch(dir.path(), "no-such-run"), Duration::from_secs(10));
    assert_eq!(code, Some(125), "{err}");
}

/// A display number nothing uses.
fn free_display() -> u32 {
    (90..400)
        .find(|n| {
            !Path::new(&format!("/tmp/.X11-unix/X{n}")).exists()
                && !Path::new(&format!("/tmp/.X{n}-lock")).exists()
        })
        .expect("a free display")
}

fn need(tools: &[&str]) {
    for t in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "{t} is needed (apt-get install xvfb dunst dbus-daemon dbus-bin imagemagick; scripts/test does)"
        );
    }
}

/// On the private session bus: dbus-monitor and dunst, then `costguard watch --desktop`, then
/// what dunst shows, and a screenshot once it shows something. Each process ended by its pid.
const DESKTOP_SCRIPT: &str = r#"
set -u
dbus-monitor --session "interface=org.freedesktop.Notifications,member=Notify" > "$OUT/monitor.txt" 2>&1 &
MON=$!
dunst > "$OUT/dunst.log" 2>&1 &
DUNST=$!
i=0
until dbus-send --session --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus \
    org.freedesktop.DBus.NameHasOwner string:org.freedesktop.Notifications 2>/dev/null | grep -q true; do
  i=$((i+1)); [ $i -gt 400 ] && break; sleep 0.05
done
"$COSTGUARD" watch --desktop "$URL" > "$OUT/watch.out" 2> "$OUT/watch.err"
echo $? > "$OUT/watch.rc"
i=0
until [ "$(dunstctl count displayed 2>/dev/null)" -ge 1 ] 2>/dev/null; do
  i=$((i+1)); [ $i -gt 200 ] && break; sleep 0.05
done
dunstctl count displayed > "$OUT/count.txt" 2>&1
i=0
while :; do
  import -window root "$OUT/shot.png"
  colors=$(identify -format '%k' "$OUT/shot.png" 2>/dev/null || echo 0)
  i=$((i+1)); { [ "$colors" -gt 2 ] || [ $i -gt 40 ]; } && break; sleep 0.05
done
kill $DUNST $MON
wait $DUNST $MON 2>/dev/null
true
"#;

#[test]
#[ignore = "Xvfb, dunst, the D-Bus tools and ImageMagick: scripts/test runs it"]
fn watch_desktop_shows_the_kill_on_a_real_notification_daemon() {
    need(&[
        "Xvfb",
        "dunst",
        "dunstctl",
        "dbus-run-session",
        "dbus-monitor",
        "dbus-send",
        "import",
        "identify",
    ]);
    let dir = tempdir();
    let out = dir.path().join("desktop");
    std::fs::create_dir_all(&out).expect("out dir");
    let n = free_display();
    let mut x = Command::new("Xvfb");
    x.args([
        &format!(":{n}"),
        "-screen",
        "0",
        "1024x640x24",
        "-nolisten",
        "tcp",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let xvfb = x.spawn().expect("Xvfb");
    assert!(
        wait_until(Duration::from_secs(10), || Path::new(&format!(
            "/tmp/.X11-unix/X{n}"
        ))
        .exists()),
        "Xvfb :{n} did not start"
    );
    // Held until the run binds it: `watch` starts first and must not find another server.
    let held = hold_port();
    let port = held.port;
    let mut s = Command::new("dbus-run-session");
    s.args(["--", "sh", "-c", DESKTOP_SCRIPT])
        .env("DISPLAY", format!(":{n}"))
        .env("OUT", &out)
        .env("URL", format!("http://127.0.0.1:{port}"))
        .env("COSTGUARD", bin())
        .env("COSTGUARD_PROVIDER", "none")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    default_signals(&mut s);
    let session = s.spawn().expect("dbus-run-session");
    let run = killed_run_on(dir.path(), "train-desk", port);
    let status = exit_of(session, Duration::from_secs(60));
    let _ = end_linger(run);
    end(xvfb);
    let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap_or_default();
    assert_eq!(status, Some(0), "the session script: {}", read("watch.err"));
    assert_eq!(read("watch.rc").trim(), "124", "{}", read("watch.err"));
    let monitor = read("monitor.txt");
    assert!(monitor.contains("member=Notify"), "{monitor}");
    assert!(
        monitor.contains(r#"string "costguard: train-desk killed (wall)""#),
        "{monitor}"
    );
    assert!(
        monitor.contains(r#"string "wall: ran "#) && monitor.contains("of --max-wall 2.000s"),
        "{monitor}"
    );
    // Critical urgency (2) for a kill; the `started` event is not a notification.
    assert!(
        monitor.contains("string \"urgency\"\n         variant             byte 2"),
        "{monitor}"
    );
    assert_eq!(monitor.matches("member=Notify").count(), 1, "{monitor}");
    assert_eq!(read("count.txt").trim(), "1", "dunst shows it");
    let png = std::fs::read(out.join("shot.png")).expect("screenshot");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 2_000,
        "{} bytes",
        png.len()
    );
    let colors = Command::new("identify")
        .args(["-format", "%k"])
        .arg(out.join("shot.png"))
        .output()
        .expect("identify");
    let colors: u64 = String::from_utf8_lossy(&colors.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(
        colors > 2,
        "the screenshot shows something: {colors} colors"
    );
    let pictures = repo_root().join("target/pictures");
    std::fs::create_dir_all(&pictures).expect("target/pictures");
    std::fs::copy(out.join("shot.png"), pictures.join("watch-desktop.png")).expect("copy");
    if std::env::var_os("COSTGUARD_UPDATE_PICTURES").is_some() {
        let docs = repo_root().join("docs/pictures/watch-desktop.png");
        std::fs::copy(out.join("shot.png"), docs).expect("docs/pictures");
    }
}
