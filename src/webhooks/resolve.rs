//! From a call start to what is known within the deadline. Lookups that must wait run in a task
//! of their own, so a deadline that passes stops the waiting, not the work: the organization and
//! the caller's parts land in the cache for the platform's retry and the next call.

use std::future::Future as _;
use std::task::Poll;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use super::{finish_variables, CallStart, Known, Voice};
use crate::answers::{greeting_text, Answers, Initiation};
use crate::cache::{CacheError, Lookup, Mode};
use crate::domain::{Channel, Organization, PhoneNumber, PhoneParser};
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
                return full(&init, &caller_text).unwrap_or_else(|| Known::fallback(&caller_text))
            }
            // The number's organization went away between the parts.
            Ok(Some(Progress::Initiation(Ok(None)))) => return Known::unknown_number(&caller_text),
            // The task is done: an unknown caller (nothing more is coming), or a failed part.
            Ok(None) => {
                if let Some(l) = &org {
                    return org_only(l, &caller_text, WebhookOutcome::Full)
                        .unwrap_or_else(|| Known::fallback(&caller_text));
                }
                break;
            }
            Ok(Some(Progress::Org(Err(_)) | Progress::Initiation(Err(_)))) | Err(_) => break,
        }
    }
    match &org {
        Some(l) => org_only(l, &caller_text, WebhookOutcome::Partial),
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

fn organization(l: &Lookup) -> Option<Organization> {
    serde_json::from_slice(&l.entry.body).ok()
}

/// The organization alone: its variables and the greeting for an unknown caller.
fn org_only(l: &Lookup, caller: &str, outcome: WebhookOutcome) -> Option<Known> {
    let org = organization(l)?;
    let greeting = greeting_text(&org, None, Channel::Voice);
    let mut variables = org_variables(&org);
    finish_variables(&mut variables, &greeting, caller, false);
    Some(Known {
        outcome,
        voice: Voice::of(&org),
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
fn full(init: &Initiation, caller: &str) -> Option<Known> {
    let org = organization(&init.organization)?;
    let known = init.known.as_ref().filter(|k| !k.greeting.entry.negative);
    let greeting_bytes = match (known, &init.rendered_greeting) {
        (Some(k), _) => &k.greeting.entry.body,
        (None, Some(g)) => g,
        (None, None) => return org_only(&init.organization, caller, WebhookOutcome::Full),
    };
    let greeting = serde_json::from_slice::<GreetingBody>(greeting_bytes)
        .ok()?
        .greeting;
    let context = known
        .filter(|k| !k.context.entry.negative)
        .and_then(|k| serde_json::from_slice::<ContextBody>(&k.context.entry.body).ok());
    let mut variables = match context {
        Some(c) => c.dynamic_variables,
        None => org_variables(&org),
    };
    let lead_id = known.and_then(|_| init.lead.entry.ids().lead);
    finish_variables(&mut variables, &greeting, caller, lead_id.is_some());
    Some(Known {
        outcome: WebhookOutcome::Full,
        voice: Voice::of(&org),
        org: Some(org),
        lead_id,
        variables,
        greeting,
    })
}
