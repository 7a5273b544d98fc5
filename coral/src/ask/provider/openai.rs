//! OpenAI Chat Completions (also Ollama's OpenAI-compatible API):
//! `tools` in, `tool_calls` out, results as `role: tool` messages with the
//! call's `tool_call_id`.

use super::{Kind, Msg, ProviderError, Round, ToolCall, ToolSpec, Usage, for_each_event};
use anyhow::Context as _;
use serde_json::{Value, json};

pub fn request(
    model: &str,
    system: &str,
    history: &[Msg],
    tools: &[ToolSpec],
    stream: bool,
) -> Value {
    let mut messages = vec![json!({"role": "system", "content": system})];
    for m in history {
        match m {
            Msg::User(text) => messages.push(json!({"role": "user", "content": text})),
            Msg::Assistant { text, calls } => {
                let mut msg = json!({
                    "role": "assistant",
                    "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) },
                });
                if !calls.is_empty() {
                    msg["tool_calls"] = calls
                        .iter()
                        .map(|c| {
                            json!({
                                "id": c.id,
                                "type": "function",
                                "function": {"name": c.name, "arguments": c.raw_args},
                            })
                        })
                        .collect();
                }
                messages.push(msg);
            }
            Msg::ToolResults(results) => {
                for r in results {
                    let content = if r.is_error {
                        format!("error: {}", r.content)
                    } else {
                        r.content.clone()
                    };
                    messages.push(
                        json!({"role": "tool", "tool_call_id": r.call_id, "content": content}),
                    );
                }
            }
        }
    }
    let mut body = json!({"model": model, "messages": messages, "stream": stream});
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    if !tools.is_empty() {
        body["tools"] = tools
            .iter()
            .map(|t| {
                json!({
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.input_schema},
                })
            })
            .collect();
    }
    body
}

fn usage(u: &Value) -> Usage {
    let n = |p: &str| u.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    let cached = n("/prompt_tokens_details/cached_tokens");
    Usage {
        input_tokens: n("/prompt_tokens").saturating_sub(cached),
        output_tokens: n("/completion_tokens"),
        cache_read_tokens: cached,
        cache_write_tokens: 0,
    }
}

/// A non-streamed `chat.completion`.
pub fn parse_response(v: &Value) -> anyhow::Result<Round> {
    let choice = v.pointer("/choices/0").with_context(|| {
        format!(
            "no choices in the response: {}",
            super::one_line(&v.to_string(), 120)
        )
    })?;
    let msg = choice.get("message").context("the choice has no message")?;
    let text = msg
        .get("content")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let mut calls = Vec::new();
    if let Some(tcs) = msg.get("tool_calls").and_then(Value::as_array) {
        for tc in tcs {
            let id = tc
                .get("id")
                .and_then(Value::as_str)
                .context("a tool call has no id")?;
            let name = tc
                .pointer("/function/name")
                .and_then(Value::as_str)
                .context("a tool call has no function name")?;
            let args = match tc.pointer("/function/arguments") {
                Some(Value::String(s)) => s.clone(),
                Some(v @ Value::Object(_)) => v.to_string(),
                _ => String::new(),
            };
            calls.push(ToolCall::new(id.into(), name.into(), args));
        }
    }
    Ok(Round {
        text,
        calls,
        usage: v.get("usage").map(usage).unwrap_or_default(),
        stop: choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
    })
}

#[derive(Default)]
struct PartialCall {
    id: String,
    name: String,
    args: String,
}

/// Folds `chat.completion.chunk` events into a round.
#[derive(Default)]
pub struct StreamState {
    text: String,
    calls: Vec<PartialCall>,
    usage: Usage,
    stop: String,
}

