//! The id of the request being served (the caller's `x-request-id`, or a new one), for log
//! lines: a task-local, not a span — an INFO span per request cost a quarter of an L1 hit's CPU.

use axum::http::HeaderValue;

tokio::task_local! {
    /// The `x-request-id` of the request being served.
    pub(super) static REQUEST_ID: HeaderValue;
}

/// The id of the request being served, for log lines (empty outside a request).
pub(crate) fn request_id() -> String {
    REQUEST_ID
        .try_with(|id| id.to_str().unwrap_or("").to_owned())
        .unwrap_or_default()
}

/// Runs `fut` (a task spawned for the current request) with the request's id.
pub(crate) fn with_request_id<F: std::future::Future>(
    fut: F,
) -> impl std::future::Future<Output = F::Output> {
    let id = REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| HeaderValue::from_static(""));
    REQUEST_ID.scope(id, fut)
}

/// New request ids: this process's random prefix and a counter (`5f0c2a9e13b7-000000000000002a`),
/// unique across a fleet without a random draw per request.
pub(crate) struct RequestIds {
    prefix: [u8; 12],
    next: std::sync::atomic::AtomicU64,
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl RequestIds {
    pub(crate) fn new() -> Self {
        let seed: u64 = rand::random();
        RequestIds {
            prefix: std::array::from_fn(|i| HEX[((seed >> (44 - 4 * i)) & 0xf) as usize]),
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub(crate) fn next(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut id = [b'-'; 29];
        id[..12].copy_from_slice(&self.prefix);
        for (i, c) in id[13..].iter_mut().enumerate() {
            *c = HEX[((n >> (60 - 4 * i)) & 0xf) as usize];
        }
        HeaderValue::from_bytes(&id).expect("hex digits and a dash")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_well_formed() {
        let ids = RequestIds::new();
        let (a, b) = (ids.next(), ids.next());
        assert_ne!(a, b);
        let a = a.to_str().unwrap();
        assert_eq!(a.len(), 29);
        assert_eq!(&a[12..], "-0000000000000000");
        assert_eq!(&b.to_str().unwrap()[12..], "-0000000000000001");
        assert!(a[..12].bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(RequestIds::new().prefix, RequestIds::new().prefix);
    }
}
