//! LLM providers: one model round (history + tools in, text + tool calls +
//! usage out) over each provider's own HTTP API.
//!
//! The history is kept provider-neutral ([`Msg`]) and each provider writes it
//! in its own required pairing: OpenAI/Ollama as an assistant message with
//! `tool_calls` followed by one `role: tool` message per call
//! (`tool_call_id`); Anthropic as an assistant message with `tool_use` blocks
//! followed by one user message holding a `tool_result` block per call
//! (`tool_use_id`).

mod anthropic;
mod openai;

use crate::tools::ToolSpec;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Which API a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    OpenAi,
    Anthropic,
    Ollama,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Anthropic, Kind::OpenAi, Kind::Ollama];

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "openai" => Some(Kind::OpenAi),
            "anthropic" => Some(Kind::Anthropic),
            "ollama" => Some(Kind::Ollama),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::OpenAi => "openai",
            Kind::Anthropic => "anthropic",
            Kind::Ollama => "ollama",
        }
    }

    /// The base URL when none is configured. OpenAI and Ollama URLs end in
    /// `/v1` (the client appends `/chat/completions`); Anthropic's does not
    /// (the client appends `/v1/messages`), as in each vendor's SDK.
    pub fn default_base_url(self) -> &'static str {
        match self {
            Kind::OpenAi => "https://api.openai.com/v1",
            Kind::Anthropic => "https://api.anthropic.com",
            Kind::Ollama => "http://localhost:11434/v1",
        }
    }

    /// The environment variable suggested for the key.
    pub fn default_key_env(self) -> Option<&'static str> {
        match self {
            Kind::OpenAi => Some("OPENAI_API_KEY"),
            Kind::Anthropic => Some("ANTHROPIC_API_KEY"),
            Kind::Ollama => None,
        }
    }

    /// A model suggested by `coral ask config`.
    pub fn suggested_model(self) -> &'static str {
        match self {
            Kind::OpenAi => "gpt-4.1",
            Kind::Anthropic => "claude-sonnet-4-5",
            Kind::Ollama => "qwen3:8b",
        }
    }

    pub fn needs_key(self) -> bool {
        self != Kind::Ollama
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A `provider:model-id` that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("model '{0}' must be provider:model-id, e.g. anthropic:claude-sonnet-4-5")]
    NoProvider(String),
    #[error("unknown provider '{provider}' in model '{model}' (known: anthropic, openai, ollama)")]
    UnknownProvider { provider: String, model: String },
    #[error("model '{model}' has no model id after '{provider}:'")]
    NoModelId { provider: String, model: String },
}

/// Splits `provider:model-id` (the model id may itself contain `:`, as
/// Ollama's `qwen3:8b` does).
pub fn parse_model(s: &str) -> Result<(Kind, String), ModelError> {
    let (p, m) = s
        .split_once(':')
        .ok_or_else(|| ModelError::NoProvider(s.to_string()))?;
    let kind = Kind::parse(p).ok_or_else(|| ModelError::UnknownProvider {
        provider: p.to_string(),
        model: s.to_string(),
    })?;
    if m.trim().is_empty() {
        return Err(ModelError::NoModelId {
            provider: p.to_string(),
            model: s.to_string(),
        });
    }
    Ok((kind, m.to_string()))
}

/// One tool call the model asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as the model sent them (OpenAI sends a JSON string; it
    /// is sent back verbatim in the history).
    pub raw_args: String,
    /// The parsed arguments, or why they do not parse.
    pub args: Result<serde_json::Value, String>,
}

impl ToolCall {
    pub fn new(id: String, name: String, raw_args: String) -> ToolCall {
        let raw = if raw_args.trim().is_empty() {
            "{}".to_string()
        } else {
            raw_args
        };
        let args = match serde_json::from_str::<serde_json::Value>(&raw) {
            Ok(v @ serde_json::Value::Object(_)) => Ok(v),
            Ok(_) => Err("the arguments are not a JSON object".to_string()),
            Err(e) => Err(format!("the arguments are not valid JSON: {e}")),
        };
        ToolCall {
            id,
            name,
            raw_args: raw,
            args,
        }
    }

    /// The arguments as a JSON value for the wire (an empty object if they
    /// did not parse).
    pub fn args_value(&self) -> serde_json::Value {
        self.args.clone().unwrap_or_else(|_| serde_json::json!({}))
    }
}

/// The result of one tool call, fed back to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolResult {
    pub call_id: String,
    pub content: String,
    pub is_error: bool,
}

/// The conversation, provider-neutral.
#[derive(Debug, Clone, PartialEq)]
pub enum Msg {
    User(String),
    Assistant {
        text: String,
        calls: Vec<ToolCall>,
    },
    /// The results of every call of the preceding assistant message, in order.
    ToolResults(Vec<ToolResult>),
}

