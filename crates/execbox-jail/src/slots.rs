//! Host uid slots: every concurrent run gets its own host uid, so RLIMIT_NPROC, signals and
//! file ownership never cross runs. A slot is an `flock` on `<state_dir>/slots/<n>.lock`, held
//! for the run's life and released by the kernel if the holder dies, so independent processes
//! (the server's spawner, `execbox run` in a shell) never share a uid.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::fcntl::{Flock, FlockArg};

use crate::error::{JailError, Result};

/// The slot table.
#[derive(Debug)]
pub struct Slots {
    dir: PathBuf,
    base: u32,
    count: u32,
    next: AtomicU32,
}

/// A held slot; dropping it releases the uid.
#[derive(Debug)]
pub struct Slot {
    /// Host uid (and gid) of the run.
    pub uid: u32,
    _lock: Flock<File>,
}

impl Slots {
    /// Slots `base .. base + count`, with lock files under `dir`.
    pub fn new(dir: PathBuf, base: u32, count: u32) -> Result<Self> {
        if count == 0 || base.checked_add(count).is_none() || base < 65_536 {
            return Err(JailError::InvalidSpec(format!(
                "uid range {base}+{count} must be non-empty, above 65535 and fit in 32 bits"
            )));
        }
        fs::create_dir_all(&dir).map_err(|e| JailError::io("mkdir", &dir, e))?;
        // Spread concurrent processes over the table.
        let start = std::process::id().wrapping_mul(2_654_435_761) % count;
        Ok(Self {
            dir,
            base,
            count,
            next: AtomicU32::new(start),
        })
    }

    /// The first slot's uid.
    pub fn base(&self) -> u32 {
        self.base
    }

    /// The number of slots.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Take a free slot.
    pub fn acquire(&self) -> Result<Slot> {
        for _ in 0..self.count {
            let n = self.next.fetch_add(1, Ordering::Relaxed) % self.count;
            let path = self.dir.join(format!("{n}.lock"));
            let f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC)
                .open(&path)
                .map_err(|e| JailError::io("open", &path, e))?;
            if let Ok(lock) = Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                return Ok(Slot {
                    uid: self.base + n,
                    _lock: lock,
                });
            }
        }
        Err(JailError::NoSlot(self.count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_slots_are_distinct_and_released_on_drop() {
        let t = tempfile::tempdir().unwrap();
        let s = Slots::new(t.path().join("slots"), 100_000, 2).unwrap();
        let a = s.acquire().unwrap();
        let b = s.acquire().unwrap();
        assert_ne!(a.uid, b.uid);
        assert!(matches!(s.acquire(), Err(JailError::NoSlot(2))));
        let freed = a.uid;
        drop(a);
        assert_eq!(s.acquire().unwrap().uid, freed);
        assert!(
            Slots::new(t.path().into(), 0, 10).is_err(),
            "root's uid range refused"
        );
    }
}
