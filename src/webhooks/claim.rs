//! One answer per call start across instances. A platform that retries (Retell, after its
//! timeout) may reach another instance behind the load balancer; for Retell, whose call start has
//! no call id, that instance would mint a second session id and open a second session. So the
//! first instance to answer claims the call start in Redis for the retry window
//! (`SET key answer NX PX window GET`, one round trip): a later instance finds the claim and
//! answers with the first answer, opening nothing. With Redis away the claim is unknown and the
//! per-instance memory of recent answers is all there is.

use std::sync::Arc;
use std::time::Duration;

use super::Rendered;
use crate::labels::{RedisOp, WebhookOutcome};
use crate::redis::{Keys, Redis};

/// Claims of answered call starts, in Redis.
pub struct Claims {
    redis: Arc<Redis>,
    keys: Keys,
}

/// Who answered a call start first.
#[derive(Debug)]
pub enum Claim {
    /// This instance: its answer stands.
    Ours,
    /// Another instance, with this answer.
    Theirs(Rendered, WebhookOutcome),
    /// Redis could not tell.
    Unknown,
}

impl Claims {
    pub fn new(redis: Arc<Redis>, keys: Keys) -> Self {
        Claims { redis, keys }
    }

    /// Claims `key` with `answer` for `window`, unless another instance has.
    pub async fn claim(
        &self,
        key: &str,
        answer: &Rendered,
        outcome: WebhookOutcome,
        window: Duration,
    ) -> Claim {
        let Ok(mut conn) = self.redis.conn() else {
            return Claim::Unknown;
        };
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.keys.call_start(key))
            .arg(encode(answer, outcome))
            .arg("NX")
            .arg("PX")
            .arg(window.as_millis() as u64)
            .arg("GET");
        let before: Result<Option<Vec<u8>>, _> = self
            .redis
            .run(RedisOp::CallStart, cmd.query_async(&mut conn))
            .await;
        match before {
            Ok(None) => Claim::Ours,
            Ok(Some(bytes)) => decode(&bytes).map_or(Claim::Unknown, |(r, o)| Claim::Theirs(r, o)),
            Err(_) => Claim::Unknown,
        }
    }
}

/// `<outcome>\n<content type>\n<body>`.
fn encode(answer: &Rendered, outcome: WebhookOutcome) -> Vec<u8> {
    let mut out = Vec::with_capacity(answer.body.len() + 40);
    out.extend_from_slice(outcome.as_str().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(answer.content_type.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(&answer.body);
    out
}

fn decode(bytes: &[u8]) -> Option<(Rendered, WebhookOutcome)> {
    let mut parts = bytes.splitn(3, |&b| b == b'\n');
    let (outcome, content_type, body) = (parts.next()?, parts.next()?, parts.next()?);
    let outcome = *WebhookOutcome::ALL
        .iter()
        .find(|o| o.as_str().as_bytes() == outcome)?;
    let content_type = match content_type {
        b"application/json" => "application/json",
        b"text/xml; charset=utf-8" => "text/xml; charset=utf-8",
        _ => return None,
    };
    Some((
        Rendered {
            content_type,
            body: bytes::Bytes::copy_from_slice(body),
        },
        outcome,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_answer_reads_back_as_it_was() {
        for (ct, body) in [
            (
                "application/json",
                &b"{\"call_inbound\":{\"x\":\"a\\nb\"}}"[..],
            ),
            (
                "text/xml; charset=utf-8",
                b"<Response>\n<Say>Hi</Say>\n</Response>",
            ),
        ] {
            let r = Rendered {
                content_type: ct,
                body: bytes::Bytes::copy_from_slice(body),
            };
            let (back, outcome) = decode(&encode(&r, WebhookOutcome::Partial)).unwrap();
            assert_eq!(
                (back.content_type, &back.body[..], outcome),
                (ct, body, WebhookOutcome::Partial)
            );
        }
        assert!(decode(b"full\nimage/png\nx").is_none());
        assert!(decode(b"nonsense").is_none());
    }
}
