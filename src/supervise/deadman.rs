//! The holder's dead man's switch: costguard hands the holder each kill deadline over a pipe,
//! and the holder kills the tree itself when costguard has not begun its kill by then.
//!
//! costguard's runtime thread fires every kill; anything that blocks it (a FIFO where a log
//! should be, a hung disk, a starved or stopped process) would hold the kill up. The holder
//! shares the kernel's CLOCK_MONOTONIC with costguard, so a deadline is one absolute instant:
//! `arm AT_NS GRACE_MS WHY` says "if the tree still stands at AT_NS, run the kill protocol with
//! this grace, and record WHY"; `disarm` takes it back. costguard sends the ceiling's deadline
//! plus [`SLACK`] whenever it changes (a rate correction moves the dollar deadline), and when it
//! begins any kill of its own it re-arms the switch at now + its grace + [`SLACK`]: the holder
//! never races a kill in progress, yet finishes one that costguard started and could not
//! complete. A kill by both is harmless anyway (the protocol signals only what is alive).
//!
//! Nothing the holder needs at kill time takes a new descriptor, a lock, a file open or the
//! network: the pipe and the run directory are opened by costguard before the holder starts
//! and inherited as descriptors. The record (`<run dir>/holder-kill.txt`) is made in that
//! directory only once the kill's first signal is out (before its grace is waited), so a run
//! that needs no holder kill creates no file for it.

use std::fs::File;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// How long past a deadline costguard may be late in beginning its kill before the holder
/// acts: scheduling noise on a loaded box is far below it; a wedged loop is far above.
pub const SLACK: Duration = Duration::from_secs(2);

/// The file in the run directory where the holder says why it killed the job itself.
pub const RECORD_FILE: &str = "holder-kill.txt";

/// An armed deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arm {
    /// The instant to act at, in CLOCK_MONOTONIC nanoseconds.
    pub at_ns: i128,
    /// The grace between the first signal and SIGKILL.
    pub grace: Duration,
    /// What the deadline is (the record's words).
    pub why: String,
}

/// One message from costguard to the holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Arm(Arm),
    Disarm,
}

impl Msg {
    pub fn line(&self) -> String {
        match self {
            Msg::Arm(a) => format!(
                "arm {} {} {}\n",
                a.at_ns,
                a.grace.as_millis(),
                a.why.replace('\n', " ")
            ),
            Msg::Disarm => "disarm\n".to_string(),
        }
    }

