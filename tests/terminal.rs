//! The live status line, seen through a real pseudo-terminal.

mod common;

use std::os::fd::AsRawFd;
use std::process::Stdio;

use common::*;

/// Runs costguard with stderr on a fresh 24×80 pty; returns everything written to it.
fn on_a_terminal(extra: &[&str]) -> (Option<i32>, String) {
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let ws = libc::winsize {
        ws_row: 24,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize we own.
    assert_eq!(
        unsafe { libc::ioctl(pty.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) },
        0
    );
    let mut c = costguard();
    c.args(["--usd-per-hour", "36", "--max-usd", "1", "--max-wall", "1h"])
        .args(["--progress-regex", r"step (\d+)"])
        .args(extra)
        .args(["--", "sh", "-c", "echo step 1; sleep 2.5; echo step 2"])
        .stdout(Stdio::null())
        .stderr(Stdio::from(pty.slave));
    let mut child = c.spawn().expect("spawn");
    drop(c); // our copy of the slave end: EOF comes when costguard's closes
    let reader = read_pty(pty.master);
    let status = child.wait().expect("wait");
    (status.code(), reader.join().expect("reader"))
}

#[test]
fn a_terminal_gets_one_live_line_redrawn_in_place() {
    let (code, out) = on_a_terminal(&[]);
    assert_eq!(code, Some(0), "{out:?}");
    // The bottom row is reserved once, then redrawn in place (save, go to row 24, clear,
    // text, restore), then given back before the summary line.
    assert_eq!(out.matches("\x1b[1;23r").count(), 1, "{out:?}");
    let draws = out.matches("\x1b7\x1b[24;1H\x1b[2Kcostguard: $").count();
    assert!(draws >= 2, "redrawn every second: {out:?}");
    assert!(out.contains(" / $1.00 | "), "spend against budget: {out:?}");
    assert!(
        out.contains(" / 1h00m00s | "),
        "elapsed against wall: {out:?}"
    );
    assert!(out.contains("| progress "), "time since progress: {out:?}");
    let reset = out.rfind("\x1b[r").expect("region given back");
    let summary = out.rfind("costguard: completed").expect("summary");
    assert!(reset < summary, "{out:?}");
    assert!(
        !out[reset..].contains("\x1b[24;1H\x1b[2Kcostguard"),
        "{out:?}"
    );
}

#[test]
fn quiet_or_no_terminal_means_no_live_line() {
    let (code, out) = on_a_terminal(&["--quiet"]);
    assert_eq!(code, Some(0), "{out:?}");
    assert!(!out.contains('\x1b'), "{out:?}");
    let mut c = costguard();
    c.args(["--usd-per-hour", "36", "--", "sleep", "1.5"]);
    let o = run(c);
    assert!(!stderr(&o).contains('\x1b'), "{}", stderr(&o));
}
