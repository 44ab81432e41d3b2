//! Extractors that turn raw request parts into domain values, answering the JSON error shape
//! (never axum's plain-text rejections) when they cannot.

use std::borrow::Cow;
use std::str::FromStr;

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue};

use super::error::ApiError;
use crate::cache::Mode;
use crate::domain::ParseError;

/// A JSON body (`Content-Type: application/json`, size-limited by the router).
pub(crate) struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    axum::Json<T>: FromRequest<S, Rejection = axum::extract::rejection::JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(r) => Err(r.into()),
        }
    }
}

/// The request's media type (`Content-Type` without parameters), lowercased.
pub(crate) fn media_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
}

/// A JSON body read from bytes as [`ApiJson`] reads it: `application/json` (or `+json`) or 415,
/// a syntax error 400 `malformed_json`, a shape error 422 `invalid_body`.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, ApiError> {
    let json = media_type(headers).is_some_and(|m| {
        m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
    });
    if !json {
        return Err(super::error::unsupported_media_type(
            "Send the body as JSON with `Content-Type: application/json`.",
        ));
    }
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::unprocessable("invalid_body", e.to_string()),
        _ => ApiError::bad_request("malformed_json", e.to_string()),
    })
}

/// A single path parameter parsed into a domain id.
pub(crate) struct PathId<T>(pub T);

impl<S, T> FromRequestParts<S> for PathId<T>
where
    T: FromStr<Err = ParseError> + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state).await?;
        parse_id(&raw).map(PathId)
    }
}

/// A domain id from its path segment, or the `invalid_id` error.
pub(crate) fn parse_id<T: FromStr<Err = ParseError>>(raw: &str) -> Result<T, ApiError> {
    raw.parse::<T>()
        .map_err(|e| ApiError::bad_request("invalid_id", e.0))
}

/// The raw path parameter (for phone numbers, parsed by the handler with the region).
pub(crate) struct PathText(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathText {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state).await?;
        Ok(PathText(raw))
    }
}

/// The query string, decoded pair by pair on demand (`application/x-www-form-urlencoded`, as
/// axum's `Query` decodes it: `+` is a space); the first occurrence of a name wins.
pub(crate) struct QueryPairs<'a>(Cow<'a, str>);

impl<'a> QueryPairs<'a> {
    /// The pairs of a raw query string (`None`: no query).
    pub(crate) fn of(query: Option<&'a str>) -> Self {
        QueryPairs(Cow::Borrowed(query.unwrap_or("")))
    }

    /// The decoded value of the first pair named `name`, decoded by form_urlencoded's rules (`+`
    /// is a space, `%XX` a byte, a bad escape stays as it is, invalid UTF-8 becomes U+FFFD), but
    /// only that pair and only if it has escapes.
    pub(crate) fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        let value = self
            .0
            .split('&')
            .filter(|pair| !pair.is_empty())
            .find_map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (form_decode(key) == name).then_some(value)
            })?;
        Some(form_decode(value))
    }
}

/// One `application/x-www-form-urlencoded` name or value, decoded (borrowed when it has no
/// escapes, which is the common case).
fn form_decode(raw: &str) -> Cow<'_, str> {
    if !raw.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(raw);
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let escape = (b == b'%')
            .then(|| Some(hex(*bytes.get(i + 1)?)? << 4 | hex(*bytes.get(i + 2)?)?))
            .flatten();
        match (b, escape) {
            (_, Some(decoded)) => {
                out.push(decoded);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            _ => out.push(b),
        }
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs<'static> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(QueryPairs(Cow::Owned(
            parts.uri.query().unwrap_or("").to_owned(),
        )))
    }
}

/// Parses `If-Match: "<version>"` (`*` or absent = unconditional).
pub(crate) fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(raw) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad_request(
            "invalid_if_match",
            "If-Match must be a single strong validator like \"3\", or *.",
        )
    };
    let s = raw.to_str().map_err(|_| bad())?.trim();
    if s == "*" {
        return Ok(None);
    }
    let inner = s
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .ok_or_else(bad)?;
    inner
        .parse::<i64>()
        .ok()
        .filter(|v| *v >= 1)
        .map(Some)
        .ok_or_else(bad)
}

