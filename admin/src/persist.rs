//! Durable state: a checkpoint plus a write-ahead journal.
//!
//! The checkpoint (`state-file`) is the whole [`State`] as versioned JSON,
//! written atomically (temp file, fsync, rename, fsync directory). Every
//! commit in between is one line appended to `<state-file>.journal`: the
//! commands applied, with their time and actor, made durable by one
//! `fdatasync` before the caller is answered. That is one flush per flip
//! instead of two plus a rename of the whole state (audit log and reports
//! included), which is what a switch or rollback waits for.
//!
//! Loading replays the journal over the checkpoint ([`State::apply`] is pure,
//! so the replay rebuilds exactly the acknowledged state). A torn last line
//! (a crash during the append, before the commit was acknowledged) is
//! ignored; anything else that does not fit is a startup error naming the
//! file and line. The journal is folded into a new checkpoint at start-up,
//! by the controller off the flip path once it holds [`CHECKPOINT_AFTER`]
//! entries, and by the commit itself should it ever reach
//! [`MAX_JOURNAL_ENTRIES`].

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::state::{Command, State, UnixMillis, STATE_VERSION};

/// Journal entries after which a checkpoint is due (taken off the flip path).
pub const CHECKPOINT_AFTER: usize = 256;
/// Journal entries after which a commit checkpoints inline.
pub const MAX_JOURNAL_ENTRIES: usize = 4096;

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// Reading or writing failed.
    #[error("state file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file exists but is not a state this build understands.
    #[error(
        "state file {path} is corrupt or unreadable: {reason} (refusing to start rather than lose the live release; fix or move the file)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// One journal line: the commands of one commit, applied in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The state's `seq` after this commit (one more than before it).
    pub seq: u64,
    /// When it was applied.
    pub at: UnixMillis,
    /// Who asked.
    pub actor: String,
    /// What was applied.
    pub commands: Vec<Command>,
}

impl Entry {
    /// Applies the entry's commands to `state`, as the original commit did.
    pub fn apply_to(&self, state: &State) -> Result<State, crate::state::StateError> {
        let mut next = self.commands.iter().try_fold(state.clone(), |s, c| s.apply(c.clone(), self.at, &self.actor))?;
        next.seq = self.seq;
        Ok(next)
    }
}

/// The journal path for a state file: `<state-file>.journal`.
pub fn journal_path(state_file: &Path) -> PathBuf {
    let mut name = state_file.as_os_str().to_owned();
    name.push(".journal");
    PathBuf::from(name)
}

/// Reads the checkpoint only; `Ok(None)` when it does not exist yet.
fn load_checkpoint(path: &Path) -> Result<Option<State>, PersistError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(PersistError::Io { path: path.into(), source }),
    };
    let corrupt = |reason: String| PersistError::Corrupt { path: path.into(), reason };
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == STATE_VERSION as u64 => {}
        Some(v) => return Err(corrupt(format!("version {v} is not supported (this build reads {STATE_VERSION})"))),
        None => return Err(corrupt("no `version` field".into())),
    }
    let state: State = serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))?;
    check_live(&state).map_err(corrupt)?;
    Ok(Some(state))
}

fn check_live(state: &State) -> Result<(), String> {
    match &state.live {
        Some(live) if !state.releases.contains_key(live) => Err(format!("live release `{live}` is not among the registered releases")),
        _ => Ok(()),
    }
}