/// Tokens one round used, as the provider reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Input tokens not served from a prompt cache.
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
}

impl Usage {
    pub fn add(&mut self, o: &Usage) {
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.cache_read_tokens += o.cache_read_tokens;
        self.cache_write_tokens += o.cache_write_tokens;
    }
}

/// What one model round produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Round {
    pub text: String,
    pub calls: Vec<ToolCall>,
    pub usage: Usage,
    /// The provider's stop reason (`stop`, `tool_calls`, `end_turn`, …).
    pub stop: String,
}

/// A provider failure, said in one line that tells what to check.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error(
        "{provider} rejected the API key ({status}): {message} (check the key reference {key_ref}; see 'coral ask config --show')"
    )]
    Unauthorized {
        provider: Kind,
        status: u16,
        key_ref: String,
        message: String,
    },
    #[error(
        "{provider} is rate limiting this key (429) after {attempts} attempts over {:.1}s: {message}; try again later", waited.as_secs_f64()
    )]
    RateLimited {
        provider: Kind,
        attempts: u32,
        waited: Duration,
        message: String,
    },
    #[error("{provider} failed with HTTP {status} at {url}: {message}")]
    Status {
        provider: Kind,
        status: u16,
        url: String,
        message: String,
    },
    #[error("{provider} sent a malformed response from {url}: {detail}")]
    Malformed {
        provider: Kind,
        url: String,
        detail: String,
    },
    #[error(
        "cannot reach {provider} at {base_url}: {reason} (check the base URL: 'coral ask config --show')"
    )]
    Connect {
        provider: Kind,
        base_url: String,
        reason: String,
    },
    #[error("{provider} did not answer within {timeout:?} ({url})")]
    Timeout {
        provider: Kind,
        url: String,
        timeout: Duration,
    },
}

impl ProviderError {
    /// The provider is not there (exit 69) rather than failing.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ProviderError::Connect { .. })
    }
    /// A configuration problem (exit 64).
    pub fn is_config(&self) -> bool {
        matches!(self, ProviderError::Unauthorized { .. })
    }
}

/// How long to wait for a provider.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const READ_TIMEOUT: Duration = Duration::from_secs(180);
/// 429/503/529 are retried this many times in all.
pub const MAX_ATTEMPTS: u32 = 4;
/// A server that asks us to wait longer than this is not waited for.
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);

/// A configured provider, ready to run rounds.
pub struct Provider {
    pub kind: Kind,
    pub model: String,
    base_url: String,
    api_key: Option<String>,
    key_ref: String,
    max_tokens: u32,
    stream: bool,
    http: reqwest::Client,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Provider")
            .field("kind", &self.kind)
            .field("model", &self.model)
            .field("base_url", &self.base_url)
            .field("key_ref", &self.key_ref)
            .finish()
    }
}

/// What a provider needs to run.
pub struct ProviderSettings {
    pub kind: Kind,
    pub model: String,
    pub base_url: Option<String>,
    pub api_key: Option<String>,
    /// Where the key came from, for messages (`env:OPENAI_API_KEY`, `stored`).
    pub key_ref: String,
    pub max_tokens: u32,
    /// Stream rounds with SSE (Ollama never streams: its OpenAI-compatible
    /// API does not stream tool calls reliably).
    pub stream: bool,
}

