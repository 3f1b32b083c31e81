//! The restore's output file: a temporary file of the restore's own beside the output, created
//! exclusively, written, fsynced and measured through its open descriptor (SQLite's check goes
//! by name, proven to be that file before and after), and moved into place by a rename that
//! cannot replace anything. Whatever already exists at the output (a file, a symlink, even a
//! dangling one) or at another temporary name is never touched.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The marker in every temporary name a restore uses: `<out>.walfleet-restore-<16 hex>.tmp`.
pub const TEMP_MARKER: &str = ".walfleet-restore-";

/// A new, empty temporary file beside `out`, created with `O_EXCL` under a random name.
pub struct TempOutput {
    pub path: PathBuf,
    pub file: File,
}

impl TempOutput {
    pub fn create(out: &Path) -> Result<TempOutput> {
        for _ in 0..16 {
            let mut name = out.as_os_str().to_owned();
            name.push(format!("{TEMP_MARKER}{:016x}.tmp", rand::random::<u64>()));
            let path = PathBuf::from(name);
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .mode(0o644)
                .open(&path)
            {
                Ok(file) => return Ok(TempOutput { path, file }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("create temporary file {}", path.display())),
            }
        }
        bail!("create a temporary file beside {}: every random name tried exists", out.display())
    }

    /// Whether `path` still names the file this restore created and wrote.
    fn still_ours(&self) -> io::Result<bool> {
        let (named, open) = (std::fs::symlink_metadata(&self.path)?, self.file.metadata()?);
        Ok(named.dev() == open.dev() && named.ino() == open.ino())
    }

    /// Removes the temporary name, only while it still names this restore's own file.
    pub fn discard(&self) {
        if self.still_ours().unwrap_or(false) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// Moves the file to `out`, failing (and leaving both names as they were) if anything
    /// exists at `out`. The directory is fsynced by the caller.
    pub fn install(&self, out: &Path) -> Result<()> {
        if !self.still_ours().with_context(|| format!("check temporary file {}", self.path.display()))? {
            bail!(
                "temporary file {} was replaced during the restore; nothing was moved to {}",
                self.path.display(),
                out.display()
            );
        }
        match rename_noreplace(&self.path, out) {
            // A swap between the check and the rename would have moved another file: say so.
            Ok(()) => {
                let (named, open) = (std::fs::symlink_metadata(out)?, self.file.metadata()?);
                if named.dev() != open.dev() || named.ino() != open.ino() {
                    bail!("{} is not the file the restore wrote: its temporary name was replaced", out.display());
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.discard();
                bail!("output {} appeared during the restore; left it untouched", out.display())
            }
            Err(e) => {
                self.discard();
                Err(e).with_context(|| format!("move restored database to {}", out.display()))
            }
        }
    }

    /// Runs `check` on the file by its name (SQLite takes a name, not a descriptor), proving
    /// before and after that the name is this restore's own file, so the verdict is about it.
    pub fn check_by_name(&self, check: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        let ours = || -> Result<()> {
            match self.still_ours() {
                Ok(true) => Ok(()),
                Ok(false) => bail!("temporary file {} was replaced during the restore", self.path.display()),
                Err(e) => Err(e).with_context(|| format!("check temporary file {}", self.path.display())),
            }
        };
        ours()?;
        check(&self.path)?;
        ours()
    }
}

/// `rename(from, to)` that fails with `AlreadyExists` instead of replacing `to`:
/// `renameat2(RENAME_NOREPLACE)`, or, where the filesystem lacks it, `link` + `unlink` (the
/// link fails when `to` exists).
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use nix::fcntl::{renameat2, RenameFlags};
    match renameat2(None, from, None, to, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOSYS) | Err(nix::errno::Errno::ENOTSUP) => {
            std::fs::hard_link(from, to)?;
            std::fs::remove_file(from)
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether anything at all is at `p`: a file, a directory, or a symlink (even a dangling one).
pub fn occupied(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// `file:` URI of `path` for SQLite, with `?`, `#`, `%` and everything outside the unreserved
/// set percent-encoded, plus `params`.
pub fn sqlite_uri(path: &Path, params: &str) -> String {
    let mut uri = String::from("file:");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            uri.push(b as char);
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    if !params.is_empty() {
        uri.push('?');
        uri.push_str(params);
    }
    uri
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_escape_what_sqlite_would_read_as_syntax() {
        assert_eq!(sqlite_uri(Path::new("/a b/x?y#z%w.db"), "immutable=1"), "file:/a%20b/x%3Fy%23z%25w.db?immutable=1");
    }

    #[test]
    fn the_rename_never_replaces_a_file_or_a_dangling_symlink() {
        let dir = tempfile::tempdir().expect("tmp");
        let out = dir.path().join("out.db");
        std::fs::write(&out, b"theirs").expect("write");
        let t = TempOutput::create(&out).expect("temp");
        let err = t.install(&out).expect_err("an existing file");
        assert!(err.to_string().contains("left it untouched"), "{err}");
        assert_eq!(std::fs::read(&out).expect("read"), b"theirs");
        assert!(!t.path.exists(), "the temporary file is removed");

        std::fs::remove_file(&out).expect("remove");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &out).expect("symlink");
        let t = TempOutput::create(&out).expect("temp");
        assert!(t.install(&out).is_err(), "a dangling symlink is not replaced");
        assert!(std::fs::symlink_metadata(&out).expect("lstat").file_type().is_symlink());

        std::fs::remove_file(&out).expect("remove");
        let t = TempOutput::create(&out).expect("temp");
        t.install(&out).expect("free name");
        assert!(out.is_file() && !t.path.exists());
    }

    #[test]
    fn a_foreign_file_at_the_temporary_name_is_neither_moved_nor_deleted() {
        let dir = tempfile::tempdir().expect("tmp");
        let out = dir.path().join("out.db");
        let t = TempOutput::create(&out).expect("temp");
        std::fs::remove_file(&t.path).expect("remove");
        std::fs::write(&t.path, b"foreign").expect("write");
        assert!(t.install(&out).is_err(), "a replaced temporary file is not installed");
        t.discard();
        assert_eq!(std::fs::read(&t.path).expect("read"), b"foreign");
        assert!(!occupied(&out));
    }
}
