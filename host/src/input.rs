//! Reading files an operator or embedder names (components, detached
//! signatures, keys, policies) without trusting what is at the path.
//!
//! A path may name a FIFO that nobody writes (a plain `open` would wait
//! forever), a device that never ends (`/dev/zero` would fill memory), a
//! directory, or a file far larger than anything Capsule expects. [`read_file`]
//! opens without blocking, looks at what it actually opened (not at the path,
//! which may change in between), refuses anything but a regular file and
//! never reads more than a stated limit.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The largest key file read (public or secret; raw, PEM or OpenSSH). Real
/// Ed25519 key files are under 200 bytes; 64 KiB leaves room for comments.
pub const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// The largest detached signature read. A signature section holds at most
/// 64 signatures over at most 64 hash sets, well under 1 MiB.
pub const MAX_SIGNATURE_BYTES: u64 = 1024 * 1024;

/// The largest plugin component read. Real plugins are kilobytes to a few
/// megabytes; 256 MiB bounds the memory a hostile path can make the host
/// spend without refusing any plausible component.
pub const MAX_COMPONENT_BYTES: u64 = 256 * 1024 * 1024;

/// The largest policy file read. A policy is hand-written TOML; 4 MiB is
/// thousands of plugins.
pub const MAX_POLICY_BYTES: u64 = 4 * 1024 * 1024;

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Opening, inspecting or reading the file failed.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The path names something other than a regular file.
    #[error("cannot read {}: it is a {kind}, not a regular file", path.display())]
    NotRegularFile {
        /// The path.
        path: PathBuf,
        /// What it is instead: `directory`, `FIFO`, `character device`, ….
        kind: &'static str,
    },
    /// The file is larger than the limit for its kind.
    #[error("cannot read {}: it is larger than the limit of {limit} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit, in bytes.
        limit: u64,
    },
}

impl ReadError {
    /// The path the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ReadError::Io { path, .. }
            | ReadError::NotRegularFile { path, .. }
            | ReadError::TooLarge { path, .. } => path,
        }
    }

    /// The error as an [`std::io::Error`] that does not repeat the path, for
    /// error types that carry a path and an I/O error.
    pub fn into_io_error(self) -> std::io::Error {
        match self {
            ReadError::Io { source, .. } => source,
            ReadError::NotRegularFile { kind, .. } => std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("it is a {kind}, not a regular file"),
            ),
            ReadError::TooLarge { limit, .. } => std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                format!("it is larger than the limit of {limit} bytes"),
            ),
        }
    }
}

/// Reads the regular file at `path`, refusing anything else and anything
/// larger than `max_bytes`. Never blocks on a FIFO and never reads more than
/// `max_bytes + 1` bytes.
pub fn read_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>, ReadError> {
    let io = |source| ReadError::Io {
        path: path.to_owned(),
        source,
    };
    let file = open_nonblocking(path).map_err(io)?;
    // fstat the handle we hold: the path may be swapped after the check.
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegularFile {
            path: path.to_owned(),
            kind: kind_of(&meta.file_type()),
        });
    }
    let too_large = || ReadError::TooLarge {
        path: path.to_owned(),
        limit: max_bytes,
    };
    if meta.len() > max_bytes {
        return Err(too_large());
    }
    // The size may change while we read (a file being appended to), so the
    // read itself is bounded too: one byte more than allowed tells us it
    // grew past the limit.
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large());
    }
    Ok(bytes)
}

/// Opens for reading without waiting for a FIFO's writer and without making
/// a terminal our controlling terminal.
#[cfg(unix)]
pub(crate) fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
}

#[cfg(not(unix))]
pub(crate) fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    File::open(path)
}

/// A human name for a file type that is not a regular file.
pub(crate) fn kind_of(file_type: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "FIFO";
        }
        if file_type.is_char_device() {
            return "character device";
        }
        if file_type.is_block_device() {
            return "block device";
        }
        if file_type.is_socket() {
            return "socket";
        }
    }
    if file_type.is_dir() {
        "directory"
    } else if file_type.is_symlink() {
        "symbolic link"
    } else if file_type.is_file() {
        "regular file"
    } else {
        "special file"
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    use crate::test_support::{mkfifo, temp_dir};

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = temp_dir("fifo");
        let fifo = dir.join("pipe");
        mkfifo(&fifo);
        // A blocking open would wait forever for a writer: run the read on
        // another thread so a regression fails the test instead of hanging it.
        let (sender, receiver) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || sender.send(read_file(&path, 1024)));
        let started = Instant::now();
        let result = receiver
            .recv_timeout(Duration::from_secs(5))
            .expect("opening a FIFO does not block");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            matches!(result, Err(ReadError::NotRegularFile { kind: "FIFO", .. })),
            "{result:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_device_is_refused() {
        let result = read_file(Path::new("/dev/zero"), 1024);
        assert!(
            matches!(
                result,
                Err(ReadError::NotRegularFile {
                    kind: "character device",
                    ..
                })
            ),
            "{result:?}"
        );
    }

    #[test]
    fn a_directory_is_refused() {
        let dir = temp_dir("dir");
        let err = read_file(&dir, 1024).unwrap_err();
        assert!(
            matches!(
                err,
                ReadError::NotRegularFile {
                    kind: "directory",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("directory"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_limit_is_inclusive() {
        let dir = temp_dir("limit");
        let at = dir.join("at");
        let over = dir.join("over");
        std::fs::write(&at, vec![7u8; 100]).unwrap();
        std::fs::write(&over, vec![7u8; 101]).unwrap();
        assert_eq!(read_file(&at, 100).unwrap(), vec![7u8; 100]);
        let err = read_file(&over, 100).unwrap_err();
        assert!(
            matches!(err, ReadError::TooLarge { limit: 100, .. }),
            "{err:?}"
        );
        assert_eq!(err.into_io_error().kind(), std::io::ErrorKind::FileTooLarge);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_file_is_an_io_error() {
        let err = read_file(Path::new("/nonexistent/capsule/file"), 10).unwrap_err();
        assert!(matches!(err, ReadError::Io { .. }), "{err:?}");
    }
}
