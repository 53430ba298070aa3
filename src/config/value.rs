//! Value types proxy.toml shares across sections: durations, sizes,
//! addresses and "one or a list".

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

/// A size written like `512m`, `2g`, `64k` or `1048576` (bytes; a trailing
/// `b` is allowed, units are powers of 1024).
pub(super) fn size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (digits, unit) = match s.char_indices().last()? {
        (i, 'k') => (&s[..i], 1u64 << 10),
        (i, 'm') => (&s[..i], 1 << 20),
        (i, 'g') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(unit)
}

/// A `max-request-body` value: a [`size`], or `"off"` for no limit;
/// `default` when the key is absent.
pub(super) fn body_limit(cx: &Ctx<'_>, field: &Option<Spanned<String>>, default: Option<u64>) -> Result<Option<u64>, ConfigError> {
    let Some(field) = field else { return Ok(default) };
    match field.get_ref().trim() {
        "off" => Ok(None),
        v => match size(v) {
            Some(n) if n > 0 => Ok(Some(n)),
            _ => Err(cx.err(field.span(), format!("invalid max-request-body `{v}`: write a size such as `10m`, `512k`, `1g`, or `off`"))),
        },
    }
}
