//! Snapshots: one shard's engine state together with the next offset of its
//! partition, written atomically and read back whole or not at all.
//!
//! File layout (little-endian):
//!
//! ```text
//! magic "CFSNAP\r\n" | format version u32 | config fingerprint u64
//! | next offset i64 | payload length u64 | CRC-32 of payload u32 | payload
//! ```
//!
//! The payload is the engine state: a small postcard head, then per-user
//! columns as they lie in memory (see `engine::state`). A snapshot is
//! streamed to a temporary file (length and checksum filled into the header
//! last), synced, renamed over the old one, and the directory synced: a
//! crash at any moment leaves either the old snapshot or the new one, never
//! a mix. Reading checks the magic, the version and the fingerprint of the
//! configuration it was taken under before decoding anything, checks the
//! columns' sizes against the payload's before allocating them, and checks
//! the checksum over everything read before handing out the engine, so a
//! corrupt or incompatible file is refused with a reason, never
//! half-loaded. A build reads only its own format ([`FORMAT_VERSION`]): a
//! snapshot of another is refused like any other unreadable snapshot.

use std::fs::{self, File};
use std::hash::{BuildHasher, Hash};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::engine::Engine;
use crate::engine::def::EngineConfig;

const MAGIC: &[u8; 8] = b"CFSNAP\r\n";
/// Bumped whenever the payload's layout changes (10: a head section per
/// metric family; 11: calendar weeks and months, lifecycle and known
/// users in the activity head).
pub const FORMAT_VERSION: u32 = 13;
// Where the header's fields start (see the layout above).
const VERSION_AT: usize = 8;
const FINGERPRINT_AT: usize = 12;
const OFFSET_AT: usize = 20;
const LEN_AT: usize = 28;
const CRC_AT: usize = 36;
const HEADER_LEN: usize = CRC_AT + 4;

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file system failed.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Not a snapshot, or damaged.
    #[error("{path}: corrupt snapshot: {reason}")]
    Corrupt {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Another process holds the partition's lock.
    #[error(
        "{path} is locked by another cohortflow process of the same consumer group, \
         which still holds the partition"
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// Written by another format version or under another configuration.
    #[error("{path}: incompatible snapshot: {reason}")]
    Incompatible {
        /// The file concerned.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
}

impl CheckpointError {
    /// A fixed label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            CheckpointError::Io { .. } => "io",
            CheckpointError::Corrupt { .. } => "corrupt",
            CheckpointError::Incompatible { .. } => "incompatible",
            CheckpointError::Locked { .. } => "locked",
        }
    }
}

/// A restored shard.
#[derive(Debug)]
pub struct Restored {
    /// The engine as it was.
    pub engine: Engine,
    /// The offset to resume from.
    pub next_offset: i64,
}

/// A fingerprint of everything that gives the state its meaning: the
/// consumer group whose partitions it holds, the definitions, the time
/// zone and time rules. A snapshot taken under another one is refused
/// rather than misread.
pub fn fingerprint(cfg: &EngineConfig, group: &str) -> u64 {
    let mut text = format!(
        "group={group:?};tz={};week={:?};sticky={:?};late={};hist={};",
        cfg.timezone_name, cfg.week_start, cfg.stickiness_windows, cfg.allowed_lateness_ms, cfg.history_days
    );
    for r in &cfg.retention {
        text.push_str(&format!(
            "r:{}|{}|{}|{}|{:?}|{}|{};",
            r.name,
            r.cohort_event.as_str(),
            r.return_event.as_str(),
            r.granularity.as_str(),
            r.periods,
            r.mode.as_str(),
            r.revenue
        ));
    }
    for f in &cfg.funnels {
        text.push_str(&format!("f:{}|{}|{};", f.name, f.window_ms, f.mode.as_str()));
        for s in &f.steps {
            text.push_str(&format!("s:{}|{:?};", s.event.as_str(), s.filter));
        }
    }
    for t in &cfg.trends {
        text.push_str(&format!("t:{}|{}|{:?};", t.name, t.step.event.as_str(), t.step.filter));
    }
    if let Some(r) = &cfg.revenue {
        text.push_str(&format!("rev:{:?}|{}|{};", r.events, r.amount_prop, r.scale));
    }
    let state = foldhash::fast::FixedState::with_seed(0x5eed);
    let mut h = state.build_hasher();
    text.hash(&mut h);
    std::hash::Hasher::finish(&h)
}

