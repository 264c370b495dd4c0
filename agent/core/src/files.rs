//! Files the agent writes whole: a power cut leaves the old file or the new one, never a
//! part of the new one.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

/// How long a disk may keep the agent waiting before it says so: a stalled or failing SD
/// card, not a slow one.
pub const SLOW_DISK: Duration = Duration::from_secs(5);

/// Replaces the file at `path` by `bytes` atomically: written to a file beside it, synced,
/// then renamed over it, keeping the old file's permissions (and making its directory if
/// there is none).
///
/// The sync comes before the rename: without it a file system may make the rename durable
/// before the data (ext4 commits metadata every 5 s and writes data back later; other file
/// systems order them less), and a power cut in between leaves a file of the new name that
/// is empty or partly zeros. For a compiled module that is native code the agent would run.
/// The folder is synced after it, so that the rename itself is durable when this returns.
pub fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace_with_mode(path, bytes, 0o666)
}

/// [`replace`] for what only the agent's user may read (a copy of a config file, which may
/// hold the broker's password): a new file is made readable by its owner only.
pub fn replace_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace_with_mode(path, bytes, 0o600)
}

fn replace_with_mode(path: &Path, bytes: &[u8], new_mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    // Beside it, its whole name and `.part`: files that differ only after their last dot
    // (the session files `<client id>.<function>`) each get their own.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".part");
    let tmp = std::path::PathBuf::from(tmp);
    if let Some(dir) = path.parent() {
        create_dir_all(dir)?;
    }
    // One a stop left half-written would keep its own mode.
    let _ = std::fs::remove_file(&tmp);
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(new_mode)
        .open(&tmp);
    let written = created.and_then(|mut f| {
        f.write_all(bytes)?;
        if let Ok(m) = std::fs::metadata(path) {
            f.set_permissions(m.permissions())?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    });
    if written.is_err() {
        // A half-written copy on a full disk would keep it full.
        let _ = std::fs::remove_file(&tmp);
        return written;
    }
    // The rename is durable once its folder is: until then a power cut can bring the old
    // file back (ext4 commits its metadata every 5 s) after the agent went on with the
    // new one (a deployment applied and reported, a config rewritten). The file is in
    // place either way, so a folder that cannot be synced (a failing disk) is said, not
    // failed.
    if let Some(dir) = path.parent()
        && let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all())
    {
        tracing::warn!(file = %path.display(), error = %e, "the folder of a replaced file could not be synced: a power cut soon may bring the old file back");
    }
    written
}

/// [`std::fs::create_dir_all`], with the disk's own error where it would say "File
/// exists": on a file system the kernel shut down (XFS after an error) `mkdir` of a folder
/// that exists still says so, and reading the folder then fails with the I/O error that
/// is the cause.
pub fn create_dir_all(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| match std::fs::metadata(dir) {
        Err(cause) if e.kind() == std::io::ErrorKind::AlreadyExists => cause,
        _ => e,
    })
}

/// When a write of a file was decided, for writes that run in the background and may
/// reach the disk in another order (a session's filters confirmed twice in a row, or a
/// removed function's emptied file and the file of the same function added back while
/// the disk stalled): [`replace_in_turn`] and [`remove_in_turn`] let the later decision
/// stand. Take it where the write is decided, not where it runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Turn(u64);

