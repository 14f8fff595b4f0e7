//! The pictures, looked at as a person would: `runs/<id>/timeline.svg` after a resumed run
//! that a ceiling killed is well-formed (`xmllint`), renders (`rsvg-convert`, Debian's
//! librsvg2-bin) to a PNG of the drawn size, and holds the budget line, the kill mark, the
//! idle shading and the gap where costguard was down; `report.md` embeds it. The PNG and the
//! SVG land in `target/pictures/`; `COSTGUARD_UPDATE_PICTURES=1` also refreshes the README's
//! copy in `docs/pictures/`, which the test checks is not stale.

mod common;

use std::process::Command;

use common::*;

fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[1..4], b"PNG", "not a PNG");
    let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    (be(16), be(20))
}

/// `costguard status pictured` with stdout on a fresh pty; what it wrote there.
fn status_on_a_terminal(state: &std::path::Path) -> String {
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let mut c = costguard();
    c.env("COSTGUARD_STATE_DIR", state)
        .args(["status", "pictured"])
        .stdout(std::process::Stdio::from(pty.slave));
    let mut child = c.spawn().expect("spawn");
    drop(c);
    let reader = read_pty(pty.master);
    assert!(child.wait().expect("wait").success());
    reader.join().expect("reader").replace('\r', "")
}

#[test]
#[ignore = "xmllint and rsvg-convert: scripts/test runs it"]
fn a_resumed_killed_run_has_a_timeline_that_renders() {
    let dir = tempdir();
    let state = dir.path().join("state");
    // Busy for 4 s, then idle: the second session's idle watchdog kills it.
    let scenario = serde_json::json!({"gpus": [{
        "name": "NVIDIA A100-SXM4-80GB",
        "uuid": "GPU-00000000-1111-2222-3333-444455556666",
        "timeline": [
            {"at": 0, "util": 87, "mem_used": 1u64 << 34, "power_mw": 300000, "temp": 55},
            {"at": 4, "util": 3, "mem_used": 1u64 << 34, "power_mw": 90000, "temp": 45}
        ]
    }]});
    let session = |max: &str, extra: &[&str]| {
        let mut c = costguard_on_gpus(dir.path(), &scenario);
        c.env("COSTGUARD_STATE_DIR", &state)
            .args(["--no-listen", "--usd-per-hour", "3600", "--max-usd", max])
            .args(["--run-id", "pictured"])
            .args(extra)
            .args(["--", "sleep", "30"]);
        run(c)
    };
    let first = session("3", &[]);
    assert_eq!(first.status.code(), Some(124), "{}", stderr(&first));
    std::thread::sleep(std::time::Duration::from_secs(3));
    let second = session("20", &["--idle", "3s", "--idle-below", "10"]);
    assert_eq!(second.status.code(), Some(124), "{}", stderr(&second));

    let run_dir = state.join("runs/pictured");
    let svg_path = run_dir.join("timeline.svg");
    let svg = std::fs::read_to_string(&svg_path).expect("timeline.svg written at the close");
    let lint = Command::new("xmllint")
        .arg("--noout")
        .arg(&svg_path)
        .output()
        .expect("xmllint (libxml2-utils, installed by scripts/test)");
    assert!(
        lint.status.success(),
        "{}",
        String::from_utf8_lossy(&lint.stderr)
    );
    for want in [
        r#"id="budget-line""#,
        r#"class="mark kill""#,
        "killed (idle)",
        r#"class="gap""#,
        r#"class="idle""#,
        r#"class="spend""#,
        r#"class="util""#,
    ] {
        assert!(svg.contains(want), "{want} in the timeline:\n{svg}");
    }
    let png = dir.path().join("timeline.png");
    let r = Command::new("rsvg-convert")
        .arg("-o")
        .arg(&png)
        .arg(&svg_path)
        .output()
        .expect("rsvg-convert (librsvg2-bin, installed by scripts/test)");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let bytes = std::fs::read(&png).expect("png");
    assert_eq!(png_size(&bytes), (800, 320));
    assert!(
        bytes.len() > 5_000,
        "a real render, not a blank: {} bytes",
        bytes.len()
    );
    let report = std::fs::read_to_string(run_dir.join("report.md")).expect("report");
    assert!(report.contains("](timeline.svg)"), "{report}");
    let series: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run_dir.join("series.json")).expect("series"),
    )
    .expect("series JSON");
    let points = series["points"].as_array().expect("points");
    assert_eq!(
        points.iter().filter(|p| p["gap_before"] == true).count(),
        1,
        "{series}"
    );

    // `costguard status`: one trend line, in words through a pipe, as a sparkline on a
    // terminal.
    let mut c = costguard();
    c.env("COSTGUARD_STATE_DIR", &state)
        .args(["status", "pictured"]);
    let piped = out_text(&run(c));
    let trend = piped
        .lines()
        .find(|l| l.starts_with("trend:"))
        .unwrap_or_else(|| panic!("a trend line: {piped}"));
    assert!(
        trend.contains("util 3–87%") && trend.contains("spend $") && !trend.contains('█'),
        "{trend}"
    );
    let on_tty = status_on_a_terminal(&state);
    let trend = on_tty
        .lines()
        .find(|l| l.starts_with("trend:"))
        .unwrap_or_else(|| panic!("a trend line: {on_tty:?}"));
    assert!(
        trend.contains("util ") && trend.contains('▇'),
        "87% busy: {trend:?}"
    );
    assert!(trend.contains('▁'), "the idle stretch reads low: {trend:?}");

    // For a person to look at: under target/. The README's copy in docs/pictures/ is made
    // by this same run with COSTGUARD_UPDATE_PICTURES=1 (a test run does not rewrite tracked
    // files); it must still show what this run draws.
    let out = repo_root().join("target/pictures");
    std::fs::create_dir_all(&out).expect("target/pictures");
    std::fs::copy(&svg_path, out.join("timeline.svg")).expect("copy svg");
    std::fs::copy(&png, out.join("timeline.png")).expect("copy png");
    let pics = repo_root().join("docs/pictures");
    if std::env::var_os("COSTGUARD_UPDATE_PICTURES").is_some() {
        std::fs::create_dir_all(&pics).expect("docs/pictures");
        std::fs::copy(&svg_path, pics.join("timeline.svg")).expect("copy svg");
        std::fs::copy(&png, pics.join("timeline.png")).expect("copy png");
    }
    let shown = std::fs::read_to_string(pics.join("timeline.svg")).unwrap_or_default();
    for want in [
        r#"id="budget-line""#,
        r#"class="mark kill""#,
        r#"class="gap""#,
        r#"class="idle""#,
    ] {
        assert!(
            shown.contains(want),
            "docs/pictures/timeline.svg is stale ({want} missing): regenerate it with \
             COSTGUARD_UPDATE_PICTURES=1 cargo test --test pictures"
        );
    }
}
