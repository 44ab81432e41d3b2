//! From a call start to what is known within the deadline. Lookups that must wait run in a task
//! of their own, so a deadline that passes stops the waiting, not the work: the organization and
//! the caller's parts land in the cache for the platform's retry and the next call.

use std::collections::HashMap;
use std::future::Future as _;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;

use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use super::{finish_variables, CallStart, Known, Voice};
use crate::answers::{greeting_text, Answers, Initiation};
use crate::cache::{CacheError, Lookup, Mode};
use crate::domain::{Channel, LeadId, OrgId, Organization, PhoneNumber, PhoneParser};
use crate::labels::WebhookOutcome;

/// How far the lookups got.
enum Progress {
    Org(Result<Lookup, CacheError>),
    Initiation(Result<Option<Initiation>, CacheError>),
}

/// What is known about `call` within `deadline`: `full` (the organization, and the caller's
/// context and greeting if it is one of its leads), `partial` (the organization only), `fallback`
/// (nothing) or `unknown_number`.
pub async fn resolve(
    answers: &Answers,
    decoded: &Decoded,
    phones: &PhoneParser,
    call: &CallStart,
    deadline: Duration,
) -> Known {
    let until = tokio::time::Instant::now() + deadline;
    let Ok(callee) = phones.parse(&call.callee) else {
        return Known::unknown_number(&call.caller);
    };
    // A withheld or unparseable caller id is an unknown caller, not an error.
    let caller = phones.parse(&call.caller).ok();
    let caller_text = caller
        .as_ref()
        .map_or(call.caller.as_str(), PhoneNumber::as_str)
        .to_owned();
    let (tx, mut rx) = mpsc::channel(2);
    let a = answers.clone();
    let mut lookups = Box::pin(async move {
        let org = a.org_by_phone(&callee, Mode::ReadThrough).await;
        let found = matches!(&org, Ok(l) if !l.entry.negative);
        let _ = tx.send(Progress::Org(org)).await;
        if let (true, Some(caller)) = (found, caller) {
            let init = a
                .initiation(&caller, &callee, Channel::Voice, Mode::ReadThrough)
                .await;
            let _ = tx.send(Progress::Initiation(init)).await;
        }
    });
    // Every part in L1 answers without waiting: poll here once, and spawn only lookups that
    // must wait (a task of their own, so the deadline stops the waiting, not the work).
    let waiting =
        std::future::poll_fn(|cx| Poll::Ready(lookups.as_mut().poll(cx).is_pending())).await;
    if waiting {
        tokio::spawn(lookups);
    }
    let mut org: Option<Lookup> = None;
    loop {
        match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(Some(Progress::Org(Ok(l)))) if l.entry.negative => {
                return Known::unknown_number(&caller_text)
            }
            Ok(Some(Progress::Org(Ok(l)))) => org = Some(l),
            Ok(Some(Progress::Initiation(Ok(Some(init))))) => {
                return full(decoded, &init, &caller_text)
                    .unwrap_or_else(|| Known::fallback(&caller_text))
            }
            // The number's organization went away between the parts.
            Ok(Some(Progress::Initiation(Ok(None)))) => return Known::unknown_number(&caller_text),
            // The task is done: an unknown caller (nothing more is coming), or a failed part.
            Ok(None) => {
                if let Some(l) = &org {
                    return org_only(decoded, l, &caller_text, WebhookOutcome::Full)
                        .unwrap_or_else(|| Known::fallback(&caller_text));
                }
                break;
            }
            Ok(Some(Progress::Org(Err(_)) | Progress::Initiation(Err(_)))) | Err(_) => break,
        }
    }
    match &org {
        Some(l) => org_only(decoded, l, &caller_text, WebhookOutcome::Partial),
        None => None,
    }
    .unwrap_or_else(|| Known::fallback(&caller_text))
}

#[derive(Deserialize)]
struct GreetingBody {
    greeting: String,
}

#[derive(Deserialize)]
struct ContextBody {
    dynamic_variables: Map<String, Value>,
}

/// Cached bodies decoded once: every call to a number decodes the same organization (and its
/// `settings.voice`), a caller's every call the same context, and that decoding was the largest
/// part of answering a call start from memory. Exact: a decoding is reused only for a body equal
/// byte for byte to the one it was decoded from, whatever changed it and however.
#[derive(Default)]
pub struct Decoded {
    orgs: Memo<OrgId, (Arc<Organization>, Arc<Voice>)>,
    contexts: Memo<LeadId, Arc<Map<String, Value>>>,
}

impl Decoded {
    /// The organization of a cached body, and its voice settings.
    fn org(&self, l: &Lookup) -> Option<(Arc<Organization>, Arc<Voice>)> {
        self.orgs.get(l.entry.ids().org, &l.entry.body, |body| {
            let org: Organization = serde_json::from_slice(body).ok()?;
            let voice = Arc::new(Voice::of(&org));
            Some((Arc::new(org), voice))
        })
    }

    /// The dynamic variables of a cached context body.
    fn variables(&self, l: &Lookup) -> Option<Arc<Map<String, Value>>> {
        self.contexts
            .get(l.entry.ids().lead, &l.entry.body, |body| {
                serde_json::from_slice::<ContextBody>(body)
                    .ok()
                    .map(|c| Arc::new(c.dynamic_variables))
            })
    }
}

