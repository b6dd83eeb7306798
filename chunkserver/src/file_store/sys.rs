//! Thin, blocking wrappers over the Linux calls the file store needs beyond
//! `std`: vectored positional writes, `syncfs`, `statvfs`, no-replace
//! rename, directory fsync, and the mapping of OS errors to [`ChunkError`].
//! Every function here blocks; callers run them off the async runtime.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use tessera_common::chunk_api::ChunkError;

/// Writes every byte of `parts`, back to back, at `offset` (pwritev, retried
/// on short writes and EINTR).
pub fn pwritev_all(file: &File, parts: &[&[u8]], offset: u64) -> io::Result<()> {
    let total_bytes: usize = parts.iter().map(|part| part.len()).sum();
    let mut written_bytes = 0usize;
    while written_bytes < total_bytes {
        let iovecs = remaining_iovecs(parts, written_bytes);
        let at = offset + written_bytes as u64;
        let at = libc::off_t::try_from(at).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
        let count = libc::c_int::try_from(iovecs.len().min(1024)).unwrap_or(1024);
        // SAFETY: every iovec points into a live slice of `parts`, which
        // outlives this call; the kernel only reads from them.
        let result = unsafe { libc::pwritev(file.as_raw_fd(), iovecs.as_ptr(), count, at) };
        match result {
            n if n > 0 => written_bytes += n as usize,
            0 => return Err(io::Error::new(io::ErrorKind::WriteZero, "pwritev wrote nothing")),
            _ => {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
        }
    }
    Ok(())
}

fn remaining_iovecs(parts: &[&[u8]], mut skip_bytes: usize) -> Vec<libc::iovec> {
    let mut iovecs = Vec::with_capacity(parts.len());
    for part in parts {
        if skip_bytes >= part.len() {
            skip_bytes -= part.len();
            continue;
        }
        let rest = &part[skip_bytes..];
        skip_bytes = 0;
        iovecs.push(libc::iovec {
            iov_base: rest.as_ptr() as *mut libc::c_void,
            iov_len: rest.len(),
        });
    }
    iovecs
}

/// Reads exactly `buf.len()` bytes at `offset`; a file that ends early is
/// `UnexpectedEof`.
pub fn pread_exact(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    file.read_exact_at(buf, offset)
}

/// Reads `buf.len()` bytes at `offset`, or as many as the file holds:
/// returns how many were read; the rest of `buf` is left as it was.
pub fn pread_to_eof(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    debug_assert!(done <= buf.len());
    Ok(done)
}

/// Flushes every dirty page and the journal of the filesystem holding `file`.
pub fn syncfs(file: &File) -> io::Result<()> {
    // SAFETY: plain syscall on a file descriptor we own.
    if unsafe { libc::syncfs(file.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Bytes of the filesystem holding `path`: (total, available to us).
pub fn statvfs_bytes(path: &Path) -> io::Result<(u64, u64)> {
    let c_path = c_path(path)?;
    // SAFETY: zeroed statvfs is a valid out-parameter; c_path is NUL-terminated.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let fragment_bytes = stat.f_frsize as u64;
    Ok((
        stat.f_blocks as u64 * fragment_bytes,
        stat.f_bavail as u64 * fragment_bytes,
    ))
}

/// Renames `from` to `to`, failing with `AlreadyExists` instead of replacing.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let (from, to) = (c_path(from)?, c_path(to)?);
    // SAFETY: both paths are NUL-terminated and live across the call.
    let result = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Takes an exclusive advisory lock on `file` without waiting; released when
/// the file is closed.
pub fn lock_exclusive(file: &File) -> io::Result<()> {
    // SAFETY: plain syscall on a file descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes creations, renames and unlinks in `dir` durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Whether an OS error means "out of space" rather than a failing disk.
pub fn is_no_space(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// The caller-facing form of an OS error while doing `what`.
pub fn chunk_error(error: &io::Error, what: &str) -> ChunkError {
    if is_no_space(error) {
        ChunkError::NoSpace
    } else {
        ChunkError::Io(format!("{what}: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pwritev_writes_all_parts_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .expect("open");
        pwritev_all(&file, &[b"abc", b"", b"defg"], 3).expect("write");
        let mut buf = [0u8; 10];
        pread_exact(&file, &mut buf, 0).expect("read");
        assert_eq!(&buf, b"\0\0\0abcdefg");
        assert_eq!(remaining_iovecs(&[b"abc", b"defg"], 4).len(), 1);
    }

    #[test]
    fn rename_noreplace_refuses_to_replace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"a").expect("write");
        std::fs::write(&b, b"b").expect("write");
        let error = rename_noreplace(&a, &b).expect_err("must refuse");
        assert_eq!(error.kind(), io::ErrorKind::AlreadyExists);
        assert!(statvfs_bytes(dir.path()).expect("statvfs").0 > 0);
    }
}
