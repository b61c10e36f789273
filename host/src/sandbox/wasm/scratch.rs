//! Per-run scratch directories, and cleaning up after hosts that died without removing theirs.
//!
//! Several host processes may share one scratch root. Each takes a directory of its own in it,
//! `<root>/<pid>-<random>/`, holding an exclusive lock on the `.lock` file inside for as long as
//! it lives; its runs' directories go below that. The operating system releases the lock when
//! the process ends, however it ends (a `SIGKILL` too), so at start-up a host removes every
//! directory in the root whose lock it can take: their owners are gone. A directory whose lock
//! is held belongs to a live host and is left alone. Taking a directory and sweeping happen
//! under a lock on `<root>/.lock`, so a sweep never sees a directory before its lock is held.
//!
//! **Quota.** A run's directory may hold `scratch-bytes` and `scratch-files` ([`ScratchQuota`]).
//! A guest changes its files only through host calls, so the host measures the directory when
//! a host call returns — at most every [`QUOTA_INTERVAL`], walking no further than the file
//! budget — and once more when the run ends; a run over either budget fails with `DiskLimit`.
//! This bounds what a guest can put on the host's disk to its budget plus what it writes in one
//! interval and one call (which copies at most the agent's memory limit), without a filesystem
//! quota or a wrapper around every filesystem call. The walk counts a file at its size, or at
//! the disk space it takes if that is more (a sparse file counts at its full size).

use std::fs::{File, TryLockError};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The lock file in the root (held while a host takes its directory and sweeps) and in each
/// host's directory (held for the host's life).
const LOCK: &str = ".lock";

/// This process's directory in a scratch root, removed when dropped.
#[derive(Debug)]
pub(crate) struct ScratchArea {
    dir: PathBuf,
    /// Held for as long as the area exists; tells other hosts this directory is in use.
    _lock: File,
}

impl ScratchArea {
    /// Takes a directory of this process's own under `root` (created if missing), after
    /// removing the directories of hosts that are gone.
    pub(crate) fn open(root: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(root)?;
        let root_lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join(LOCK))?;
        root_lock.lock()?;
        let swept = sweep(root);
        if swept > 0 {
            tracing::info!(
                root = %root.display(),
                removed = swept,
                "removed scratch directories of hosts that are gone"
            );
        }
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let dir = root.join(format!("{}-{}", std::process::id(), &suffix[..8]));
        std::fs::create_dir(&dir)?;
        let lock = File::create(dir.join(LOCK))?;
        lock.try_lock().map_err(|e| match e {
            TryLockError::Error(e) => e,
            TryLockError::WouldBlock => io::Error::other("a new scratch directory is locked"),
        })?;
        drop(root_lock);
        Ok(Self { dir, _lock: lock })
    }

    /// This process's directory.
    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    /// A private directory for run `run_id`, removed when the returned value is dropped.
    pub(crate) fn create_run(&self, run_id: &str) -> io::Result<ScratchDir> {
        let safe = !run_id.is_empty()
            && run_id.len() <= 128
            && run_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        let name = if safe {
            run_id.to_string()
        } else {
            uuid::Uuid::new_v4().to_string()
        };
        let path = self.dir.join(name);
        std::fs::create_dir(&path)?;
        Ok(ScratchDir { path })
    }
}

impl Drop for ScratchArea {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(path = %self.dir.display(), error = %e, "cannot remove the scratch area");
        }
    }
}

/// Removes the directories in `root` whose host is gone (their lock is free, or they have
/// none); returns how many. Call with the root's lock held.
fn sweep(root: &Path) -> usize {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(root = %root.display(), error = %e, "cannot list the scratch root");
            return 0;
        }
    };
    let mut removed = 0;
    for entry in entries.filter_map(Result::ok) {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.path();
        // Held open until the directory is gone, so that no one else can take it meanwhile.
        let _lock = match File::open(path.join(LOCK)) {
            Ok(lock) => match lock.try_lock() {
                Ok(()) => Some(lock),
                Err(TryLockError::WouldBlock) => continue,
                Err(TryLockError::Error(e)) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot check a scratch directory's lock");
                    continue;
                }
            },
            // No lock: not a live host's (each takes its lock before anyone can see its
            // directory), e.g. the per-run directories of an older version.
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot open a scratch directory's lock");
                continue;
            }
        };
        match std::fs::remove_dir_all(&path) {
            Ok(()) => removed += 1,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a dead host's scratch directory");
            }
        }
    }
    removed
}