impl Turn {
    /// Later than every turn taken before it in this process.
    pub fn take() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Self(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

/// The last turn that reached `path`, locked: writes of one file run one at a time (two
/// at once would share its `.part` file, and one could rename the other's half-written
/// copy into place).
fn turn_of(path: &Path) -> std::sync::Arc<std::sync::Mutex<Turn>> {
    type Turns =
        std::collections::HashMap<std::path::PathBuf, std::sync::Arc<std::sync::Mutex<Turn>>>;
    static TURNS: std::sync::LazyLock<std::sync::Mutex<Turns>> =
        std::sync::LazyLock::new(Default::default);
    let mut turns = TURNS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    turns.entry(path.to_path_buf()).or_default().clone()
}

/// Runs `write` on `path` unless a later turn than `turn` has already written or removed
/// it; `Ok(false)` if it was skipped.
fn in_turn(
    path: &Path,
    turn: Turn,
    write: impl FnOnce() -> std::io::Result<()>,
) -> std::io::Result<bool> {
    let last = turn_of(path);
    let mut last = last
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if *last > turn {
        return Ok(false);
    }
    write()?;
    *last = turn;
    Ok(true)
}

/// [`replace`], unless a later [`Turn`] has already replaced or removed `path`:
/// `Ok(false)`, the file as that one left it.
pub fn replace_in_turn(path: &Path, bytes: &[u8], turn: Turn) -> std::io::Result<bool> {
    in_turn(path, turn, || replace(path, bytes))
}

/// Removes `path` (gone already is fine), unless a later [`Turn`] has already replaced
/// it: `Ok(false)`, the file kept.
pub fn remove_in_turn(path: &Path, turn: Turn) -> std::io::Result<bool> {
    in_turn(path, turn, || match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    })
}

/// Runs `work` on the disk of `path`; if it keeps waiting [`SLOW_DISK`], says so (as
/// `what`), and how long it took once it ends. For the disk work of a start, before the
/// agent has said anything else: a stalled card otherwise left it silent until the disk
/// answered.
pub fn said_if_slow<T>(what: &str, path: &Path, work: impl FnOnce() -> T) -> T {
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let (what, shown) = (what.to_string(), path.display().to_string());
    let started = std::time::Instant::now();
    let watcher = std::thread::Builder::new()
        .name("slow-disk".into())
        .spawn(move || {
            if wait.recv_timeout(SLOW_DISK) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                tracing::warn!(path = %shown, "{what} has waited {} s for the disk (stalled or failing?); the start goes on once it answers", SLOW_DISK.as_secs());
                let _ = wait.recv();
                let took_ms = started.elapsed().as_millis() as u64;
                tracing::info!(path = %shown, took_ms, "{what}: the disk answered");
            }
        });
    let result = work();
    drop(done);
    if let Ok(w) = watcher {
        let _ = w.join();
    }
    result
}

/// The SD card or eMMC (`mmcblk0p2`, say) that holds `path` (or, for a path not made yet,
/// its nearest folder that is), if that is what holds it: such cards wear out by what is
/// written to them. `None` for any other disk, or when `/sys` cannot tell (a file system
/// without a block device, or no sysfs).
pub fn flash_card_under(path: &Path) -> Option<String> {
    flash_card_in(Path::new("/sys"), path)
}

/// [`flash_card_under`] with sysfs at `sys`.
fn flash_card_in(sys: &Path, path: &Path) -> Option<String> {
    block_device_in(sys, path).filter(|name| name.starts_with("mmcblk"))
}

/// The block device (`mmcblk0p2`, `sda1`, `loop0`) that holds `path` or, for a path not
/// made yet, its nearest folder that is; with sysfs at `sys`, whose `dev/block/MAJOR:MINOR`
/// links to the device's folder, named after it.
fn block_device_in(sys: &Path, path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let dev = path
        .ancestors()
        .find_map(|p| std::fs::metadata(p).ok())?
        .dev();
    let link = sys
        .join("dev/block")
        .join(format!("{}:{}", libc::major(dev), libc::minor(dev)));
    let device = std::fs::canonicalize(link).ok()?;
    Some(device.file_name()?.to_str()?.to_owned())
}

/// The count of errors that the ext4 file system holding `path` has met since it was last
/// checked (`/sys/fs/ext4/<device>/errors_count`), to read again with [`ErrorCount::read`];
/// `None` on any other file system.
///
/// It tells a flush whether its `fsync` can be believed: when ext4 meets an error it
/// aborts its journal first and turns read-only after, and an `fsync` in between returns
/// success for writes that the aborted journal never committed (measured: see
/// `docs/state.md`, "A file system made read-only under the agent").
pub fn ext4_error_count(path: &Path) -> Option<ErrorCount> {
    ext4_error_count_in(Path::new("/sys"), path)
}