/// The snapshot file of one partition under `dir` (a group's directory).
pub fn path_for(dir: &Path, topic: &str, partition: i32) -> PathBuf {
    // Topic names are [a-zA-Z0-9._-]: safe as file names.
    dir.join(format!("{topic}-{partition}.snapshot"))
}

/// The directory of consumer group `group`'s snapshots under `state_dir`:
/// deployments of other groups that share a `state_dir` never see each
/// other's files. `group-` and the group id, or, for an id that is no
/// safe file name, its safe characters and a hash of the whole.
pub fn group_dir(state_dir: &Path, group: &str) -> PathBuf {
    let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if !group.is_empty() && group.len() <= 100 && group.chars().all(safe) {
        return state_dir.join(format!("group-{group}"));
    }
    let kept: String = group.chars().filter(|&c| safe(c)).take(64).collect();
    let mut h = foldhash::fast::FixedState::with_seed(0x5eed).build_hasher();
    group.hash(&mut h);
    state_dir.join(format!("group-{kept}-{:016x}", std::hash::Hasher::finish(&h)))
}

/// The lock file of one partition's snapshot, beside it.
pub fn lock_path_for(dir: &Path, topic: &str, partition: i32) -> PathBuf {
    dir.join(format!("{topic}-{partition}.lock"))
}

/// The advisory lock on one partition's snapshot, held from the moment
/// the partition is assigned until its last snapshot is written on
/// revoke (the operating system lets it go when the process ends, however
/// it ends). Members of one group share a `state_dir`, so that one takes
/// over a dead member's partitions from its snapshots; the lock keeps a
/// second process that believes it owns the same partition (a member the
/// group has already replaced, say) from overwriting the owner's file.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

/// Creates the lock file at `path` (and its directory) if needed and
/// takes its lock, or says that another process holds it.
pub fn lock(path: &Path) -> Result<FileLock, CheckpointError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).map_err(io_err(path))?;
    match file.try_lock() {
        Ok(()) => Ok(FileLock { _file: file }),
        Err(fs::TryLockError::WouldBlock) => Err(CheckpointError::Locked { path: path.to_path_buf() }),
        Err(fs::TryLockError::Error(source)) => Err(CheckpointError::Io { path: path.to_path_buf(), source }),
    }
}

/// Whether snapshots can be written under `dir`: it is a directory, or
/// can be made one, and a file can be created in it. Nothing is left
/// behind but the directories made.
pub fn check_writable(dir: &Path) -> Result<(), String> {
    if dir.exists() && !dir.is_dir() {
        return Err(format!("{} exists and is not a directory", dir.display()));
    }
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let probe = dir.join(format!(".write-check-{}", std::process::id()));
    fs::write(&probe, b"").map_err(|e| format!("cannot write in {}: {e}", dir.display()))?;
    let _ = fs::remove_file(&probe);
    Ok(())
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.to_owned(), source }
}

/// Writes `engine` and `next_offset` to `path` atomically and durably,
/// streaming the state into the file (the checksum and length are filled
/// into the header last). Returns the bytes written.
pub fn write(path: &Path, group: &str, engine: &Engine, next_offset: i64) -> Result<u64, CheckpointError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tmp = path.with_extension("snapshot.tmp");
    let written = write_file(&tmp, group, engine, next_offset).map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    // The rename is durable only once the directory is.
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
    Ok(written)
}

fn write_file(tmp: &Path, group: &str, engine: &Engine, next_offset: i64) -> io::Result<u64> {
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&fingerprint(engine.config(), group).to_le_bytes());
    header.extend_from_slice(&next_offset.to_le_bytes());
    // Payload length and checksum: known once the payload is written.
    header.extend_from_slice(&[0; 12]);
    debug_assert_eq!(header.len(), HEADER_LEN);
    let mut out = CrcWriter {
        inner: io::BufWriter::with_capacity(1 << 20, File::create(tmp)?),
        hasher: crc32fast::Hasher::new(),
        len: 0,
    };
    out.inner.write_all(&header)?;
    engine.write_state(&mut out)?;
    let (len, crc) = (out.len, out.hasher.finalize());
    let mut f = out.inner.into_inner().map_err(io::IntoInnerError::into_error)?;
    f.seek(io::SeekFrom::Start(LEN_AT as u64))?;
    f.write_all(&len.to_le_bytes())?;
    f.write_all(&crc.to_le_bytes())?;
    f.sync_all()?;
    Ok(HEADER_LEN as u64 + len)
}

