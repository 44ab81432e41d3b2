//! Talking HTTP to a test app: requests and their `Answer`s, polling with `get_until`, the
//! `/metrics` text, and a client without pooled connections.

#![allow(dead_code)]

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::prom::sum_metric;
use crate::spawn::TestApp;

/// One HTTP answer, with the bits tests look at.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Answer {
    pub fn cache(&self) -> &str {
        self.headers
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn version(&self) -> i64 {
        self.body["version"].as_i64().unwrap_or(-1)
    }
    /// Asserts the error shape and returns its code.
    pub fn error_code(&self) -> &str {
        assert!(
            self.header("content-type")
                .unwrap_or("")
                .starts_with("application/json"),
            "error answers are JSON: {self:?}"
        );
        let code = self.body["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("error shape: {}", self.text));
        assert!(
            self.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "message: {}",
            self.text
        );
        code
    }
}

impl TestApp {
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.addr, path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request sent");
        Self::answer(res).await
    }

    pub async fn answer(res: reqwest::Response) -> Answer {
        let status = res.status();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
            text,
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.request(Method::GET, path, None, &[]).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.request(Method::POST, path, Some(body), &[]).await
    }
    pub async fn patch(&self, path: &str, body: Value) -> Answer {
        self.request(Method::PATCH, path, Some(body), &[]).await
    }
    pub async fn delete(&self, path: &str) -> Answer {
        self.request(Method::DELETE, path, None, &[]).await
    }

    /// The `/metrics` exposition.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The sum of a metric's samples whose labels include every `label="value"` given.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        sum_metric(&self.metrics_text().await, name, labels)
    }

    /// GETs `path` until `pred` holds for the answer or `timeout` passes; returns the last answer
    /// and how long it took.
    pub async fn get_until(
        &self,
        path: &str,
        timeout: Duration,
        pred: impl Fn(&Answer) -> bool,
    ) -> (Answer, Duration) {
        let started = std::time::Instant::now();
        loop {
            let a = self.get(path).await;
            if pred(&a) || started.elapsed() > timeout {
                return (a, started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A client that opens a connection per concurrent request (no pooled connections shared).
pub fn unpooled_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}