impl StreamState {
    /// Takes one `data:` payload; returns true at `[DONE]`.
    pub fn feed(&mut self, data: &str, on_text: &mut dyn FnMut(&str)) -> anyhow::Result<bool> {
        if data.trim() == "[DONE]" {
            return Ok(true);
        }
        let v: Value = serde_json::from_str(data).map_err(|e| {
            anyhow::anyhow!("an event is not JSON ({e}): {}", super::one_line(data, 80))
        })?;
        if let Some(err) = v.get("error") {
            let m = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("unknown error");
            anyhow::bail!("the stream reported an error: {m}");
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = usage(u);
        }
        let Some(choice) = v.pointer("/choices/0") else {
            return Ok(false);
        };
        if let Some(delta) = choice.get("delta") {
            if let Some(t) = delta.get("content").and_then(Value::as_str)
                && !t.is_empty()
            {
                self.text.push_str(t);
                on_text(t);
            }
            for tc in delta
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let idx = tc
                    .get("index")
                    .and_then(Value::as_u64)
                    .unwrap_or(self.calls.len() as u64) as usize;
                if idx > self.calls.len() + 64 {
                    anyhow::bail!("a tool call index {idx} out of order");
                }
                while self.calls.len() <= idx {
                    self.calls.push(PartialCall::default());
                }
                let c = &mut self.calls[idx];
                if let Some(id) = tc.get("id").and_then(Value::as_str) {
                    c.id = id.to_string();
                }
                if let Some(n) = tc.pointer("/function/name").and_then(Value::as_str) {
                    c.name.push_str(n);
                }
                if let Some(a) = tc.pointer("/function/arguments").and_then(Value::as_str) {
                    c.args.push_str(a);
                }
            }
        }
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop = f.to_string();
        }
        Ok(false)
    }

    pub fn finish(self) -> anyhow::Result<Round> {
        let mut calls = Vec::new();
        for c in self.calls {
            if c.id.is_empty() || c.name.is_empty() {
                anyhow::bail!("a streamed tool call has no id or no name");
            }
            calls.push(ToolCall::new(c.id, c.name, c.args));
        }
        Ok(Round {
            text: self.text,
            calls,
            usage: self.usage,
            stop: self.stop,
        })
    }
}

pub async fn read_stream(
    kind: Kind,
    url: &str,
    resp: reqwest::Response,
    on_text: &mut dyn FnMut(&str),
) -> Result<Round, ProviderError> {
    let mut st = StreamState::default();
    for_each_event(kind, url, resp, |_, data| st.feed(data, on_text)).await?;
    st.finish().map_err(|detail| ProviderError::Malformed {
        provider: kind,
        url: url.to_string(),
        detail: detail.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::ToolResult;
    use super::*;

    #[test]
    fn history_pairs_each_result_with_its_call_id() {
        let call = |id: &str, raw: &str| ToolCall::new(id.into(), "svc".into(), raw.into());
        let history = vec![
            Msg::User("why slow?".into()),
            Msg::Assistant {
                text: String::new(),
                calls: vec![call("call_1", "{\"a\":1}"), call("call_2", "{bad")],
            },
            Msg::ToolResults(vec![
                ToolResult {
                    call_id: "call_1".into(),
                    content: "{\"ok\":true}".into(),
                    is_error: false,
                },
                ToolResult {
                    call_id: "call_2".into(),
                    content: "bad args".into(),
                    is_error: true,
                },
            ]),
        ];
        let tools = vec![ToolSpec {
            name: "svc".into(),
            description: "d".into(),
            input_schema: json!({"type": "object"}),
        }];
        let body = request("gpt-x", "sys", &history, &tools, true);
        let m = &body["messages"];
        assert_eq!(m[0]["role"], "system");
        assert_eq!(m[2]["content"], Value::Null);
        assert_eq!(m[2]["tool_calls"][1]["function"]["arguments"], "{bad");
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_call_id": "call_1", "content": "{\"ok\":true}"})
        );
        assert_eq!(m[4]["tool_call_id"], "call_2");
        assert_eq!(m[4]["content"], "error: bad args");
        assert_eq!(body["tools"][0]["function"]["parameters"]["type"], "object");
        assert_eq!(body["stream_options"]["include_usage"], true);
        let body = request("gpt-x", "sys", &history, &[], false);
        assert!(body.get("tools").is_none() && body.get("stream_options").is_none());
    }

    #[test]
    fn streamed_tool_call_fragments_are_joined_by_index() {
        let mut st = StreamState::default();
        let mut seen = String::new();
        let mut on = |t: &str| seen.push_str(t);
        for d in [
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":"Look"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"ing"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"a","arguments":""}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"c2","type":"function","function":{"name":"b","arguments":"{}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"x\":"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"2}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":100,"completion_tokens":7,"prompt_tokens_details":{"cached_tokens":40}}}"#,
        ] {
            assert!(!st.feed(d, &mut on).unwrap());
        }
        assert!(st.feed("[DONE]", &mut on).unwrap());
        let r = st.finish().unwrap();
        assert_eq!(seen, "Looking");
        assert_eq!(r.calls.len(), 2);
        assert_eq!(r.calls[0].args, Ok(json!({"x": 2})));
        assert_eq!(r.calls[1].id, "c2");
        assert_eq!(r.stop, "tool_calls");
        assert_eq!(
            r.usage,
            Usage {
                input_tokens: 60,
                output_tokens: 7,
                cache_read_tokens: 40,
                cache_write_tokens: 0
            }
        );
        let mut st = StreamState::default();
        assert!(
            st.feed("{not json", &mut |_| {})
                .unwrap_err()
                .to_string()
                .contains("not JSON")
        );
    }
}