/// A run's private directory: removed by [`ScratchDir::remove`], or when dropped (a run that is
/// aborted). Removal runs on a blocking thread, since a guest may leave many files behind, and
/// is tried again a few times before it gives up (whatever is left then goes with the host's
/// scratch area, or with the next host's sweep).
pub(crate) struct ScratchDir {
    pub(crate) path: PathBuf,
}

/// Longest time between two measurements of a busy run's scratch directory.
pub(crate) const QUOTA_INTERVAL: Duration = Duration::from_millis(20);

/// A run's scratch directory measured against its byte and file budgets.
#[derive(Debug)]
pub(crate) struct ScratchQuota {
    path: PathBuf,
    max_bytes: u64,
    max_files: u64,
    measured: Option<Instant>,
}

impl ScratchQuota {
    /// The budgets of the directory at `path`.
    pub(crate) fn new(path: &Path, max_bytes: u64, max_files: u64) -> Self {
        Self {
            path: path.to_path_buf(),
            max_bytes,
            max_files,
            measured: None,
        }
    }

    /// Measures the directory unless it was measured less than [`QUOTA_INTERVAL`] ago (or
    /// always, with `now`); says how it is over budget, if it is.
    pub(crate) fn check(&mut self, now: bool) -> Result<(), String> {
        if !now
            && self
                .measured
                .is_some_and(|at| at.elapsed() < QUOTA_INTERVAL)
        {
            return Ok(());
        }
        self.measured = Some(Instant::now());
        let (bytes, files) = usage(&self.path, self.max_files);
        if files > self.max_files {
            return Err(format!(
                "the scratch directory holds more than {} files and directories (scratch-files)",
                self.max_files
            ));
        }
        if bytes > self.max_bytes {
            return Err(format!(
                "the scratch directory holds {} bytes, more than its limit of {} bytes \
                 (scratch-bytes)",
                bytes, self.max_bytes
            ));
        }
        Ok(())
    }
}

/// Bytes and entries below `dir`, counting no further than one entry past `max_files`.
fn usage(dir: &Path, max_files: u64) -> (u64, u64) {
    let (mut bytes, mut files) = (0u64, 0u64);
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            files += 1;
            if files > max_files {
                return (bytes, files);
            }
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                pending.push(entry.path());
            }
            bytes = bytes.saturating_add(meta.len().max(meta.blocks().saturating_mul(512)));
        }
    }
    (bytes, files)
}

/// Attempts at removing a run's directory, with a pause that doubles from 20 ms in between.
const REMOVE_ATTEMPTS: u32 = 4;

impl ScratchDir {
    /// Removes the directory and everything in it, off the async workers.
    pub(crate) async fn remove(mut self) {
        let path = std::mem::take(&mut self.path);
        if let Err(e) = tokio::task::spawn_blocking(move || remove_run_dir(&path)).await {
            tracing::warn!(error = %e, "the removal of a scratch directory failed");
        }
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if self.path.as_os_str().is_empty() {
            return;
        }
        let path = std::mem::take(&mut self.path);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || remove_run_dir(&path))),
            Err(_) => remove_run_dir(&path),
        }
    }
}

/// Removes a run's directory, trying again after a pause when that fails.
fn remove_run_dir(path: &Path) {
    let mut pause = std::time::Duration::from_millis(20);
    for attempt in 1..=REMOVE_ATTEMPTS {
        match std::fs::remove_dir_all(path) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) if attempt == REMOVE_ATTEMPTS => {
                tracing::warn!(path = %path.display(), error = %e, attempts = attempt, "cannot remove a scratch directory");
            }
            Err(_) => {
                std::thread::sleep(pause);
                pause *= 2;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_hosts_directory_is_swept_and_a_live_ones_kept() {
        let root = tempfile::tempdir().expect("temp dir");
        let live = ScratchArea::open(root.path()).expect("live area");
        let live_run = live.create_run("run-1").expect("run dir");
        // A host that died: its directory and lock file are there, the lock is free.
        let dead = root.path().join("12345-deadbeef");
        std::fs::create_dir_all(dead.join("run-2")).expect("dead run dir");
        File::create(dead.join(LOCK)).expect("dead lock");
        // An older version's per-run directory, with no lock at all.
        std::fs::create_dir(root.path().join("0190aaaa-old-run")).expect("old run dir");

        let newer = ScratchArea::open(root.path()).expect("second area");
        assert!(!dead.exists(), "the dead host's directory is removed");
        assert!(!root.path().join("0190aaaa-old-run").exists());
        assert!(
            live_run.path.exists(),
            "the live host's run directory stays"
        );
        assert_ne!(newer.path(), live.path());

        let newer_path = newer.path().to_path_buf();
        drop(newer);
        assert!(!newer_path.exists(), "a dropped area removes its directory");
        assert!(live.path().exists());
    }
}
