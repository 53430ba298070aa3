//! The pages canopy answers browsers with when it answers a request itself
//! (no route, body too large, upstream down or slow, no live release):
//! built in, or an operator's own from `[proxy] error-pages`. API clients
//! (no `text/html` in `Accept`) get JSON instead. No page names a backend.

use bytes::Bytes;
use http::HeaderMap;

/// The statuses that have a page, in [`ErrorPages`] order.
pub const PAGE_STATUSES: [u16; 5] = [404, 413, 502, 503, 504];

/// One HTML page per status of [`PAGE_STATUSES`]; cloning shares them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorPages {
    pages: [Bytes; PAGE_STATUSES.len()],
}

impl Default for ErrorPages {
    fn default() -> Self {
        Self { pages: PAGE_STATUSES.map(|status| Bytes::from(builtin(status, ""))) }
    }
}

impl ErrorPages {
    /// The built-in pages with `custom` (status, HTML) in place of theirs.
    pub fn with(custom: impl IntoIterator<Item = (u16, Vec<u8>)>) -> Self {
        let mut pages = Self::default();
        for (status, html) in custom {
            if let Some(i) = PAGE_STATUSES.iter().position(|s| *s == status) {
                pages.pages[i] = Bytes::from(html);
            }
        }
        pages
    }

    /// The page for `status` (a shared handle, no copy), if it has one.
    pub fn page(&self, status: u16) -> Option<&Bytes> {
        PAGE_STATUSES.iter().position(|s| *s == status).map(|i| &self.pages[i])
    }
}

/// Maintenance mode as the data plane answers it: 503 with `Retry-After`,
/// the operator's message on a page for browsers and in JSON for API
/// clients, both made once when it is turned on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maintenance {
    /// The HTML page (the built-in 503 page with the message).
    pub page: Bytes,
    /// The JSON body.
    pub json: Bytes,
    /// The announced end, Unix milliseconds: `Retry-After` counts down to it.
    pub until_ms: Option<u64>,
}

/// `Retry-After` while maintenance has no announced end (or it is past).
pub const MAINTENANCE_RETRY_AFTER: u64 = 120;

impl Maintenance {
    /// The answers for `message`, expected to end at `until_ms` (written
    /// as `until` on the page and in the JSON, e.g. `2026-12-06 10:00 UTC`).
    pub fn new(message: &str, until_ms: Option<u64>, until: Option<&str>) -> Self {
        let mut text = message.to_string();
        if let Some(u) = until {
            text = if text.is_empty() { format!("Expected back by {u}.") } else { format!("{text} (expected back by {u})") };
        }
        let json = serde_json::json!({"error": "maintenance", "message": message, "until": until});
        Self { page: Bytes::from(builtin(503, &text)), json: Bytes::from(json.to_string()), until_ms }
    }

    /// Seconds for `Retry-After` at `now_ms`.
    pub fn retry_after(&self, now_ms: u64) -> u64 {
        match self.until_ms {
            Some(until) if until > now_ms => (until - now_ms).div_ceil(1000),
            _ => MAINTENANCE_RETRY_AFTER,
        }
    }
}

/// Whether the client asked for HTML: any `Accept` value naming
/// `text/html` (every browser's navigation does; API clients do not).
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers.get_all(http::header::ACCEPT).iter().any(|v| v.as_bytes().windows(9).any(|w| w.eq_ignore_ascii_case(b"text/html")))
}

/// The title and the sentence a built-in page says for `status`.
fn wording(status: u16) -> (&'static str, &'static str) {
    match status {
        404 => ("Page not found", "There is nothing at this address."),
        413 => ("Upload too large", "What you sent is larger than this site accepts."),
        502 => ("Temporarily unavailable", "The site could not answer just now. Please try again in a moment."),
        503 => ("Temporarily unavailable", "The site is not available just now. Please try again shortly."),
        504 => ("Taking too long", "The site took too long to answer. Please try again in a moment."),
        _ => ("Something went wrong", "The request could not be answered."),
    }
}

/// A built-in page: plain, self-contained (no script, no outside resource),
/// `message` (HTML-escaped) under the standard sentence when not empty.
pub fn builtin(status: u16, message: &str) -> String {
    let (title, sentence) = wording(status);
    let extra = if message.is_empty() { String::new() } else { format!("<p class=\"message\">{}</p>", escape(message)) };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title}</title><style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:15vh auto;padding:0 1.5rem;color:#222;background:#fafafa}}\
h1{{font-size:1.6rem;margin-bottom:.5rem}}p{{line-height:1.5}}.code{{color:#888;font-size:.9rem}}</style></head>\
<body><h1>{title}</h1><p>{sentence}</p>{extra}<p class=\"code\">Error {status}</p></body></html>\n"
    )
}

/// `s` safe inside HTML text.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_want_html_api_clients_do_not() {
        let mut h = HeaderMap::new();
        assert!(!wants_html(&h));
        h.insert("accept", "application/json".parse().unwrap());
        assert!(!wants_html(&h));
        h.insert("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8".parse().unwrap());
        assert!(wants_html(&h));
        h.insert("accept", "Text/HTML".parse().unwrap());
        assert!(wants_html(&h));
    }

    #[test]
    fn overrides_replace_only_their_status_and_messages_are_escaped() {
        let pages = ErrorPages::with([(502, b"<p>ours</p>".to_vec()), (418, b"teapot".to_vec())]);
        assert_eq!(pages.page(502).unwrap().as_ref(), b"<p>ours</p>");
        assert!(std::str::from_utf8(pages.page(504).unwrap()).unwrap().contains("Taking too long"));
        assert!(pages.page(418).is_none());
        let page = builtin(503, "Back at <b>10:00</b> & later");
        assert!(page.contains("Back at &lt;b&gt;10:00&lt;/b&gt; &amp; later"), "{page}");
    }
}
