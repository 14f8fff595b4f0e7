//! Every message costguard prints for a person goes to stderr with one prefix and one quiet
//! rule; `out`/`outln` write a read-only command's output (list, status, report, watch, the
//! preflight) to stdout as is.
//!
//! - `say` and `notice` are information: `--quiet` hides them.
//! - `alert` and `error` are what a person must see (a kill, a watchdog firing, costguard's
//!   own failure, the summary line): always printed.
//!
//! A closed or broken stderr never ends costguard (a `| head -1` downstream, a terminal that
//! went away): lines that cannot be written are dropped, the run goes on and still records,
//! reports and notifies.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static QUIET: AtomicBool = AtomicBool::new(false);

const PREFIX: &str = "costguard: ";

/// Sets the quiet rule for the process (from `--quiet`); call once after settings resolve.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

fn write_line(text: &str) {
    let mut line = String::with_capacity(PREFIX.len() + text.len() + 1);
    line.push_str(PREFIX);
    line.push_str(text);
    line.push('\n');
    // One write(2) per line, so a line is not interleaved with the job's own stderr.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Information for the person at the terminal (hidden by `--quiet`).
pub fn say(text: impl AsRef<str>) {
    if !quiet() {
        write_line(text.as_ref());
    }
}

/// Something worth knowing that is not a failure (hidden by `--quiet`).
pub fn notice(text: impl AsRef<str>) {
    if !quiet() {
        write_line(&format!("notice: {}", text.as_ref()));
    }
}

/// A notice said once per process, however many sessions (a plan's phases) repeat it.
pub fn notice_once(text: impl AsRef<str>) {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static SAID: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let text = text.as_ref();
    let first = SAID
        .lock()
        .map(|mut s| s.get_or_insert_with(HashSet::new).insert(text.to_string()))
        .unwrap_or(true);
    if first {
        notice(text);
    }
}

/// What a person must see whatever `--quiet` says: kills, watchdogs, the summary.
pub fn alert(text: impl AsRef<str>) {
    write_line(text.as_ref());
}

/// costguard's own failure, always printed.
pub fn error(text: impl AsRef<str>) {
    write_line(&format!("error: {}", text.as_ref()));
}

/// Writes `text` to stdout for a read-only command (`list`, `status`, `report`, `logs`).
/// Returns false when stdout is closed (a `| head` that has read enough): the caller stops
/// quietly instead of panicking on a broken pipe.
pub fn out(text: impl AsRef<str>) -> bool {
    let mut o = std::io::stdout().lock();
    o.write_all(text.as_ref().as_bytes())
        .and_then(|_| o.flush())
        .is_ok()
}

/// Like [`out`] with a newline.
pub fn outln(text: impl AsRef<str>) -> bool {
    let mut s = String::from(text.as_ref());
    s.push('\n');
    out(s)
}
