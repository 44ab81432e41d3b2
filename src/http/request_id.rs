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
