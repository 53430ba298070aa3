//! The cache directory: account credentials and certificates, written atomically.

use std::fs::{self, DirBuilder, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use instant_acme::AccountCredentials;

use crate::AcmeError;

/// The cache directory's layout.
#[derive(Clone, Debug)]
pub(crate) struct Cache {
    dir: PathBuf,
}

/// A certificate and its key as read from the cache.
pub(crate) struct Cached {
    pub(crate) chain_pem: String,
    pub(crate) key_pem: String,
    /// When the certificate file was written.
    pub(crate) written: SystemTime,
}

impl Cache {
    /// Creates the directory (mode 0700) if it is missing.
    pub(crate) fn open(dir: &Path) -> Result<Self, AcmeError> {
        let failed = |source| AcmeError::CacheDir { path: dir.to_path_buf(), source };
        DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(failed)?;
        fs::read_dir(dir).map_err(failed)?;
        Ok(Self { dir: dir.to_path_buf() })
    }

    pub(crate) fn account_path(&self) -> PathBuf {
        self.dir.join("account.json")
    }

    pub(crate) fn cert_path(&self, primary: &str) -> PathBuf {
        self.dir.join(format!("{primary}.crt"))
    }

    pub(crate) fn key_path(&self, primary: &str) -> PathBuf {
        self.dir.join(format!("{primary}.key"))
    }

    /// The saved account, if any, with the directory URL it was registered at.
    pub(crate) fn load_account(&self) -> Result<Option<(AccountCredentials, Option<String>)>, AcmeError> {
        let path = self.account_path();
        let bad = |reason: String| AcmeError::AccountFile { path: path.clone(), reason };
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(bad(e.to_string())),
        };
        // AccountCredentials is opaque; read the directory it records beside it.
        #[derive(serde::Deserialize)]
        struct Directory {
            directory: Option<String>,
        }
        let directory: Directory = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        let credentials = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        Ok(Some((credentials, directory.directory)))
    }

    pub(crate) fn save_account(&self, credentials: &AccountCredentials) -> Result<(), AcmeError> {
        let path = self.account_path();
        let json = serde_json::to_vec_pretty(credentials).expect("account credentials serialise");
        write_atomic(&path, &json, 0o600).map_err(|source| AcmeError::CacheWrite { path, source })
    }

    /// The cached certificate and key of `primary`, or `None` if either file is missing.
    pub(crate) fn load_cert(&self, primary: &str) -> Result<Option<Cached>, AcmeError> {
        let read = |path: PathBuf| match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(AcmeError::Certificate {
                primary: primary.to_string(),
                reason: format!("cannot read the cached {}: {e}", path.display()),
            }),
        };
        let (Some(chain_pem), Some(key_pem)) = (read(self.cert_path(primary))?, read(self.key_path(primary))?) else {
            return Ok(None);
        };
        let written = fs::metadata(self.cert_path(primary)).and_then(|m| m.modified()).unwrap_or_else(|_| SystemTime::now());
        Ok(Some(Cached { chain_pem, key_pem, written }))
    }

    /// Writes key (0600) then chain (0644), each atomically. A crash between
    /// the two leaves a key that does not match the chain, which loading
    /// detects (and a new certificate is ordered).
    pub(crate) fn save_cert(&self, primary: &str, chain_pem: &str, key_pem: &str) -> Result<(), AcmeError> {
        let key_path = self.key_path(primary);
        write_atomic(&key_path, key_pem.as_bytes(), 0o600).map_err(|source| AcmeError::CacheWrite { path: key_path, source })?;
        let cert_path = self.cert_path(primary);
        write_atomic(&cert_path, chain_pem.as_bytes(), 0o644).map_err(|source| AcmeError::CacheWrite { path: cert_path, source })
    }
}

/// Writes a temporary file in the same directory with `mode`, syncs it,
/// renames it over `path` and syncs the directory: readers see the old file
/// or the new one, never a part.
fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").permissions(Permissions::from_mode(mode)).tempfile_in(dir)?;
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_a_private_directory_and_private_keys() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("acme/cache");
        let cache = Cache::open(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        assert!(cache.load_cert("shop.example").unwrap().is_none());

        cache.save_cert("shop.example", "CHAIN", "KEY").unwrap();
        cache.save_cert("shop.example", "CHAIN2", "KEY2").unwrap();
        let cached = cache.load_cert("shop.example").unwrap().unwrap();
        assert_eq!((cached.chain_pem.as_str(), cached.key_pem.as_str()), ("CHAIN2", "KEY2"));
        let mode = |p: PathBuf| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(cache.key_path("shop.example")), 0o600);
        assert_eq!(mode(cache.cert_path("shop.example")), 0o644);
        let mut files: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        files.sort();
        assert_eq!(files, ["shop.example.crt", "shop.example.key"], "no temporary file is left behind");
    }

    #[test]
    fn a_corrupt_account_file_names_itself() {
        let root = tempfile::tempdir().unwrap();
        let cache = Cache::open(root.path()).unwrap();
        fs::write(cache.account_path(), "{").unwrap();
        let err = cache.load_account().err().unwrap().to_string();
        assert!(err.starts_with(&format!("ACME: account file {}: EOF", cache.account_path().display())), "{err}");
        assert!(err.ends_with("remove it to register a new account"), "{err}");
    }
}