/// Replays the journal at `path` over `base`. Returns the state and how many
/// entries were applied.
fn replay(path: &Path, base: State) -> Result<(State, usize), PersistError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok((base, 0)),
        Err(source) => return Err(PersistError::Io { path: path.into(), source }),
    };
    let corrupt = |line: usize, reason: String| PersistError::Corrupt { path: path.into(), reason: format!("line {line}: {reason}") };
    let mut state = base;
    let mut applied = 0;
    // entries end where the zeroed space begins
    let used = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let mut lines: Vec<&[u8]> = bytes[..used].split(|&b| b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let n = lines.len();
    for (i, line) in lines.into_iter().enumerate() {
        let entry: Entry = match serde_json::from_slice(line) {
            Ok(e) => e,
            Err(e) if i + 1 == n => {
                // A crash during the append: that commit was never acknowledged.
                log::warn!("{}: ignoring a torn last line ({e})", path.display());
                break;
            }
            Err(e) => return Err(corrupt(i + 1, e.to_string())),
        };
        if entry.seq <= state.seq {
            continue; // already in the checkpoint
        }
        if entry.seq != state.seq + 1 {
            return Err(corrupt(i + 1, format!("entry {} follows state {}: entries are missing", entry.seq, state.seq)));
        }
        state = entry.apply_to(&state).map_err(|e| corrupt(i + 1, format!("does not apply: {e}")))?;
        applied += 1;
    }
    check_live(&state).map_err(|reason| PersistError::Corrupt { path: path.into(), reason })?;
    Ok((state, applied))
}

/// Reads the durable state (checkpoint plus journal) without changing
/// anything; `Ok(None)` when neither exists. What canopy would start from.
pub fn load(state_file: &Path) -> Result<Option<State>, PersistError> {
    let checkpoint = load_checkpoint(state_file)?;
    let journal = journal_path(state_file);
    let had_checkpoint = checkpoint.is_some();
    let (state, applied) = replay(&journal, checkpoint.unwrap_or_else(State::empty))?;
    match (had_checkpoint, applied) {
        (true, _) => Ok(Some(state)),
        (false, 0) => Ok(None), // first start (or one interrupted before its first checkpoint)
        (false, _) => Err(PersistError::Corrupt {
            path: state_file.into(),
            reason: format!("missing, but {} has entries that belong to it", journal.display()),
        }),
    }
}

/// Writes `state` as the checkpoint, atomically and durably. On error the old
/// file is intact.
fn write_checkpoint(path: &Path, state: &State) -> Result<(), PersistError> {
    let io = |source| PersistError::Io { path: path.into(), source };
    let json = serde_json::to_vec_pretty(state).expect("state serialises");
    let dir = parent_dir(path);
    let file_name = path.file_name().ok_or_else(|| io(std::io::Error::other("no file name")))?;
    let tmp = dir.join(format!(".{}.tmp", file_name.to_string_lossy()));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        f.write_all(&json)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io)
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// The open state store: where commits go.
///
/// The journal file is preallocated with zeros ([`JOURNAL_CHUNK`] at a time)
/// and entries are written into that space: flushing an entry then changes
/// no file metadata, so `fdatasync` is one data write and never waits for
/// the file system's own journal thread (which, on saturated CPUs, was the
/// slow part). Readers stop at the first zero byte; JSON never contains one.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    journal_path: PathBuf,
    journal: File,
    /// Bytes of whole entries at the start of the journal.
    len: u64,
    /// Bytes of the journal file (entries, then zeros).
    allocated: u64,
    /// Entries in the journal.
    entries: usize,
    /// A failed write may have left bytes behind: checkpoint at the next commit.
    dirty: bool,
}

/// Where the controller makes its commits durable: the local checkpoint and
/// journal ([`Store`]) on a single node; a fleet's shared store swaps in here,
/// not in the controller. Called under the controller's state lock, so calls
/// never overlap; an error means nothing was recorded.
pub trait StateStore: Send {
    /// Makes `next` durable: `entry`'s commands turned the previous state
    /// into `next`. Returns before the change is acknowledged to anyone.
    fn commit(&mut self, next: &State, entry: &Entry) -> Result<(), PersistError>;
    /// Whether a checkpoint should be taken at the next quiet moment.
    fn wants_checkpoint(&self) -> bool;
    /// Folds everything recorded so far into a checkpoint of `state`.
    fn checkpoint(&mut self, state: &State) -> Result<(), PersistError>;
}