fn ext4_error_count_in(sys: &Path, path: &Path) -> Option<ErrorCount> {
    let device = block_device_in(sys, path)?;
    let file = sys.join("fs/ext4").join(&device).join("errors_count");
    let count = ErrorCount {
        file: std::fs::File::open(file).ok()?,
        device,
    };
    count.read().map(|_| count)
}

/// Whether `file`'s file system still takes writes after an `fsync` of it said yes:
/// begins one metadata change on it (`fallocate` with `FALLOC_FL_KEEP_SIZE` over the first
/// byte, which is allocated already: only the file's times change) and fails with the
/// file system's error if it has stopped (ext4: `EROFS`, its journal aborted; XFS: `EIO`,
/// shut down). `Ok` where the file system has no `fallocate` (`EOPNOTSUPP`: nothing to
/// tell by), and if it finds no room (`ENOSPC`, `EDQUOT`): a file system that counts its
/// room is up, and a full disk is the free-space reserve's to handle (ext4 and XFS,
/// filled here to the last block, take this change: the byte is allocated). `file` must
/// be open for writing.
///
/// Both file systems can answer an `fsync` under way at their fault with success for
/// writes that are then not on disk. ext4 aborts its journal, writes the journal's
/// superblock (a synchronous write, milliseconds on a busy card) and only then counts the
/// error; its last transaction, aborted, is marked committed at once, so an `fdatasync`
/// that needs it returns success meanwhile. XFS shut down while an `fsync` forces its log
/// returns success too, and the file is shorter after the log's replay. Measured on loop
/// devices with `tests/bench/fswindow.py`: ext4 7 of 390 errors lost the last write so
/// confirmed, 0 of 300 with this check; XFS 13 of 300 shutdowns, 0 of 300 with it (and
/// `fsync` for `fdatasync` lost writes too). A change begun after such an `fsync`
/// returned fails if the fault had come by then, which it had if the `fsync` was
/// answered by it.
pub fn takes_writes_after_sync(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: `file` is an open descriptor for the call's duration; fallocate reads and
    // writes no memory of ours.
    #[allow(unsafe_code)]
    let r = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, 1) };
    if r == 0 {
        return Ok(());
    }
    match std::io::Error::last_os_error() {
        e if matches!(
            e.raw_os_error(),
            Some(libc::EOPNOTSUPP | libc::ENOSPC | libc::EDQUOT)
        ) =>
        {
            Ok(())
        }
        e => Err(e),
    }
}

/// See [`ext4_error_count`]: the file kept open, read again from its start each time
/// (one system call; sysfs makes the value anew at every read from offset 0).
#[derive(Debug)]
pub struct ErrorCount {
    file: std::fs::File,
    /// The block device (`mmcblk0p2`).
    pub device: String,
}

impl ErrorCount {
    /// The count now (`None` if it cannot be read: the file system is gone).
    pub fn read(&self) -> Option<u64> {
        use std::os::unix::fs::FileExt as _;
        let mut buf = [0u8; 24];
        let n = self.file.read_at(&mut buf, 0).ok()?;
        std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_replaced_file_is_whole_and_keeps_its_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        replace(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["agent.toml"], "no file left beside it");
    }

