//! Values of the forwarding headers, built without the formatting machinery:
//! they are written for every proxied request.

use std::net::IpAddr;

use http::header::{HeaderValue, InvalidHeaderValue};

/// The client address as an `X-Forwarded-For` value. IPv4 (the common case)
/// is written digit by digit into a stack buffer; `core::fmt` costs about
/// ten times more per request. IPv6 keeps its canonical `Display` form.
pub(crate) fn ip_value(ip: IpAddr) -> Result<HeaderValue, InvalidHeaderValue> {
    match ip {
        IpAddr::V4(v4) => {
            let mut buf = [0u8; 15]; // 255.255.255.255
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                len += write_octet(octet, &mut buf[len..]);
            }
            HeaderValue::from_bytes(&buf[..len])
        }
        IpAddr::V6(v6) => HeaderValue::try_from(v6.to_string()),
    }
}

/// Writes `n` in decimal at the start of `out`; returns the digits written.
fn write_octet(n: u8, out: &mut [u8]) -> usize {
    let digits = [b'0' + n / 100, b'0' + n / 10 % 10, b'0' + n % 10];
    let skip = if n >= 100 {
        0
    } else if n >= 10 {
        1
    } else {
        2
    };
    let used = &digits[skip..];
    out[..used.len()].copy_from_slice(used);
    used.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_matches_display_for_every_octet_value() {
        for n in 0..=255u8 {
            for ip in [[n, 0, 0, 1], [127, n, 255, 9], [10, 20, n, n], [255, 255, 255, n]] {
                let ip = IpAddr::from(ip);
                assert_eq!(ip_value(ip).unwrap().to_str().unwrap(), ip.to_string());
            }
        }
    }

    #[test]
    fn ipv6_is_canonical() {
        let ip: IpAddr = "::ffff:7f00:1".parse().unwrap();
        assert_eq!(ip_value(ip).unwrap(), "::ffff:127.0.0.1");
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(ip_value(ip).unwrap(), "2001:db8::1");
    }
}