/// Computes the CRC-32 and length of what passes through.
struct CrcWriter<W> {
    inner: W,
    hasher: crc32fast::Hasher,
    len: u64,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads the snapshot at `path`: `Ok(None)` when there is none. The
/// payload is read once, straight into the engine's columns, and its
/// checksum computed on the way.
pub fn read(path: &Path, group: &str, cfg: &Arc<EngineConfig>) -> Result<Option<Restored>, CheckpointError> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    let file_len = f.metadata().map_err(io_err(path))?.len();
    let mut f = io::BufReader::with_capacity(1 << 20, f);
    let corrupt = |reason: &str| CheckpointError::Corrupt { path: path.to_owned(), reason: reason.to_owned() };
    let mut header = [0u8; HEADER_LEN];
    if f.read_exact(&mut header).is_err() || &header[..8] != MAGIC {
        return Err(corrupt("not a cohortflow snapshot (bad magic or truncated header)"));
    }
    let u32_at = |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let version = u32_at(VERSION_AT);
    if version != FORMAT_VERSION {
        return Err(CheckpointError::Incompatible {
            path: path.to_owned(),
            reason: format!("format version {version}, this build reads {FORMAT_VERSION}"),
        });
    }
    if u64_at(FINGERPRINT_AT) != fingerprint(cfg, group) {
        return Err(CheckpointError::Incompatible {
            path: path.to_owned(),
            reason: "taken for another consumer group or under another configuration \
                     (definitions, time zone, lateness or history)"
                .into(),
        });
    }
    let next_offset = u64_at(OFFSET_AT) as i64;
    let len = u64_at(LEN_AT);
    let crc = u32_at(CRC_AT);
    let payload_len = file_len.saturating_sub(HEADER_LEN as u64);
    if payload_len != len {
        return Err(corrupt(&format!("payload is {payload_len} bytes, header says {len}")));
    }
    let mut reader = CrcReader { inner: f, hasher: crc32fast::Hasher::new() };
    let decoded = Engine::read_state(cfg.clone(), &mut reader, len);
    // A damaged file is told as such, not by the decoding error it caused.
    if decoded.is_err() {
        io::copy(&mut reader, &mut io::sink()).map_err(io_err(path))?;
    }
    if reader.hasher.finalize() != crc {
        return Err(corrupt("checksum mismatch"));
    }
    let engine = decoded.map_err(|e| corrupt(&e.to_string()))?;
    Ok(Some(Restored { engine, next_offset }))
}

/// Computes the CRC-32 of what passes through.
struct CrcReader<R> {
    inner: R,
    hasher: crc32fast::Hasher,
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::engine::figures::Figures;
    use crate::source::demo::{DEMO_CONFIG, Generator};

    /// The benchmarks' definitions: two retention definitions share a
    /// cohort column, and both funnels one store.
    const BENCH_CONFIG: &str = include_str!("../config/bench.toml");

    fn engine() -> Engine {
        engine_of(DEMO_CONFIG)
    }

    fn engine_of(config: &str) -> Engine {
        let cfg = Arc::new(Config::from_toml_str(config).expect("config").engine);
        let mut e = Engine::new(cfg);
        let mut g = Generator::new(1, 1_790_000_000_000, 300.0);
        let mut lines = Vec::new();
        g.advance_to(1_790_000_000_000 + 5 * 86_400_000, &mut lines);
        for l in &lines {
            let _ = e.apply(l, None, 1_800_000_000_000);
        }
        e
    }