    pub fn parse(line: &str) -> Option<Msg> {
        let line = line.trim_end();
        if line == "disarm" {
            return Some(Msg::Disarm);
        }
        let rest = line.strip_prefix("arm ")?;
        let mut parts = rest.splitn(3, ' ');
        let at_ns = parts.next()?.parse().ok()?;
        let grace = Duration::from_millis(parts.next()?.parse().ok()?);
        let why = parts.next().unwrap_or("a deadline").to_string();
        Some(Msg::Arm(Arm { at_ns, grace, why }))
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds (the clock both processes share).
pub fn mono_now_ns() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// `at` (a std `Instant`, itself CLOCK_MONOTONIC on Linux) as absolute nanoseconds.
pub fn mono_ns(at: Instant) -> i128 {
    let (now, ns) = (Instant::now(), mono_now_ns());
    match at.checked_duration_since(now) {
        Some(ahead) => ns + ahead.as_nanos() as i128,
        None => ns - now.saturating_duration_since(at).as_nanos() as i128,
    }
}

/// The holder's end: the read side of the pipe (non-blocking) and the armed deadline.
pub struct Switch {
    pipe: Option<File>,
    buf: Vec<u8>,
    pub armed: Option<Arm>,
}

impl Switch {
    pub fn new(pipe: Option<File>) -> Switch {
        Switch {
            pipe,
            buf: Vec::new(),
            armed: None,
        }
    }

    /// Takes every message waiting on the pipe (never blocks); the last one wins.
    pub fn poll(&mut self) {
        let Some(p) = self.pipe.as_mut() else { return };
        let mut chunk = [0u8; 512];
        loop {
            match p.read(&mut chunk) {
                Ok(0) => {
                    // costguard closed its end: keep what is armed (its death is noticed by
                    // PDEATHSIG and getppid).
                    self.pipe = None;
                    break;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        while let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=i).collect();
            match Msg::parse(&String::from_utf8_lossy(&line)) {
                Some(Msg::Arm(a)) => self.armed = Some(a),
                Some(Msg::Disarm) => self.armed = None,
                None => {}
            }
        }
    }

    /// How long until the armed deadline (zero when due; None when disarmed).
    pub fn until(&self, now_ns: i128) -> Option<Duration> {
        let a = self.armed.as_ref()?;
        Some(Duration::from_nanos((a.at_ns - now_ns).max(0) as u64))
    }
}

/// Where the holder gives its account of a kill: [`RECORD_FILE`], made on the first write
/// in the run directory costguard opened for it (no link followed, no FIFO waited on, only
/// a regular file written).
pub struct Record {
    dir: Option<File>,
    file: Option<File>,
}

impl Record {
    /// The record in the directory open on `dir` (None: nowhere to record).
    pub fn new(dir: Option<File>) -> Record {
        Record { dir, file: None }
    }

    pub fn write(&mut self, text: &str) {
        if self.file.is_none() {
            self.file = self.dir.as_ref().and_then(open_in);
        }
        if let Some(f) = self.file.as_mut() {
            let _ = f.write_all(text.as_bytes());
            let _ = f.sync_data();
        }
    }
}

fn open_in(dir: &File) -> Option<File> {
    use nix::fcntl::OFlag;
    use std::os::fd::AsFd;
    let flags = OFlag::O_WRONLY
        | OFlag::O_CREAT
        | OFlag::O_APPEND
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::openat(
        dir.as_fd(),
        RECORD_FILE,
        flags,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .ok()?;
    let f = File::from(fd);
    f.metadata().ok()?.is_file().then_some(f)
}

/// costguard's end of the pipe: sends only what changed, never blocks (a full pipe drops
/// the message; the next change sends again).
pub struct Control {
    pipe: File,
    last: Option<Msg>,
}

impl Control {
    pub fn new(pipe: File) -> Control {
        Control { pipe, last: None }
    }

    pub fn send(&mut self, msg: Msg) {
        if self.last.as_ref() == Some(&msg) {
            return;
        }
        if self.pipe.write_all(msg.line().as_bytes()).is_ok() {
            self.last = Some(msg);
        }
    }

    /// Arms the switch at `deadline` + [`SLACK`] unless it is already armed within 50 ms of
    /// it (an energy-priced deadline moves a little with every sample).
    pub fn arm(&mut self, deadline: Instant, grace: Duration, why: String) {
        let at_ns = mono_ns(deadline + SLACK);
        if let Some(Msg::Arm(a)) = &self.last {
            if (a.at_ns - at_ns).abs() < 50_000_000 && a.grace == grace {
                return;
            }
        }
        self.send(Msg::Arm(Arm { at_ns, grace, why }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let a = Msg::Arm(Arm {
            at_ns: 123_456_789_000,
            grace: Duration::from_millis(1500),
            why: "the dollar ceiling ($2.00) at +2.000s".into(),
        });
        assert_eq!(Msg::parse(&a.line()), Some(a));
        assert_eq!(Msg::parse("disarm\n"), Some(Msg::Disarm));
        assert_eq!(Msg::parse("arm x 1 y"), None);
        assert_eq!(Msg::parse("bogus"), None);
    }

    #[test]
    fn the_switch_takes_the_last_message_and_counts_down() {
        let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK).expect("pipe");
        let mut ctl = Control::new(File::from(wr));
        let mut sw = Switch::new(Some(File::from(rd)));
        sw.poll();
        assert_eq!(sw.armed, None);
        let soon = Instant::now() + Duration::from_secs(1);
        ctl.arm(soon, Duration::from_secs(3), "wall".into());
        ctl.arm(soon, Duration::from_secs(3), "wall".into()); // unchanged: not sent again
        sw.poll();
        let left = sw.until(mono_now_ns()).expect("armed");
        assert!(left > Duration::from_millis(2500) && left <= SLACK + Duration::from_secs(1));
        ctl.send(Msg::Disarm);
        sw.poll();
        assert_eq!(sw.until(mono_now_ns()), None);
        let past = Instant::now() - Duration::from_secs(5);
        ctl.arm(past, Duration::ZERO, "usd".into());
        sw.poll();
        assert_eq!(sw.until(mono_now_ns()), Some(Duration::ZERO));
    }
}