impl StateStore for Store {
    fn commit(&mut self, next: &State, entry: &Entry) -> Result<(), PersistError> {
        Store::commit(self, next, entry)
    }
    fn wants_checkpoint(&self) -> bool {
        Store::wants_checkpoint(self)
    }
    fn checkpoint(&mut self, state: &State) -> Result<(), PersistError> {
        Store::checkpoint(self, state)
    }
}

/// How much zeroed space the journal grows by.
pub const JOURNAL_CHUNK: u64 = 256 * 1024;

impl Store {
    /// Loads the durable state (`None` on a first start), folds the journal
    /// into a fresh checkpoint when there was a state, and makes sure the
    /// journal has zeroed space to write into.
    pub fn open(state_file: &Path) -> Result<(Self, Option<State>), PersistError> {
        let journal_path = journal_path(state_file);
        let state = load(state_file)?;
        let io = |source| PersistError::Io { path: journal_path.clone(), source };
        let journal = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&journal_path).map_err(io)?;
        let file_len = journal.metadata().map_err(io)?.len();
        let mut store = Self {
            path: state_file.into(),
            journal_path: journal_path.clone(),
            journal,
            // whatever is there is covered by the checkpoint below (or, on a
            // first start, there is nothing): zeroed as a whole
            len: file_len,
            allocated: file_len,
            entries: 0,
            dirty: false,
        };
        match &state {
            Some(s) => store.checkpoint(s)?,
            None => store.clear().map_err(io)?,
        }
        if store.allocated < JOURNAL_CHUNK {
            store.grow(JOURNAL_CHUNK).map_err(io)?;
        }
        // make the journal's directory entry durable (it may be new)
        File::open(parent_dir(&journal_path)).and_then(|d| d.sync_all()).map_err(io)?;
        Ok((store, state))
    }

    /// Makes `next` durable: `entry` (whose commands turned the previous
    /// state into `next`) is written to the journal and flushed, or, when the
    /// journal is full, `next` is written as a new checkpoint. On error nothing
    /// was recorded and the caller must keep its old state.
    pub fn commit(&mut self, next: &State, entry: &Entry) -> Result<(), PersistError> {
        if self.dirty || self.entries >= MAX_JOURNAL_ENTRIES {
            return self.checkpoint(next);
        }
        let mut line = serde_json::to_vec(entry).expect("journal entry serialises");
        line.push(b'\n');
        let end = self.len + line.len() as u64;
        let written = (|| {
            if end > self.allocated {
                self.grow(end + JOURNAL_CHUNK)?;
            }
            self.journal.write_all_at(&line, self.len)?;
            self.journal.sync_data()
        })();
        match written {
            Ok(()) => {
                self.len = end;
                self.entries += 1;
                Ok(())
            }
            Err(source) => {
                // Take the partial entry back so it is never replayed.
                let undone = self.zero(self.len, line.len()).and_then(|()| self.journal.sync_data());
                self.dirty = undone.is_err();
                Err(PersistError::Io { path: self.journal_path.clone(), source })
            }
        }
    }

    /// Whether the journal is long enough (or a failed write left it
    /// untidy) that a checkpoint should be taken at the next quiet moment.
    pub fn wants_checkpoint(&self) -> bool {
        self.dirty || self.entries >= CHECKPOINT_AFTER
    }

    /// Writes `state` as the checkpoint, then empties the journal.
    pub fn checkpoint(&mut self, state: &State) -> Result<(), PersistError> {
        write_checkpoint(&self.path, state)?;
        // Entries up to state.seq are now in the checkpoint; were the
        // clearing lost, replay would skip them.
        let cleared = self.clear();
        self.dirty = cleared.is_err();
        cleared.map_err(|source| PersistError::Io { path: self.journal_path.clone(), source })
    }

    /// Zeroes the entries (keeping the space) and flushes.
    fn clear(&mut self) -> std::io::Result<()> {
        self.zero(0, self.len as usize)?;
        self.journal.sync_data()?;
        self.len = 0;
        self.entries = 0;
        Ok(())
    }

    /// Extends the file with zeros to `size` bytes, durably (a metadata
    /// change, so this one waits for the file system's journal).
    fn grow(&mut self, size: u64) -> std::io::Result<()> {
        self.zero(self.allocated, (size - self.allocated) as usize)?;
        self.journal.sync_all()?;
        self.allocated = size;
        Ok(())
    }

    fn zero(&self, at: u64, len: usize) -> std::io::Result<()> {
        const ZEROS: [u8; 8192] = [0; 8192];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(ZEROS.len());
            self.journal.write_all_at(&ZEROS[..n], at + done as u64)?;
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{BackendMap, Event};

    fn register(name: &str) -> Command {
        Command::Register { name: name.parse().unwrap(), backends: BackendMap::new(), node: None }
    }

    fn switch(to: &str) -> Command {
        Command::Switch {
            to: to.parse().unwrap(),
            expect_generation: None,
            forced: true,
            window_ms: 1000,
            detail: String::new(),
            action: None,
        }
    }

    /// Applies `cmds` to `st` and commits them the way the controller does.
    fn commit(store: &mut Store, st: &State, at: u64, cmds: Vec<Command>) -> State {
        let entry = Entry { seq: st.seq + 1, at, actor: "test".into(), commands: cmds };
        let next = entry.apply_to(st).unwrap();
        store.commit(&next, &entry).unwrap();
        next
    }

    /// The journal's entries (the bytes before the zeroed space).
    fn used(p: &Path) -> Vec<u8> {
        let bytes = fs::read(journal_path(p)).unwrap();
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        bytes[..end].to_vec()
    }

    /// A first start, as the controller does it: open, seed, checkpoint.
    /// A scratch directory (kept alive by the caller) and the state file path in it.
    fn scratch() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        (dir, p)
    }

    fn first_start(p: &Path) -> (Store, State) {
        let (mut store, none) = Store::open(p).unwrap();
        assert!(none.is_none());
        let st = State::empty();
        store.checkpoint(&st).unwrap();
        (store, st)
    }

    #[test]
    fn missing_files_are_none_and_commits_survive_a_reopen() {
        let (dir, p) = scratch();
        assert!(load(&p).unwrap().is_none());
        let (mut store, mut st) = first_start(&p);
        let checkpoint = fs::read(&p).unwrap();
        assert_eq!(fs::metadata(journal_path(&p)).unwrap().len(), JOURNAL_CHUNK, "preallocated");
        st = commit(&mut store, &st, 1, vec![register("elm"), register("oak")]);
        st = commit(&mut store, &st, 2, vec![switch("elm")]);
        st = commit(&mut store, &st, 3, vec![switch("oak")]);
        assert_eq!(st.seq, 3);
        // the checkpoint was not rewritten: the journal holds the commits, in place
        assert_eq!(fs::read(&p).unwrap(), checkpoint);
        assert_eq!(fs::metadata(journal_path(&p)).unwrap().len(), JOURNAL_CHUNK);
        assert_eq!(used(&p).iter().filter(|&&b| b == b'\n').count(), 3);
        assert_eq!(load(&p).unwrap(), Some(st.clone()));
        drop(store);
        let (store, loaded) = Store::open(&p).unwrap();
        assert_eq!(loaded, Some(st.clone()));
        // reopening folded the journal into the checkpoint
        assert!(used(&p).is_empty());
        assert_eq!(load_checkpoint(&p).unwrap(), Some(st));
        assert_eq!(store.entries, 0);
        // no temp file left behind
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn the_journal_grows_past_its_first_chunk() {
        let (_dir, p) = scratch();
        let (mut store, st) = first_start(&p);
        let mut st = commit(&mut store, &st, 0, vec![register("elm"), register("oak")]);
        let big = Event {
            at: 0,
            action: "x".into(),
            actor: "y".repeat(100_000),
            from: None,
            to: None,
            result: "ok".into(),
            forced: false,
            generation: 0,
            detail: String::new(),
        };
        for i in 0..4 {
            st = commit(&mut store, &st, i, vec![Command::Audit { event: big.clone() }]);
        }
        assert!(fs::metadata(journal_path(&p)).unwrap().len() > JOURNAL_CHUNK);
        assert_eq!(load(&p).unwrap(), Some(st));
    }

    #[test]
    fn a_journal_without_its_state_file_is_refused() {
        let (_dir, p) = scratch();
        let (mut store, st) = first_start(&p);
        commit(&mut store, &st, 1, vec![register("elm")]);
        fs::remove_file(&p).unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("missing, but") && e.contains("state.json.journal has entries"), "{e}");
        // an interrupted first start (journal created, nothing in it) is a first start
        fs::write(journal_path(&p), [0u8; 64]).unwrap();
        assert_eq!(load(&p).unwrap(), None);
    }

    #[test]
    fn a_torn_last_line_is_ignored_but_a_torn_middle_line_is_an_error() {
        let (_dir, p) = scratch();
        let (mut store, st) = first_start(&p);
        let mut st = commit(&mut store, &st, 1, vec![register("elm"), register("oak")]);
        st = commit(&mut store, &st, 2, vec![switch("elm")]);
        let good = used(&p);
        let mut torn = good.clone();
        torn.extend_from_slice(b"{\"seq\": 3, \"at\": 3, \"act");
        fs::write(journal_path(&p), &torn).unwrap();
        assert_eq!(load(&p).unwrap(), Some(st.clone()));
        let mut middle = torn.clone();
        middle.push(b'\n');
        middle.extend_from_slice(&good[good.iter().position(|&b| b == b'\n').unwrap() + 1..]);
        fs::write(journal_path(&p), &middle).unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("state.json.journal is corrupt") && e.contains("line 3"), "{e}");
    }

    #[test]
    fn entries_already_in_the_checkpoint_are_skipped_and_gaps_refused() {
        let (_dir, p) = scratch();
        let (mut store, st) = first_start(&p);
        let st = commit(&mut store, &st, 1, vec![register("elm"), register("oak")]);
        let journal = used(&p);
        let st = commit(&mut store, &st, 2, vec![switch("elm")]);
        // a crash after the checkpoint but before the journal was emptied
        let old = fs::read(journal_path(&p)).unwrap();
        store.checkpoint(&st).unwrap();
        fs::write(journal_path(&p), &old).unwrap();
        assert_eq!(load(&p).unwrap(), Some(st.clone()));
        // an entry from the future: something was lost
        let mut gap: serde_json::Value = serde_json::from_slice(&journal[..journal.len() - 1]).unwrap();
        gap["seq"] = 9.into();
        fs::write(journal_path(&p), format!("{gap}\n")).unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("entries are missing"), "{e}");
    }

    #[test]
    fn a_full_journal_is_folded_into_a_checkpoint() {
        let (_dir, p) = scratch();
        let (mut store, st) = first_start(&p);
        let mut st = commit(&mut store, &st, 0, vec![register("elm"), register("oak")]);
        for i in 0..MAX_JOURNAL_ENTRIES + 3 {
            st = commit(&mut store, &st, i as u64, vec![switch(if i % 2 == 0 { "elm" } else { "oak" })]);
            assert_eq!(store.wants_checkpoint(), store.entries >= CHECKPOINT_AFTER);
        }
        assert!(store.entries < 4, "{}", store.entries);
        assert_eq!(load(&p).unwrap(), Some(st));
    }

    #[test]
    fn corrupt_checkpoint_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        fs::write(&p, b"{\"version\": 1, \"generation\": ").unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains(&p.display().to_string()), "{e}");
        assert!(e.contains("corrupt"), "{e}");
        fs::write(&p, b"{\"version\": 7}").unwrap();
        assert!(load(&p).unwrap_err().to_string().contains("version 7 is not supported"));
    }
}
