//! Value types proxy.toml shares across sections: durations, addresses and
//! "one or a list".

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::error::{ConfigError, Ctx};

/// A duration written like `10m`, `2s` or `500ms`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(Dur)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration `{s}`: {e} (write e.g. `500ms`, `10s`, `10m`)")))
    }
}

/// An optional duration, or `default` when the key is absent.
pub(super) fn or(d: Option<Dur>, default: Duration) -> Duration {
    d.map_or(default, |d| d.0)
}

/// A socket address such as `0.0.0.0:8080`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Addr(pub SocketAddr);

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(Addr).map_err(|_| serde::de::Error::custom(bad_address(&s)))
    }
}

fn bad_address(s: &str) -> String {
    format!("invalid listen address `{s}`: expected ip:port such as `0.0.0.0:8080` or `[::]:8080`")
}

/// A value written alone or as a list (`listen = "a"` or `listen = ["a", "b"]`).
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    /// The values, one or many.
    pub fn as_slice(&self) -> &[T] {
        match self {
            OneOrMany::One(v) => std::slice::from_ref(v),
            OneOrMany::Many(v) => v,
        }
    }
}

/// The listen addresses of one key (none when the key is absent).
pub(super) fn addresses(cx: &Ctx<'_>, field: &Option<Spanned<OneOrMany<String>>>) -> Result<Vec<SocketAddr>, ConfigError> {
    let Some(field) = field else { return Ok(Vec::new()) };
    field.get_ref().as_slice().iter().map(|a| a.parse::<SocketAddr>().map_err(|_| cx.err(field.span(), bad_address(a)))).collect()
}
