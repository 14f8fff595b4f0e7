//! The documented exit codes, as `timeout(1)` users expect them.

/// Exit status when a ceiling (dollar, wall, idle, stall, memory, fleet) killed the job.
pub const CEILING_KILLED: u8 = 124;
/// costguard's own failure: invalid flags, values or config, or an internal error.
pub const OWN_FAILURE: u8 = 125;
/// The command was found but could not be executed.
pub const CANNOT_EXECUTE: u8 = 126;
/// The command was not found.
pub const NOT_FOUND: u8 = 127;

/// How the job's leader ended, as the helper reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "how", content = "value")]
pub enum JobStatus {
    Exited(i32),
    Signaled(i32),
    /// exec failed with this errno (ENOENT → 127, anything else → 126).
    ExecFailed(i32),
}

impl JobStatus {
    /// The exit code costguard passes on when the job ended by itself.
    pub fn code(self) -> u8 {
        match self {
            JobStatus::Exited(c) => (c & 0xff) as u8,
            JobStatus::Signaled(n) => (128 + n).clamp(0, 255) as u8,
            JobStatus::ExecFailed(errno) if errno == libc::ENOENT => NOT_FOUND,
            JobStatus::ExecFailed(_) => CANNOT_EXECUTE,
        }
    }

    pub fn describe(self) -> String {
        match self {
            JobStatus::Exited(c) => format!("exit status {c}"),
            JobStatus::Signaled(n) => {
                let name = nix::sys::signal::Signal::try_from(n)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|_| n.to_string());
                format!("killed by {name}")
            }
            JobStatus::ExecFailed(e) => {
                format!(
                    "could not execute: {}",
                    std::io::Error::from_raw_os_error(e)
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(JobStatus::Exited(3).code(), 3);
        assert_eq!(JobStatus::Signaled(9).code(), 137);
        assert_eq!(JobStatus::ExecFailed(libc::ENOENT).code(), 127);
        assert_eq!(JobStatus::ExecFailed(libc::EACCES).code(), 126);
    }
}
