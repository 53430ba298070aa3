//! Validated identities: release and service names, checked once at the edge.

use std::fmt;
use std::sync::Arc;

/// The longest name accepted: one DNS label, so `{service}--{release}` stays resolvable.
pub const MAX_NAME_LEN: usize = 63;

/// Why a string is not a valid release or service name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name was empty.
    #[error("{kind} name is empty")]
    Empty {
        /// `release` or `service`.
        kind: &'static str,
    },
    /// The name was longer than [`MAX_NAME_LEN`].
    #[error("{kind} name is {len} characters long; at most {MAX_NAME_LEN} are allowed")]
    TooLong {
        /// `release` or `service`.
        kind: &'static str,
        /// Length of the refused name in bytes.
        len: usize,
    },
    /// The name used characters outside the allowed set.
    #[error("invalid {kind} name `{name}`: use lowercase letters, digits and single dashes, starting with a letter and not ending with a dash (e.g. `silver-birch`)")]
    Invalid {
        /// `release` or `service`.
        kind: &'static str,
        /// The refused name (already bounded by the length check).
        name: String,
    },
}

/// Checks the shared rule for names: `[a-z][a-z0-9]*(-[a-z0-9]+)*`, at most 63 bytes.
fn validate(kind: &'static str, s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if s.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { kind, len: s.len() });
    }
    let b = s.as_bytes();
    let ok = b[0].is_ascii_lowercase()
        && b[b.len() - 1] != b'-'
        && !s.contains("--")
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
    if ok {
        Ok(())
    } else {
        Err(NameError::Invalid { kind, name: s.to_string() })
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(Arc<str>);

        impl $ty {
            /// Validates `s` and wraps it; the only way to build one.
            pub fn parse(s: &str) -> Result<Self, NameError> {
                validate($kind, s)?;
                Ok(Self(Arc::from(s)))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", &*self.0)
            }
        }

        impl std::str::FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::parse(s)
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// A release name such as `juniper` or `silver-birch` (also the image tag).
    ReleaseName,
    "release"
);
name_type!(
    /// A service name such as `server`, `worker` or `storefront`.
    ServiceName,
    "service"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_tree_names() {
        for n in ["juniper", "elm", "silver-birch", "oak2", "a"] {
            assert_eq!(ReleaseName::parse(n).unwrap().as_str(), n);
        }
    }

    #[test]
    fn refuses_bad_names_with_reason() {
        assert_eq!(ReleaseName::parse(""), Err(NameError::Empty { kind: "release" }));
        for n in ["Elm", "1oak", "-elm", "elm-", "a--b", "../etc", "elm/x", "el m", "é"] {
            let err = ReleaseName::parse(n).unwrap_err();
            assert!(matches!(err, NameError::Invalid { .. }), "{n}: {err}");
        }
        let long = "a".repeat(1024);
        assert_eq!(ServiceName::parse(&long).unwrap_err().to_string(), "service name is 1024 characters long; at most 63 are allowed");
    }
}