/// What a lookup reads from the request's headers: whether it may use the caches
/// (`Cache-Control: no-cache` or `no-store` reads Postgres directly) and the client's
/// `If-None-Match`. Read from the request in place: extracting a whole `HeaderMap` would clone
/// every header of every request.
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    pub mode: Mode,
    pub if_none_match: Option<HeaderValue>,
}

impl Conditions {
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let no_cache = headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|d| matches!(d.trim(), "no-cache" | "no-store"))
            });
        Conditions {
            mode: if no_cache {
                Mode::Bypass
            } else {
                Mode::ReadThrough
            },
            if_none_match: headers.get(header::IF_NONE_MATCH).cloned(),
        }
    }

    /// True if `If-None-Match` names `etag` (weak comparison) or is `*`.
    pub(crate) fn not_modified(&self, etag: &[u8]) -> bool {
        if_none_match(self.if_none_match.as_ref(), etag)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Conditions {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Conditions::of(&parts.headers))
    }
}

/// True if an `If-None-Match` value names `etag` (weak comparison) or is `*`.
fn if_none_match(raw: Option<&HeaderValue>, etag: &[u8]) -> bool {
    let Some(raw) = raw else {
        return false;
    };
    let Ok(s) = raw.to_str() else { return false };
    let strip = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let want = strip(std::str::from_utf8(etag).unwrap_or(""));
    s.split(',').any(|t| {
        let t = t.trim();
        t == "*" || strip(t) == want
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(name: header::HeaderName, v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn if_match_forms() {
        assert_eq!(if_match(&HeaderMap::new()).unwrap(), None);
        assert_eq!(if_match(&with(header::IF_MATCH, "\"7\"")).unwrap(), Some(7));
        assert_eq!(if_match(&with(header::IF_MATCH, "*")).unwrap(), None);
        for bad in [
            "7",
            "\"x\"",
            "W/\"7\"",
            "\"1\", \"2\"",
            "\"-1\"",
            "\"99999999999999999999\"",
        ] {
            assert!(if_match(&with(header::IF_MATCH, bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn if_none_match_forms() {
        let not_modified =
            |v: &str| Conditions::of(&with(header::IF_NONE_MATCH, v)).not_modified(b"\"3\"");
        assert!(not_modified("\"3\""));
        assert!(not_modified("W/\"3\""));
        assert!(not_modified("\"1\", \"3\""));
        assert!(not_modified("*"));
        assert!(!not_modified("\"4\""));
        assert!(!Conditions::of(&HeaderMap::new()).not_modified(b"\"3\""));
    }

    #[test]
    fn query_values_decode_as_a_full_parse_would() {
        let queries = [
            "caller=%2B15550100&callee=+1555&channel=voice",
            "a=1&a=2&b",
            "&&x=&y=%E2%82%AC&z=%FF+1",
            "na%6De=v&name=w",
            "caller=1%2B2=3",
            "x=%&y=%4&z=%zz1&a=%E2%82&b=a+b%20c%2b",
            "%61=1&x=%2",
            "",
        ];
        for q in queries {
            let pairs = QueryPairs::of(Some(q));
            for name in [
                "caller", "callee", "channel", "a", "b", "x", "y", "z", "name", "none",
            ] {
                let want = form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.into_owned());
                assert_eq!(pairs.get(name).map(Cow::into_owned), want, "{q} {name}");
            }
        }
    }

    #[test]
    fn cache_control_no_cache_bypasses() {
        let mode = |v: &str| Conditions::of(&with(header::CACHE_CONTROL, v)).mode;
        assert_eq!(mode("no-cache"), Mode::Bypass);
        assert_eq!(mode("max-age=0, no-store"), Mode::Bypass);
        assert_eq!(mode("max-age=60"), Mode::ReadThrough);
        assert_eq!(Conditions::of(&HeaderMap::new()).mode, Mode::ReadThrough);
    }
}
