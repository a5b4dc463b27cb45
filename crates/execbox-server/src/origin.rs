//! Which browser origins may open a WebSocket.
//!
//! Browsers enforce the same-origin policy on HTTP reads but not on WebSockets: any page may
//! open `ws://execbox/v1/ws`, and the browser sends the page's `Origin` with the upgrade. Run
//! endpoints need an `Authorization` header, which a browser never attaches by itself, so only
//! the WebSocket needs this check. Non-browser clients send no `Origin` and are not affected.
//!
//! Rules, in order: no `Origin` header → allowed; an allow-list entry `*` → any origin; a
//! non-empty allow-list → the origin must equal an entry (`scheme://host[:port]`, compared
//! case-insensitively, default ports as the browser writes them: omitted); an empty
//! allow-list (the default) → only the server's own origin, meaning the `Origin`'s
//! `host[:port]` equals the request's `Host` header. `Origin: null` (sandboxed frames, `file:`
//! pages) is allowed only by `*`.

/// A malformed allow-list entry.
#[derive(Debug, thiserror::Error)]
#[error("allowed origin {entry:?} is not `*` or scheme://host[:port] (no path, no trailing text)")]
pub struct OriginError {
    /// The entry.
    pub entry: String,
}

/// Normalise and check the operator's allow-list (`--allowed-origins`).
pub fn parse_allow_list<S: AsRef<str>>(entries: &[S]) -> Result<Vec<String>, OriginError> {
    let mut out = Vec::new();
    for e in entries {
        let e = e.as_ref().trim();
        if e.is_empty() {
            continue;
        }
        if e == "*" {
            out.push("*".to_owned());
            continue;
        }
        let norm = normalize(e);
        let valid = norm.split_once("://").is_some_and(|(scheme, authority)| {
            !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                && !authority.is_empty()
                && !authority.contains(['/', '?', '#', '@', ' '])
        });
        if !valid {
            return Err(OriginError {
                entry: e.to_owned(),
            });
        }
        out.push(norm);
    }
    Ok(out)
}

fn normalize(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// Whether a request with these `Origin` and `Host` headers may open a WebSocket.
pub(crate) fn allowed(allow_list: &[String], origin: Option<&str>, host: Option<&str>) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    if allow_list.iter().any(|a| a == "*") {
        return true;
    }
    let origin = normalize(origin);
    if !allow_list.is_empty() {
        return allow_list.contains(&origin);
    }
    match (origin.split_once("://"), host) {
        (Some((_, authority)), Some(host)) => authority == host.trim().to_ascii_lowercase(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_origin_is_a_non_browser_and_allowed() {
        assert!(allowed(&[], None, Some("x:1")));
        assert!(allowed(&["https://a.example".into()], None, None));
    }

    #[test]
    fn empty_list_means_same_origin_only() {
        assert!(allowed(
            &[],
            Some("http://127.0.0.1:8080"),
            Some("127.0.0.1:8080")
        ));
        assert!(allowed(
            &[],
            Some("HTTPS://Exec.Example/"),
            Some("exec.example")
        ));
        assert!(!allowed(
            &[],
            Some("https://evil.example"),
            Some("exec.example")
        ));
        assert!(!allowed(&[], Some("null"), Some("exec.example")));
        assert!(!allowed(&[], Some("http://exec.example"), None));
    }

    #[test]
    fn a_list_is_matched_exactly() {
        let list = parse_allow_list(&["https://App.example/", " http://localhost:3000"]).unwrap();
        assert_eq!(list, ["https://app.example", "http://localhost:3000"]);
        assert!(allowed(
            &list,
            Some("https://app.example"),
            Some("api.example")
        ));
        assert!(allowed(&list, Some("http://localhost:3000"), None));
        assert!(!allowed(&list, Some("http://app.example"), None), "scheme");
        assert!(!allowed(&list, Some("https://app.example.evil"), None));
        assert!(!allowed(
            &list,
            Some("http://api.example"),
            Some("api.example")
        ));
        let any = parse_allow_list(&["*"]).unwrap();
        assert!(allowed(&any, Some("null"), None));
    }

    #[test]
    fn malformed_entries_are_refused() {
        for bad in ["app.example", "https://a.example/path", "https://", "://x"] {
            assert!(parse_allow_list(&[bad]).is_err(), "{bad}");
        }
        assert!(parse_allow_list::<&str>(&[]).unwrap().is_empty());
    }
}
