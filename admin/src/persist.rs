//! Durable state: versioned JSON written atomically (temp file, fsync,
//! rename, fsync directory), so a crash leaves either the old or the new
//! state, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use crate::state::{State, STATE_VERSION};

/// Why the state file could not be read or written.
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
    #[error("state file {path} is corrupt or unreadable: {reason} (refusing to start rather than lose the live release; fix or move the file)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Reads the state file; `Ok(None)` when it does not exist yet.
pub fn load(path: &Path) -> Result<Option<State>, PersistError> {
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
    if let Some(live) = &state.live {
        if !state.releases.contains_key(live) {
            return Err(corrupt(format!("live release `{live}` is not among the registered releases")));
        }
    }
    Ok(Some(state))
}

/// Writes `state` atomically and durably. On error the old file is intact.
pub fn store(path: &Path, state: &State) -> Result<(), PersistError> {
    let io = |source| PersistError::Io { path: path.into(), source };
    let json = serde_json::to_vec_pretty(state).expect("state serialises");
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_none_and_round_trip_works() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        assert!(load(&p).unwrap().is_none());
        let s = State::empty();
        store(&p, &s).unwrap();
        assert_eq!(load(&p).unwrap(), Some(s));
        // no temp file left behind
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn corrupt_file_names_itself() {
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
