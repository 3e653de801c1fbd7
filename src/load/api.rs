//! One node's API as the load generator calls it: a JSON request, its answer with status and error code, and the
//! tokens a signed-in user holds.

use std::time::{Duration, Instant};

use reqwest::header::RETRY_AFTER;
use reqwest::Method;
use serde_json::Value;

/// How long a request may take before it counts as a transport error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
}

/// An HTTP answer, whatever its status.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// `Null` when the body is not JSON.
    pub body: Value,
    pub retry_after: Option<Duration>,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The stable error code of an error answer, or "".
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// How the report names this answer as an error: `409 insufficient_stock`.
    pub fn describe(&self) -> String {
        match self.code() {
            "" => self.status.to_string(),
            code => format!("{} {code}", self.status),
        }
    }

    /// What the server asked a client to wait before trying again (1 s when it did not say).
    pub fn wait(&self) -> Duration {
        self.retry_after.unwrap_or(Duration::from_secs(1))
    }
}

impl Api {
    pub fn new(http: reqwest::Client, base: String) -> Self {
        Self { http, base }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Answer, reqwest::Error> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .map(Duration::from_secs);
        let bytes = response.bytes().await?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Answer { status, body, retry_after })
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Result<Answer, reqwest::Error> {
        self.call(Method::GET, path, token, None, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Result<Answer, reqwest::Error> {
        self.call(Method::POST, path, token, Some(body), None).await
    }
}

/// How the report names a request that got no answer.
pub fn transport(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect"
    } else if error.is_body() || error.is_decode() {
        "body"
    } else {
        "request"
    };
    format!("transport: {kind}")
}

/// An error with its causes, on one line.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A signed-in user's tokens.
#[derive(Debug, Clone)]
pub struct Session {
    pub access: String,
    pub refresh: String,
    /// When to refresh: at 80% of the access token's lifetime, before it expires under a request.
    pub renew_at: Instant,
}

impl Session {
    /// From a sign-up, sign-in or refresh answer: `{accessToken, expiresIn, refreshToken, ...}`.
    pub fn from_body(body: &Value) -> Option<Self> {
        let lifetime = Duration::from_secs(body["expiresIn"].as_u64()?);
        Some(Self {
            access: body["accessToken"].as_str()?.to_string(),
            refresh: body["refreshToken"].as_str()?.to_string(),
            renew_at: Instant::now() + lifetime.mul_f64(0.8),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers_name_their_error() {
        let answer = |status, body| Answer { status, body, retry_after: None };
        let a = answer(409, json!({"error": {"code": "insufficient_stock", "message": "only 2"}}));
        assert_eq!((a.is_success(), a.describe().as_str()), (false, "409 insufficient_stock"));
        assert_eq!(answer(502, Value::Null).describe(), "502");
        assert!(answer(202, json!({})).is_success());
        assert_eq!(answer(503, Value::Null).wait(), Duration::from_secs(1));
    }

    #[test]
    fn sessions_renew_before_expiry() {
        let s = Session::from_body(&json!({"accessToken": "a", "refreshToken": "r", "expiresIn": 900})).unwrap();
        let renew_in = s.renew_at - Instant::now();
        assert!(renew_in > Duration::from_secs(700) && renew_in <= Duration::from_secs(720), "{renew_in:?}");
        assert!(Session::from_body(&json!({"accessToken": "a"})).is_none());
    }
}
