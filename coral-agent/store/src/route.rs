//! Route normalisation: `/api/orders/123?x=1` → `/api/orders/{id}`, so
//! per-route aggregates do not explode with ids. Numbers, UUIDs, long hex
//! strings and long mixed tokens become `{id}`. Bounded: at most
//! `MAX_SEGMENTS` segments and `MAX_LEN` bytes.

use std::borrow::Cow;

const MAX_SEGMENTS: usize = 8;
const MAX_LEN: usize = 128;

fn is_id(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.is_empty() {
        return false;
    }
    if b.iter().all(u8::is_ascii_digit) {
        return true;
    }
    // UUID: 8-4-4-4-12 hex.
    if b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
    {
        return true;
    }
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    // Hex ids (hashes, object ids) with at least one digit.
    if b.len() >= 8 && digits > 0 && b.iter().all(u8::is_ascii_hexdigit) {
        return true;
    }
    // Long opaque tokens mixing letters and digits (base64-ish ids).
    b.len() >= 16
        && digits >= 2
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
}

/// Normalises a request target (path plus optional query) to a route.
pub fn normalise(target: &str) -> String {
    normalised(target).into_owned()
}

/// [`normalise`], borrowed from `target` when its path is a route already
/// (the common case: no allocation per request).
pub fn normalised(target: &str) -> Cow<'_, str> {
    let path = target.split(['?', '#']).next().unwrap_or("");
    if path.starts_with('/')
        && path.len() <= MAX_LEN
        && path.bytes().all(|c| c.is_ascii_graphic())
        && path[1..].split('/').count() <= MAX_SEGMENTS
        && !path[1..].split('/').any(is_id)
    {
        return Cow::Borrowed(path);
    }
    Cow::Owned(normalise_owned(path))
}

fn normalise_owned(path: &str) -> String {
    // Absolute-form targets (proxies): keep the path only.
    let path = match path
        .strip_prefix("http://")
        .or_else(|| path.strip_prefix("https://"))
    {
        Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => path,
    };
    if !path.starts_with('/') {
        return if path == "*" { "*".into() } else { "/".into() };
    }
    let mut out = String::new();
    for (i, seg) in path[1..].split('/').enumerate() {
        if i == MAX_SEGMENTS {
            out.push_str("/{...}");
            break;
        }
        out.push('/');
        if is_id(seg) {
            out.push_str("{id}");
        } else {
            // Keep printable ASCII only.
            out.extend(
                seg.chars()
                    .map(|c| if c.is_ascii_graphic() { c } else { '_' }),
            );
        }
    }
    if out.len() > MAX_LEN {
        let mut end = MAX_LEN;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    if out.is_empty() { "/".into() } else { out }
}

#[cfg(test)]
mod tests {
    use super::{normalise, normalised};

    #[test]
    fn ids_become_placeholders() {
        for (target, route) in [
            ("/api/orders/123", "/api/orders/{id}"),
            ("/api/orders/123?verbose=1", "/api/orders/{id}"),
            ("/api/orders/123/items/7", "/api/orders/{id}/items/{id}"),
            ("/users/550e8400-e29b-41d4-a716-446655440000", "/users/{id}"),
            ("/blobs/deadbeef0123", "/blobs/{id}"),
            ("/blobs/5f3a9c", "/blobs/5f3a9c"),
            ("/t/aGVsbG8xMjM0NTY3ODkw", "/t/{id}"),
            ("/health", "/health"),
            ("/api/v2/orders", "/api/v2/orders"),
            ("/", "/"),
            ("", "/"),
            ("*", "*"),
            ("http://example.com/x/42", "/x/{id}"),
            ("/a/b/c/d/e/f/g/h/i/j", "/a/b/c/d/e/f/g/h/{...}"),
        ] {
            assert_eq!(normalise(target), route, "{target}");
            assert_eq!(normalised(target), route, "{target}");
        }
        assert!(normalise(&format!("/{}", "a".repeat(500))).len() <= 128);
        assert_eq!(normalise("/a b\x01"), "/a_b_");
    }
}