    #[test]
    fn a_write_decided_earlier_never_lands_over_a_later_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.x");
        let (emptied, added_back, ended) = (Turn::take(), Turn::take(), Turn::take());
        assert!(replace_in_turn(&path, b"filter\n", added_back).unwrap());
        assert!(
            !replace_in_turn(&path, b"", emptied).unwrap(),
            "a late write is skipped"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"filter\n");
        assert!(remove_in_turn(&path, ended).unwrap());
        assert!(!path.exists());
        assert!(
            !replace_in_turn(&path, b"", added_back).unwrap(),
            "nor brings it back"
        );
        assert!(!path.exists());
        assert!(
            remove_in_turn(&path, Turn::take()).unwrap(),
            "gone already is fine"
        );
    }

    #[test]
    fn writes_of_one_file_from_many_threads_never_overlap_and_the_last_turn_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.x");
        let writers: Vec<_> = (0..4)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let mut highest = Turn::default();
                    for _ in 0..100 {
                        let turn = Turn::take();
                        let text = format!("{turn:?}");
                        replace_in_turn(&path, text.as_bytes(), turn)
                            .unwrap_or_else(|e| panic!("{turn:?}: {e}"));
                        highest = highest.max(turn);
                    }
                    highest
                })
            })
            .collect();
        let last = writers
            .into_iter()
            .map(|w| w.join().unwrap())
            .max()
            .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{last:?}"));
        let files = std::fs::read_dir(dir.path()).unwrap().flatten().count();
        assert_eq!(files, 1, "no `.part` file left beside it");
    }

    #[test]
    fn a_private_file_is_readable_by_its_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("probation.json");
        replace_private(&path, b"password").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_failed_replace_leaves_nothing_beside_the_file() {
        let dir = tempfile::tempdir().unwrap();
        // A non-empty directory where the file goes: the rename fails.
        let path = dir.path().join("cache");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("inside"), "x").unwrap();
        assert!(replace(&path, b"new").is_err());
        assert!(
            !dir.path().join("cache.part").exists(),
            "the copy beside it is removed"
        );
        assert!(path.join("inside").exists());
    }

    /// A sysfs in which the disk of `data` is `disk`.
    fn sysfs(data: &Path, disk: &str) -> tempfile::TempDir {
        use std::os::unix::fs::MetadataExt as _;
        let dev = std::fs::metadata(data).unwrap().dev();
        let number = format!("{}:{}", libc::major(dev), libc::minor(dev));
        let sys = tempfile::tempdir().unwrap();
        let device = sys.path().join("devices/platform/mmc0/block").join(disk);
        std::fs::create_dir_all(&device).unwrap();
        std::fs::create_dir_all(sys.path().join("dev/block")).unwrap();
        std::os::unix::fs::symlink(&device, sys.path().join("dev/block").join(&number)).unwrap();
        sys
    }

    #[test]
    fn a_folder_on_an_mmc_card_is_told_from_one_on_another_disk() {
        let data = tempfile::tempdir().unwrap();
        let sysfs = |disk: &str| sysfs(data.path(), disk);
        let card = sysfs("mmcblk0p2");
        assert_eq!(
            flash_card_in(card.path(), data.path()).as_deref(),
            Some("mmcblk0p2")
        );
        assert_eq!(flash_card_in(sysfs("sda1").path(), data.path()), None);
        // A number sysfs does not know (another device's).
        assert_eq!(flash_card_in(card.path(), Path::new("/proc")), None);
        // A data directory not made yet (a check before the first run): its parent's disk.
        assert_eq!(
            flash_card_in(card.path(), &data.path().join("not/yet")).as_deref(),
            Some("mmcblk0p2")
        );
    }

    #[test]
    fn the_error_count_of_an_ext4_disk_is_read_where_the_kernel_keeps_it() {
        let data = tempfile::tempdir().unwrap();
        let sys = sysfs(data.path(), "mmcblk0p2");
        assert!(
            ext4_error_count_in(sys.path(), data.path()).is_none(),
            "not ext4: no errors_count"
        );
        let ext4 = sys.path().join("fs/ext4/mmcblk0p2");
        std::fs::create_dir_all(&ext4).unwrap();
        std::fs::write(ext4.join("errors_count"), "0\n").unwrap();
        let count = ext4_error_count_in(sys.path(), data.path()).expect("ext4");
        assert_eq!(count.device, "mmcblk0p2");
        assert_eq!(count.read(), Some(0));
        std::fs::write(ext4.join("errors_count"), "2\n").unwrap();
        assert_eq!(count.read(), Some(2), "read again each time");
    }
}
