//! Disk-full faults: the engine's directory on a size-limited tmpfs (mounted here, as root),
//! and a filler file that takes every free byte until it is released.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A tmpfs of a fixed size mounted on a directory; unmounted when dropped.
#[derive(Debug)]
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` on `dir` (created if missing). Needs root (CAP_SYS_ADMIN).
    pub fn mount(dir: &Path, bytes: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let options = std::ffi::CString::new(format!("size={bytes},mode=0755"))
            .map_err(std::io::Error::other)?;
        rustix::mount::mount(
            "nimbus-chaos",
            dir,
            "tmpfs",
            rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV,
            options.as_c_str(),
        )?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Where it is mounted.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a process still holding a file there (a worker being reaped) must not keep
        // the mount, and with it the memory, alive.
        if let Err(e) = rustix::mount::unmount(&self.dir, rustix::mount::UnmountFlags::DETACH) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot unmount the chaos tmpfs");
        }
    }
}

/// A file that filled its filesystem; removed by [`Filler::release`] or when dropped.
#[derive(Debug)]
pub struct Filler {
    path: PathBuf,
    /// Bytes it took.
    pub bytes: u64,
}

impl Filler {
    /// Writes `dir/FILL` until the filesystem has no byte left (ENOSPC), in 1 MiB and then
    /// 4 KiB writes so that not even a page is left for the engine.
    pub fn fill(dir: &Path) -> std::io::Result<Self> {
        let path = dir.join("FILL");
        let mut file = std::fs::File::create(&path)?;
        let mut filler = Self { path, bytes: 0 };
        for chunk in [1 << 20, 4096] {
            let block = vec![0xA5u8; chunk];
            loop {
                match file.write(&block) {
                    Ok(0) => break,
                    Ok(n) => filler.bytes += n as u64,
                    Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) => {
                        break
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(filler)
    }

    /// Gives the space back.
    pub fn release(self) {}
}

impl Drop for Filler {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