/// Decodings by the id of what they decode, with the body each came from.
struct Memo<K, T> {
    kept: Mutex<HashMap<K, (Bytes, T)>>,
}

impl<K, T> Default for Memo<K, T> {
    fn default() -> Self {
        Memo {
            kept: Mutex::new(HashMap::new()),
        }
    }
}

/// More than one instance answers for from memory: past it a memo starts over.
const DECODINGS_KEPT: usize = 4096;

impl<K: std::hash::Hash + Eq, T: Clone> Memo<K, T> {
    /// `body` decoded: the kept decoding if it was of these very bytes, else `decode`'s.
    fn get(
        &self,
        id: Option<K>,
        body: &Bytes,
        decode: impl FnOnce(&[u8]) -> Option<T>,
    ) -> Option<T> {
        let Some(id) = id else {
            return decode(body);
        };
        if let Some((_, t)) = self
            .kept
            .lock()
            .expect("not poisoned")
            .get(&id)
            .filter(|(kept, _)| kept == body)
        {
            return Some(t.clone());
        }
        let t = decode(body)?;
        let mut kept = self.kept.lock().expect("not poisoned");
        if kept.len() >= DECODINGS_KEPT {
            kept.clear();
        }
        kept.insert(id, (body.clone(), t.clone()));
        Some(t)
    }
}

/// The organization alone: its variables and the greeting for an unknown caller.
fn org_only(decoded: &Decoded, l: &Lookup, caller: &str, outcome: WebhookOutcome) -> Option<Known> {
    let (org, voice) = decoded.org(l)?;
    let greeting = greeting_text(&org, None, Channel::Voice);
    let mut variables = org_variables(&org);
    finish_variables(&mut variables, &greeting, caller, false);
    Some(Known {
        outcome,
        voice,
        org: Some(org),
        lead_id: None,
        variables,
        greeting,
    })
}

fn org_variables(org: &Organization) -> Map<String, Value> {
    let mut vars = Map::new();
    vars.insert("org_name".into(), org.name.clone().into());
    vars.insert("org_timezone".into(), org.timezone.clone().into());
    vars
}

/// Everything the initiation answered.
fn full(decoded: &Decoded, init: &Initiation, caller: &str) -> Option<Known> {
    let (org, voice) = decoded.org(&init.organization)?;
    let known = init.known.as_ref().filter(|k| !k.greeting.entry.negative);
    let greeting_bytes = match (known, &init.rendered_greeting) {
        (Some(k), _) => &k.greeting.entry.body,
        (None, Some(g)) => g,
        (None, None) => return org_only(decoded, &init.organization, caller, WebhookOutcome::Full),
    };
    let greeting = serde_json::from_slice::<GreetingBody>(greeting_bytes)
        .ok()?
        .greeting;
    let context = known
        .filter(|k| !k.context.entry.negative)
        .and_then(|k| decoded.variables(&k.context));
    let mut variables = match context {
        Some(vars) => Map::clone(&vars),
        None => org_variables(&org),
    };
    let lead_id = known.and_then(|_| init.lead.entry.ids().lead);
    finish_variables(&mut variables, &greeting, caller, lead_id.is_some());
    Some(Known {
        outcome: WebhookOutcome::Full,
        voice,
        org: Some(org),
        lead_id,
        variables,
        greeting,
    })
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn a_decoding_is_reused_only_for_the_same_bytes() {
        let memo: Memo<u32, String> = Memo::default();
        let decodes = Cell::new(0);
        let decode = |b: &[u8]| {
            decodes.set(decodes.get() + 1);
            Some(String::from_utf8(b.to_vec()).unwrap())
        };
        let v1 = Bytes::from_static(b"{\"name\":\"Acme\"}");
        assert_eq!(
            memo.get(Some(1), &v1, decode).unwrap(),
            "{\"name\":\"Acme\"}"
        );
        // The same bytes (another buffer holding them, as a reload from Redis would): reused.
        let again = Bytes::from(v1.to_vec());
        assert_eq!(
            memo.get(Some(1), &again, decode).unwrap(),
            "{\"name\":\"Acme\"}"
        );
        assert_eq!(decodes.get(), 1);
        // Changed bytes under the same id (a write, or SQL behind the cache's back): decoded anew.
        let v2 = Bytes::from_static(b"{\"name\":\"Acme Dental\"}");
        assert_eq!(
            memo.get(Some(1), &v2, decode).unwrap(),
            "{\"name\":\"Acme Dental\"}"
        );
        assert_eq!(decodes.get(), 2);
        // Without an id nothing is kept.
        memo.get(None, &v2, decode);
        memo.get(None, &v2, decode);
        assert_eq!(decodes.get(), 4);
        // A body that does not decode is not kept either.
        assert!(memo.get(Some(2), &v1, |_| None).is_none());
        assert_eq!(
            memo.get(Some(2), &v1, decode).unwrap(),
            "{\"name\":\"Acme\"}"
        );
    }

    #[test]
    fn a_full_memo_starts_over() {
        let memo: Memo<usize, usize> = Memo::default();
        let body = Bytes::from_static(b"x");
        for i in 0..=DECODINGS_KEPT {
            memo.get(Some(i), &body, |_| Some(i));
        }
        assert_eq!(memo.kept.lock().unwrap().len(), 1);
    }
}
