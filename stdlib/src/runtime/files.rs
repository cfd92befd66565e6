//! Files written so that nothing is lost and nothing is left behind: [`write_atomically`]
//! (a file is its old content or all of the new, whatever kills the process meanwhile),
//! and [`canonical_safetensors`] (the same tensors always give the same bytes).
//!
//! A write goes to a temporary file beside the target, is synced, and renamed over it.
//! On Linux the temporary file is unnamed (`O_TMPFILE`) until the data is complete and
//! synced, so a process killed while writing (`kill -9`, Ctrl-C, a closed pipe) leaves no
//! file at all; it gets a name (`.NAME.tmpPID-N`) only for the instant between linking and
//! renaming (and where linking fails, without `/proc`, the data is written to that
//! name instead). Temporary files of that form whose process is gone are removed before each
//! write of the same target, so debris from a crash in that instant, or from a system
//! without unnamed files, does not outlive the next write.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` so that `path` is either its old content or all of the new.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| format!("{} is not a file name", path.display()))?
        .to_string_lossy()
        .into_owned();
    remove_stale(dir, &name);
    // Numbered per write, so two writes of one target in one process never share a name.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(temp_name(&name, std::process::id(), seq));
    let named = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    let write = || -> std::io::Result<()> {
        match unnamed(dir) {
            // Linking needs /proc; without it, the named way.
            Some(mut f) => {
                f.write_all(bytes)?;
                f.sync_all()?;
                if link(&f, &tmp).is_err() {
                    named()?;
                }
            }
            None => named()?,
        }
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}

/// The temporary name for write `seq` of `name` by process `pid`.
fn temp_name(name: &str, pid: u32, seq: u64) -> String {
    format!(".{name}.tmp{pid}-{seq}")
}

/// Removes `.NAME.tmpPID-N` files (and `.NAME.tmpPID`, as earlier versions named them) in
/// `dir` whose process no longer runs.
fn remove_stale(dir: &Path, name: &str) {
    let prefix = format!(".{name}.tmp");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(pid) = file
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|p| p.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !alive(pid) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Whether process `pid` exists (unknown counts as alive: nothing is removed).
fn alive(pid: u32) -> bool {
    #[cfg(target_os = "linux")]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return true;
        };
        // SAFETY: signal 0 only checks that the process exists.
        let r = unsafe { libc::kill(pid, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        true
    }
}

/// An unnamed file in `dir` (Linux `O_TMPFILE`); `None` where the system or the file
/// system has none.
fn unnamed(dir: &Path) -> Option<std::fs::File> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(0o666)
            .open(dir)
            .ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        None
    }
}

/// Gives the unnamed file `f` the name `to`.
fn link(f: &std::fs::File, to: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStrExt;
        let from = std::ffi::CString::new(format!("/proc/self/fd/{}", f.as_raw_fd()))
            .map_err(std::io::Error::other)?;
        let to_c =
            std::ffi::CString::new(to.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
        // SAFETY: two valid NUL-terminated paths; linking through /proc follows the
        // descriptor's magic link to the open (unnamed) file.
        let r = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to_c.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (f, to);
        Err(std::io::Error::other("unnamed files are Linux-only"))
    }
}

/// A safetensors file with its header in one canonical form: the JSON keys sorted at
/// every level (the `safetensors` crate writes `__metadata__` in a hash map's order,
/// which differs from run to run), padded with spaces to 8 bytes. The tensor data is
/// untouched (the crate already orders it by dtype and name).
pub fn canonical_safetensors(file: Vec<u8>) -> Result<Vec<u8>, String> {
    let bad = || "internal error: a safetensors header the writer cannot read".to_string();
    let n = file
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(bad)?;
    let header = file
        .get(8..8usize.checked_add(n).ok_or_else(bad)?)
        .ok_or_else(bad)?;
    let value: serde_json::Value = serde_json::from_slice(header).map_err(|_| bad())?;
    let mut text = sorted(value).to_string().into_bytes();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + file.len() - 8 - n);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    out.extend_from_slice(&file[8 + n..]);
    Ok(out)
}

/// `v` with every object's keys in sorted order (whatever map serde_json was built with).
fn sorted(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => {
            let mut entries: Vec<(String, serde_json::Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        other => other,
    }
}

/// Where [`write_atomically`] puts write `seq` of `path` by process `pid` while writing
/// (for tests).
pub fn temp_path(path: &Path, pid: u32, seq: u64) -> PathBuf {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.join(temp_name(&name, pid, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temporary_files_of_dead_processes_are_removed() {
        let dir = std::env::temp_dir().join(format!("nabla-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let target = dir.join("ckpt.safetensors");
        // A process id that cannot be running (above the largest pid Linux allows, 2^22).
        let dead = temp_path(&target, 4_194_305, 3);
        std::fs::write(&dead, b"debris").expect("write");
        // The form earlier versions wrote, without a sequence number.
        let old = dir.join(".ckpt.safetensors.tmp4194306");
        std::fs::write(&old, b"debris").expect("write");
        let other = dir.join(".other.safetensors.tmp4194305");
        std::fs::write(&other, b"not ours").expect("write");
        write_atomically(&target, b"data").expect("write");
        assert!(!dead.exists(), "the dead process's temporary file is gone");
        assert!(!old.exists(), "so is the one named the older way");
        assert!(other.exists(), "another target's file is left alone");
        assert_eq!(std::fs::read(&target).expect("read"), b"data");
        let names: Vec<String> = std::fs::read_dir(&dir)
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
