//! The live status line for the person at the terminal.
//!
//! The job keeps its terminal: its output is not piped through costguard for this. Instead
//! the terminal's scrolling region is narrowed by one row and the status is drawn on the
//! freed bottom row (the way apt draws its progress bar), so the job's lines scroll above it
//! untouched. Each redraw is a single write(2), which the tty layer does not interleave
//! with the job's writes. Only when stderr is a terminal and not `--quiet`.

use std::io::{IsTerminal, Write};

pub struct LiveLine {
    /// The (rows, cols) the scrolling region was set for; None before the first draw.
    set_for: Option<(u16, u16)>,
}

fn term_size() -> Option<(u16, u16)> {
    // SAFETY: TIOCGWINSZ writes one winsize into the struct we own.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Cuts `text` to at most `cols - 1` characters (the last column would wrap on some terminals).
fn fit(text: &str, cols: u16) -> String {
    text.chars()
        .take(usize::from(cols.saturating_sub(1)))
        .collect()
}

impl LiveLine {
    /// A live line when stderr is a terminal and `quiet` is off.
    pub fn new(quiet: bool) -> Option<LiveLine> {
        (!quiet && std::io::stderr().is_terminal()).then_some(LiveLine { set_for: None })
    }

    /// The escape sequence that draws `text` on the bottom row, (re)setting the region when
    /// the terminal was resized. Empty when the terminal is too small to spare a row.
    fn frame(&mut self, text: &str, size: (u16, u16)) -> String {
        let (rows, cols) = size;
        if rows < 4 {
            return String::new();
        }
        let mut out = String::new();
        if self.set_for != Some(size) {
            // A newline first, so the cursor's row is not lost under the status row; then
            // save the cursor, shrink the region (which homes the cursor), restore it.
            out.push_str(&format!("\n\x1b7\x1b[1;{}r\x1b8\x1b[1A", rows - 1));
            self.set_for = Some(size);
        }
        out.push_str(&format!(
            "\x1b7\x1b[{rows};1H\x1b[2K{}\x1b8",
            fit(text, cols)
        ));
        out
    }

    pub fn draw(&mut self, text: &str) {
        let Some(size) = term_size() else { return };
        let frame = self.frame(text, size);
        if !frame.is_empty() {
            let _ = std::io::stderr().write_all(frame.as_bytes());
        }
    }

    /// Gives the bottom row back: clears it and resets the scrolling region.
    pub fn clear(&mut self) {
        let Some((rows, _)) = self.set_for.take() else {
            return;
        };
        let s = format!("\x1b7\x1b[{rows};1H\x1b[2K\x1b[r\x1b8");
        let _ = std::io::stderr().write_all(s.as_bytes());
    }
}

impl Drop for LiveLine {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_frame_sets_the_region_and_resize_resets_it() {
        let mut l = LiveLine { set_for: None };
        let f = l.frame("costguard: $1.00", (24, 80));
        assert!(f.contains("\x1b[1;23r"), "{f:?}");
        assert!(
            f.ends_with("\x1b7\x1b[24;1H\x1b[2Kcostguard: $1.00\x1b8"),
            "{f:?}"
        );
        let f = l.frame("x", (24, 80));
        assert!(!f.contains('r'), "no region change: {f:?}");
        let f = l.frame("x", (40, 100));
        assert!(f.contains("\x1b[1;39r"), "{f:?}");
        assert_eq!(l.frame("x", (3, 80)), "", "too small to spare a row");
        let long = "y".repeat(200);
        let f = l.frame(&long, (40, 100));
        assert!(f.contains(&"y".repeat(99)) && !f.contains(&"y".repeat(100)));
        l.set_for = None; // nothing to clear on drop in a test process
    }
}