impl Provider {
    pub fn new(s: ProviderSettings) -> anyhow::Result<Provider> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("coral/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let base_url = s
            .base_url
            .unwrap_or_else(|| s.kind.default_base_url().to_string())
            .trim_end_matches('/')
            .to_string();
        Ok(Provider {
            kind: s.kind,
            stream: s.stream && s.kind != Kind::Ollama,
            model: s.model,
            base_url,
            api_key: s.api_key,
            key_ref: s.key_ref,
            max_tokens: s.max_tokens,
            http,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Runs one round: sends the history and the tools, returns the model's
    /// text and tool calls. Text is passed to `on_text` as it arrives.
    pub async fn round(
        &self,
        system: &str,
        history: &[Msg],
        tools: &[ToolSpec],
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Round, ProviderError> {
        match self.kind {
            Kind::Anthropic => {
                let body = anthropic::request(
                    &self.model,
                    self.max_tokens,
                    system,
                    history,
                    tools,
                    self.stream,
                );
                let url = format!("{}/v1/messages", self.base_url);
                let resp = self.post(&url, &body).await?;
                if self.stream {
                    anthropic::read_stream(self.kind, &url, resp, on_text).await
                } else {
                    let round = anthropic::parse_response(&read_json(self.kind, &url, resp).await?)
                        .map_err(|detail| self.malformed(&url, detail))?;
                    on_text(&round.text);
                    Ok(round)
                }
            }
            Kind::OpenAi | Kind::Ollama => {
                let body = openai::request(&self.model, system, history, tools, self.stream);
                let url = format!("{}/chat/completions", self.base_url);
                let resp = self.post(&url, &body).await?;
                if self.stream {
                    openai::read_stream(self.kind, &url, resp, on_text).await
                } else {
                    let round = openai::parse_response(&read_json(self.kind, &url, resp).await?)
                        .map_err(|detail| self.malformed(&url, detail))?;
                    on_text(&round.text);
                    Ok(round)
                }
            }
        }
    }

    fn malformed(&self, url: &str, detail: anyhow::Error) -> ProviderError {
        ProviderError::Malformed {
            provider: self.kind,
            url: url.to_string(),
            detail: detail.to_string(),
        }
    }

    /// POSTs `body`, retrying 429/503/529 (honouring `retry-after`) at most
    /// [`MAX_ATTEMPTS`] times; maps every other failure to one clear error.
    async fn post(
        &self,
        url: &str,
        body: &serde_json::Value,
    ) -> Result<reqwest::Response, ProviderError> {
        let started = std::time::Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self.http.post(url).json(body);
            req = match (self.kind, &self.api_key) {
                (Kind::Anthropic, key) => {
                    let r = req.header("anthropic-version", "2023-06-01");
                    match key {
                        Some(k) => r.header("x-api-key", k),
                        None => r,
                    }
                }
                (_, Some(k)) => req.bearer_auth(k),
                (_, None) => req,
            };
            let resp = req.send().await.map_err(|e| self.send_error(url, e))?;
            let status = resp.status().as_u16();
            if resp.status().is_success() {
                return Ok(resp);
            }
            let wait = retry_after(resp.headers());
            let message = error_message(resp).await;
            match status {
                401 | 403 => {
                    return Err(ProviderError::Unauthorized {
                        provider: self.kind,
                        status,
                        key_ref: self.key_ref.clone(),
                        message,
                    });
                }
                429 | 503 | 529 => {
                    let wait = wait.unwrap_or_else(|| backoff(attempt));
                    if attempt >= MAX_ATTEMPTS || wait > MAX_RETRY_WAIT {
                        if status == 429 {
                            return Err(ProviderError::RateLimited {
                                provider: self.kind,
                                attempts: attempt,
                                waited: started.elapsed(),
                                message,
                            });
                        }
                        return Err(ProviderError::Status {
                            provider: self.kind,
                            status,
                            url: url.to_string(),
                            message: format!("{message} (after {attempt} attempts)"),
                        });
                    }
                    tracing::debug!(
                        status,
                        attempt,
                        wait_ms = wait.as_millis() as u64,
                        "provider asked to retry"
                    );
                    tokio::time::sleep(wait).await;
                }
                _ => {
                    return Err(ProviderError::Status {
                        provider: self.kind,
                        status,
                        url: url.to_string(),
                        message,
                    });
                }
            }
        }
    }

    fn send_error(&self, url: &str, e: reqwest::Error) -> ProviderError {
        if e.is_timeout() {
            return ProviderError::Timeout {
                provider: self.kind,
                url: url.to_string(),
                timeout: if e.is_connect() {
                    CONNECT_TIMEOUT
                } else {
                    READ_TIMEOUT
                },
            };
        }
        ProviderError::Connect {
            provider: self.kind,
            base_url: self.base_url.clone(),
            reason: root_cause(&e),
        }
    }
}

/// The innermost error message (e.g. "Connection refused (os error 111)").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    let s = cur.to_string();
    if s.contains("Connection refused") {
        "connection refused".into()
    } else {
        s
    }
}

/// `retry-after-ms` (OpenAI) or `retry-after` in seconds. An HTTP date is
/// not honoured (backoff applies).
fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let get = |name: &str| h.get(name)?.to_str().ok()?.trim().parse::<f64>().ok();
    if let Some(ms) = get("retry-after-ms").filter(|v| v.is_finite() && *v >= 0.0) {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    get("retry-after")
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(Duration::from_secs_f64)
}

/// 1 s, 2 s, 4 s … with ±20 % jitter.
fn backoff(attempt: u32) -> Duration {
    let base = 1000u64 << (attempt.saturating_sub(1)).min(5);
    let jitter = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        % 400) as u64;
    Duration::from_millis(base * (800 + jitter) / 1000)
}

/// The provider's error message from an error body (OpenAI
/// `{"error":{"message"}}`, Anthropic `{"type":"error","error":{"message"}}`),
/// else the start of the body.
async fn error_message(resp: reqwest::Response) -> String {
    let reason = resp
        .status()
        .canonical_reason()
        .unwrap_or("error")
        .to_string();
    let body = match resp.text().await {
        Ok(b) => b,
        Err(_) => return reason,
    };
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
        let m = v
            .pointer("/error/message")
            .or_else(|| v.pointer("/message"))
            .or_else(|| v.get("error"))
            .and_then(|m| m.as_str());
        if let Some(m) = m {
            return one_line(m, 300);
        }
    }
    if body.trim().is_empty() {
        reason
    } else {
        one_line(&body, 200)
    }
}

