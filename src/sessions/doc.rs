//! A session as it is stored — its data as JSON text, its version and its times — the clock
//! its times come from, and JSON Merge Patch (RFC 7396).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::domain::rfc3339::push_millis;
use crate::domain::SessionId;

/// One session's stored state. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doc {
    pub version: u64,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub expires_ms: i64,
    /// The `data` object as JSON text.
    pub data: String,
}

impl Doc {
    /// Whether it has expired at `now_ms`.
    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires_ms <= now_ms
    }

    /// The data as a JSON object.
    pub fn data_object(&self) -> Map<String, Value> {
        match serde_json::from_str(&self.data) {
            Ok(Value::Object(m)) => m,
            // Only objects are ever stored; a foreign value reads as empty rather than failing.
            _ => Map::new(),
        }
    }

    /// The API's Session JSON: `{id, data, version, created_at, updated_at, expires_at}`.
    pub fn render(&self, id: &SessionId) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() + id.as_str().len() + 160);
        out.extend_from_slice(b"{\"id\":\"");
        // Session ids are [A-Za-z0-9._:-]: nothing to escape.
        out.extend_from_slice(id.as_str().as_bytes());
        out.extend_from_slice(b"\",\"data\":");
        out.extend_from_slice(self.data.as_bytes());
        out.extend_from_slice(b",\"version\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.version).as_bytes());
        for (name, ms) in [
            (&b",\"created_at\":\""[..], self.created_ms),
            (b",\"updated_at\":\"", self.updated_ms),
            (b",\"expires_at\":\"", self.expires_ms),
        ] {
            out.extend_from_slice(name);
            push_millis(ms, &mut out);
            out.push(b'"');
        }
        out.push(b'}');
        out
    }
}

/// Milliseconds since the epoch as RFC 3339 UTC, with milliseconds.
pub fn rfc3339_ms(ms: i64) -> String {
    let mut out = Vec::with_capacity(24);
    push_millis(ms, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// Wall-clock time in milliseconds, which tests may move forward (sessions expire by this clock;
/// Redis's own expiry of a key is only a backstop a little later).
#[derive(Debug, Default)]
pub struct Clock {
    offset_ms: AtomicI64,
}

impl Clock {
    pub fn now_ms(&self) -> i64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as i64;
        now + self.offset_ms.load(Ordering::Relaxed)
    }

    /// Moves this instance's clock forward (tests: expiry without sleeping).
    #[doc(hidden)]
    pub fn advance(&self, by: Duration) {
        self.offset_ms
            .fetch_add(by.as_millis() as i64, Ordering::Relaxed);
    }
}

/// RFC 7396: applies `patch` to `target`. An object patch merges member by member (`null`
/// removes a member, an object merges recursively); anything else replaces the target.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else {
        unreachable!("made an object above")
    };
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The examples of RFC 7396, appendix A.
    #[test]
    fn rfc_7396_examples() {
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ];
        for (target, patch, want) in cases {
            let mut t = target.clone();
            merge_patch(&mut t, &patch);
            assert_eq!(t, want, "{target} + {patch}");
        }
    }

    #[test]
    fn renders_the_session_shape() {
        let d = Doc {
            version: 3,
            created_ms: 0,
            updated_ms: 1_500,
            expires_ms: 3_600_000,
            data: r#"{"k":[1,2]}"#.into(),
        };
        let id: SessionId = "call:1".parse().unwrap();
        let v: Value = serde_json::from_slice(&d.render(&id)).unwrap();
        assert_eq!(
            v,
            json!({"id": "call:1", "data": {"k": [1, 2]}, "version": 3,
                "created_at": "1970-01-01T00:00:00.000Z", "updated_at": "1970-01-01T00:00:01.500Z",
                "expires_at": "1970-01-01T01:00:00.000Z"})
        );
    }
}
