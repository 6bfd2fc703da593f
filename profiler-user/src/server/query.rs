//! Query strings, parsed by hand so that every malformed, unknown or huge
//! parameter is a 400 with a message saying which.

use std::collections::BTreeMap;

/// Longest query string accepted.
pub(super) const MAX_QUERY: usize = 4096;

/// Longest value of one parameter.
const MAX_VALUE: usize = 256;

/// Decodes `%XX` and `+`; `None` for a broken escape or invalid UTF-8.
fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The decoded value of `name` in `query` (the last one when repeated).
pub(super) fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').rev().find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (decode(k)? == name).then(|| decode(v)).flatten()
    })
}

/// Parses `query`, allowing only `allowed` names (and `token`).
pub(super) fn parse(
    query: Option<&str>,
    allowed: &[&str],
) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let Some(q) = query.filter(|q| !q.is_empty()) else {
        return Ok(out);
    };
    if q.len() > MAX_QUERY {
        return Err(format!(
            "query string too long ({} bytes, at most {MAX_QUERY})",
            q.len()
        ));
    }
    for kv in q.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let (Some(k), Some(v)) = (decode(k), decode(v)) else {
            return Err(format!("malformed query parameter '{kv}'"));
        };
        if k == "token" {
            continue;
        }
        if !allowed.contains(&k.as_str()) {
            return Err(format!(
                "unknown query parameter '{k}' (this endpoint takes: {})",
                if allowed.is_empty() {
                    "none".to_string()
                } else {
                    allowed.join(", ")
                }
            ));
        }
        if v.len() > MAX_VALUE {
            return Err(format!(
                "query parameter '{k}' too long ({} bytes, at most {MAX_VALUE})",
                v.len()
            ));
        }
        out.insert(k, v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let p = parse(
            Some("window=1s..2s&metric=allocs&token=x"),
            &["window", "metric"],
        )
        .expect("ok");
        assert_eq!(p["window"], "1s..2s");
        assert_eq!(p.len(), 2);
        assert_eq!(param("a=1&token=abc%2D", "token").as_deref(), Some("abc-"));
        assert!(parse(Some("bogus=1"), &["window"]).is_err());
        assert!(parse(Some("window=%zz"), &["window"]).is_err());
        assert!(parse(Some("window=%ff"), &["window"]).is_err());
        let huge = format!("window={}", "1".repeat(300));
        assert!(parse(Some(&huge), &["window"]).is_err());
        assert!(parse(Some(&"&".repeat(MAX_QUERY + 1)), &[]).is_err());
        assert_eq!(decode("a+b%20c").as_deref(), Some("a b c"));
    }
}