/// `s` without terminal control characters (escape sequences from a
/// provider must not drive the user's terminal); newlines and tabs stay.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().all(|c| !c.is_control() || c == '\n' || c == '\t') {
        return std::borrow::Cow::Borrowed(s);
    }
    std::borrow::Cow::Owned(
        s.chars()
            .map(|c| {
                if c.is_control() && c != '\n' && c != '\t' {
                    '\u{fffd}'
                } else {
                    c
                }
            })
            .collect(),
    )
}

/// `s` on one line, at most `max` characters, without control characters.
pub fn one_line(s: &str, max: usize) -> String {
    let flat: String = printable(s)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(max + 1)
        .collect();
    if flat.chars().count() > max {
        format!("{}…", flat.chars().take(max).collect::<String>())
    } else {
        flat
    }
}

async fn read_json(
    kind: Kind,
    url: &str,
    resp: reqwest::Response,
) -> Result<serde_json::Value, ProviderError> {
    let bytes = resp.bytes().await.map_err(|e| ProviderError::Malformed {
        provider: kind,
        url: url.to_string(),
        detail: format!("the body could not be read: {}", root_cause(&e)),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ProviderError::Malformed {
        provider: kind,
        url: url.to_string(),
        detail: format!(
            "not JSON ({e}): {}",
            one_line(&String::from_utf8_lossy(&bytes), 80)
        ),
    })
}

/// Reads an SSE body event by event; `f` gets `(event name, data)`.
/// Returns when `f` says the stream is done, or fails if it ends early.
async fn for_each_event(
    kind: Kind,
    url: &str,
    resp: reqwest::Response,
    mut f: impl FnMut(Option<&str>, &str) -> anyhow::Result<bool>,
) -> Result<(), ProviderError> {
    use futures::StreamExt as _;
    let malformed = |detail: String| ProviderError::Malformed {
        provider: kind,
        url: url.to_string(),
        detail,
    };
    let is_sse = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !is_sse {
        // A proxy or server that ignored `stream: true`, or an error page.
        let v = read_json(kind, url, resp).await?;
        return Err(malformed(format!(
            "expected an event stream, got JSON: {}",
            one_line(&v.to_string(), 120)
        )));
    }
    let mut events = sse_stream::SseByteStream::new(resp.bytes_stream());
    while let Some(ev) = events.next().await {
        let ev = ev.map_err(|e| malformed(format!("the event stream broke: {e}")))?;
        let Some(data) = ev.data.as_deref() else {
            continue;
        };
        if f(ev.event.as_deref(), data).map_err(|e| malformed(e.to_string()))? {
            return Ok(());
        }
    }
    Err(malformed(
        "the event stream ended before the answer was complete".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_split_at_the_first_colon() {
        assert_eq!(
            parse_model("ollama:qwen3:8b").unwrap(),
            (Kind::Ollama, "qwen3:8b".to_string())
        );
        let err = |m: &str| parse_model(m).unwrap_err().to_string();
        assert!(err("claude").contains("provider:model-id"));
        assert!(err("gemini:x").contains("unknown provider"));
        assert!(err("openai:").contains("no model id"));
    }

    #[test]
    fn tool_arguments_that_do_not_parse_are_kept_with_the_reason() {
        let c = ToolCall::new("c1".into(), "t".into(), "{\"a\":".into());
        assert!(c.args.unwrap_err().contains("not valid JSON"));
        let c = ToolCall::new("c1".into(), "t".into(), "[1]".into());
        assert!(c.args.unwrap_err().contains("not a JSON object"));
        let c = ToolCall::new("c1".into(), "t".into(), "".into());
        assert_eq!(c.args.unwrap(), serde_json::json!({}));
        assert_eq!(c.raw_args, "{}");
    }

    #[test]
    fn retry_after_prefers_milliseconds() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", "250".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
        assert!(
            backoff(1) >= Duration::from_millis(800) && backoff(1) < Duration::from_millis(1200)
        );
        assert!(backoff(3) >= Duration::from_millis(3200));
    }

    #[test]
    fn one_line_flattens_and_cuts() {
        assert_eq!(one_line("a\n  b\tc", 10), "a b c");
        assert_eq!(one_line("x\u{1b}[2Jy", 10), "x\u{fffd}[2Jy");
        assert_eq!(printable("ok\n\tfine"), "ok\n\tfine");
        assert_eq!(one_line("abcdef", 3), "abc…");
    }
}
