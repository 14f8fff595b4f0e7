//! The state directory's file access: durable writes (the outbox, the ledger) where a file is
//! either its old content or its whole new content, never a torn mix, even across a crash;
//! and defensive reads, because the state directory is not trusted (a FIFO would hang a
//! read, a symlink to /dev/zero would fill memory).

use std::io::Write;
use std::path::Path;

/// The directory of `path` and a hidden temporary name in it (same filesystem: the rename
/// is atomic), unique to this process.
fn temp_beside(path: &Path) -> (&Path, std::path::PathBuf) {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (dir, dir.join(format!(".{name}.tmp-{}", std::process::id())))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename
/// over the target, fsync of the directory so the rename itself survives a power loss.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let (dir, tmp) = temp_beside(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Replaces `path` whole (temporary file, rename) without waiting for the disk: for files
/// that can be written again from the durable ones (the report, the config snapshot).
pub fn write_replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let (_, tmp) = temp_beside(path);
    let result = std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, path));
    if result.is_err() {
        // A full disk must not leave half-written temporaries behind.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Opens a file of the state directory with `o`, never through a symbolic link and never
/// blocking on a FIFO (O_NOFOLLOW | O_NONBLOCK), and only a regular file: anything else at a
/// record path is an error to report, not a hang. The one way such a file is opened.
fn open_state(o: &mut std::fs::OpenOptions, path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let bad = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is {what}, not a regular file", path.display()),
        )
    };
    let f = o
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => bad("a symbolic link"),
            Some(libc::ENXIO) => bad("a FIFO"),
            _ => e,
        })?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok(f)
}

/// Opens a file of the state directory for appending (or, with `append` false, for writing
/// without truncating, as a lock file is), creating it (see `open_state`).
pub fn open_record(path: &Path, append: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.create(true).mode(0o600);
    if append {
        o.append(true);
    } else {
        o.write(true).truncate(false);
    }
    let f = open_state(&mut o, path)?;
    // Blocking again for the writes themselves (a regular file never blocks).
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    // SAFETY: fcntl on a descriptor this function owns.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    Ok(f)
}

/// The last `max` bytes of a state-directory file (whatever its size), from its first whole
/// line: an event log is read from its tail, never skipped for being big.
pub fn read_tail(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = open_state(std::fs::OpenOptions::new().read(true), path)?;
    let start = f.metadata()?.len().saturating_sub(max);
    f.seek(SeekFrom::Start(start))?;
    let mut b = Vec::new();
    f.take(max).read_to_end(&mut b)?;
    if start > 0 {
        // A partial first line is not an event.
        let cut = b
            .iter()
            .position(|c| *c == b'\n')
            .map_or(b.len(), |i| i + 1);
        b.drain(..cut);
    }
    Ok(b)
}

/// Reads a file of the state directory defensively (see `open_state`), at most `max` bytes.
pub fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let f = open_state(std::fs::OpenOptions::new().read(true), path)?;
    let len = f.metadata()?.len();
    if len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{} is {len} bytes, more than the {max} a costguard file can be",
                path.display()
            ),
        ));
    }
    let mut out = Vec::with_capacity(len as usize);
    f.take(max + 1).read_to_end(&mut out)?;
    Ok(out)
}

/// Reads a file a person named (the config file, a plan, a secret's file) as UTF-8 text: a
/// symbolic link is followed (Kubernetes mounts ConfigMaps and Secrets as links), but what it
/// ends at must be a regular file of at most `max` bytes. A FIFO, a device such as
/// /dev/zero, a socket or a directory is refused at once (opened with O_NONBLOCK, so a FIFO
/// without a writer does not hang the open, then checked) — never read until memory runs
/// out. The errors do not repeat the path: the caller names the flag and the path.
pub fn read_given(path: &Path, max: u64) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    let t = meta.file_type();
    let what = if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_char_device() || t.is_block_device() {
        Some("a device")
    } else if t.is_socket() {
        Some("a socket")
    } else if t.is_dir() {
        Some("a directory")
    } else if !t.is_file() {
        Some("not a regular file")
    } else {
        None
    };
    if let Some(what) = what {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{what}, not a regular file"),
        ));
    }
    let too_big = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        )
    };
    if meta.len() > max {
        return Err(too_big());
    }
    let mut out = Vec::with_capacity(meta.len() as usize);
    f.take(max + 1).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(too_big());
    }
    String::from_utf8(out)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// Creates `dir` (and parents) readable only by the owner: it may hold notification payloads.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_and_leaves_no_temporary() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("a.json");
        write_atomic(&p, b"one").expect("write");
        write_atomic(&p, b"two, longer").expect("rewrite");
        assert_eq!(std::fs::read(&p).expect("read"), b"two, longer");
        let names: Vec<_> = std::fs::read_dir(d.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.json")]);
    }

    #[test]
    fn bounded_reads_refuse_fifos_symlinks_and_big_files() {
        let d = tempfile::tempdir().expect("tempdir");
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let e = read_bounded(&fifo, 100).expect_err("a FIFO is refused, and does not hang");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let link = d.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &link).expect("symlink");
        let e = read_bounded(&link, 100).expect_err("a symlink is refused");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let big = d.path().join("big");
        std::fs::write(&big, vec![b'x'; 101]).expect("write");
        assert!(read_bounded(&big, 100).is_err());
        assert_eq!(read_bounded(&big, 101).expect("fits").len(), 101);
    }

    #[test]
    fn given_files_follow_links_but_refuse_devices_fifos_and_big_files() {
        let d = tempfile::tempdir().expect("tempdir");
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let e = read_given(&fifo, 100).expect_err("a FIFO is refused, and does not hang");
        assert_eq!(e.to_string(), "a FIFO, not a regular file");
        let e = read_given(Path::new("/dev/zero"), 100).expect_err("a device is refused");
        assert_eq!(e.to_string(), "a device, not a regular file");
        let real = d.path().join("real.toml");
        std::fs::write(&real, "max-usd = 5\n").expect("write");
        let link = d.path().join("link.toml");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        assert_eq!(read_given(&link, 100).expect("followed"), "max-usd = 5\n");
        assert!(read_given(&link, 5).is_err());
        let zero = d.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).expect("symlink");
        assert!(read_given(&zero, 1 << 20).is_err());
    }
}