    #[test]
    fn round_trip_gives_the_same_figures_and_behaviour() {
        for config in [DEMO_CONFIG, BENCH_CONFIG] {
            let dir = tempfile::tempdir().expect("tmp");
            let path = path_for(dir.path(), "events", 3);
            let mut a = engine_of(config);
            write(&path, "g", &a, 1234).expect("write");
            let restored = read(&path, "g", a.config()).expect("read").expect("present");
            assert_eq!(restored.next_offset, 1234);
            let mut b = restored.engine;
            // Capacities differ after a restore; everything else may not.
            let figures = |e: &Engine| Figures { state_bytes: 0, funnel_store_fill: 0.0, ..e.figures() };
            assert_eq!(figures(&a), figures(&b));
            assert!(figures(&a).retention.iter().all(|t| !t.cohorts.is_empty()));
            // And it goes on identically, a new user's sign-up and an old
            // one's late sign-up (cohorts move) and checkout included.
            for line in [
                &br#"{"user_id":"u1","event":"view","ts":1790500000000}"#[..],
                br#"{"user_id":"new","event":"signup","ts":1790400000000}"#,
                br#"{"user_id":"new","event":"pay","ts":1790410000000}"#,
                br#"{"user_id":"u2","event":"signup","ts":1790000000001}"#,
                br#"{"user_id":"u2","event":"add_to_cart","ts":1790400000000}"#,
                br#"{"user_id":"u2","event":"order","ts":1790400000001}"#,
            ] {
                let _ = a.apply(line, None, 1_800_000_000_000);
                let _ = b.apply(line, None, 1_800_000_000_000);
                assert_eq!(figures(&a), figures(&b));
            }
        }
    }

    #[test]
    fn damage_is_refused_with_a_reason() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = path_for(dir.path(), "events", 0);
        let a = engine();
        assert!(read(&path, "g", a.config()).expect("no file is fine").is_none());
        write(&path, "g", &a, 1).expect("write");
        let good = fs::read(&path).expect("read");

        let mut flipped = good.clone();
        let last = flipped.len() - 10;
        flipped[last] ^= 0x40;
        fs::write(&path, &flipped).expect("write");
        let e = read(&path, "g", a.config()).expect_err("refused");
        assert_eq!(e.kind(), "corrupt");
        assert!(e.to_string().contains("checksum"), "{e}");

        fs::write(&path, &good[..good.len() / 2]).expect("write");
        assert_eq!(read(&path, "g", a.config()).expect_err("refused").kind(), "corrupt");
        fs::write(&path, b"hello").expect("write");
        assert_eq!(read(&path, "g", a.config()).expect_err("refused").kind(), "corrupt");

        fs::write(&path, &good).expect("write");
        let other = Arc::new(Config::from_toml_str("timezone = \"Asia/Shanghai\"").expect("config").engine);
        let e = read(&path, "g", &other).expect_err("refused");
        assert_eq!(e.kind(), "incompatible");
        let e = read(&path, "another group", a.config()).expect_err("refused");
        assert_eq!(e.kind(), "incompatible");
        assert!(e.to_string().contains("consumer group"), "{e}");
    }

    #[test]
    fn groups_have_directories_of_their_own() {
        let root = Path::new("/state");
        assert_eq!(group_dir(root, "cohortflow"), Path::new("/state/group-cohortflow"));
        let odd = group_dir(root, "a/../b c");
        let name = odd.file_name().and_then(|n| n.to_str()).expect("name");
        assert!(odd.parent() == Some(root) && name.starts_with("group-a..bc-"), "{}", odd.display());
        assert_ne!(group_dir(root, "a/b"), group_dir(root, "a b"));
        assert_ne!(group_dir(root, ""), root);
    }

    #[test]
    fn a_locked_partition_is_refused_until_its_lock_is_gone() {
        let dir = tempfile::tempdir().expect("tmp");
        let group = group_dir(dir.path(), "g");
        let path = lock_path_for(&group, "events", 3);
        let held = lock(&path).expect("first lock");
        let e = lock(&path).expect_err("second lock");
        assert_eq!(e.kind(), "locked");
        assert!(e.to_string().contains("events-3.lock"), "{e}");
        // Another partition of the same group is free.
        lock(&lock_path_for(&group, "events", 4)).expect("another partition");
        drop(held);
        lock(&path).expect("free again");
    }

    #[test]
    fn a_state_dir_that_cannot_be_written_is_said_so() {
        let dir = tempfile::tempdir().expect("tmp");
        check_writable(&dir.path().join("a/b")).expect("made");
        let file = dir.path().join("file");
        fs::write(&file, b"").expect("write");
        assert!(check_writable(&file).expect_err("a file").contains("not a directory"));
        assert!(check_writable(&file.join("below")).is_err());
    }
}
