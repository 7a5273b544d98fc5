//! Anthropic Messages: `tool_use` blocks out, the results back as one user
//! message of `tool_result` blocks (`tool_use_id`), in call order.

use super::{Kind, Msg, ProviderError, Round, ToolCall, ToolSpec, Usage, for_each_event};
use anyhow::Context as _;
use serde_json::{Value, json};

pub fn request(
    model: &str,
    max_tokens: u32,
    system: &str,
    history: &[Msg],
    tools: &[ToolSpec],
    stream: bool,
) -> Value {
    let mut messages = Vec::new();
    for m in history {
        match m {
            Msg::User(text) => messages.push(json!({"role": "user", "content": text})),
            Msg::Assistant { text, calls } => {
                let mut content = Vec::new();
                if !text.is_empty() {
                    content.push(json!({"type": "text", "text": text}));
                }
                for c in calls {
                    content.push(json!({
                        "type": "tool_use", "id": c.id, "name": c.name, "input": c.args_value(),
                    }));
                }
                messages.push(json!({"role": "assistant", "content": content}));
            }
            Msg::ToolResults(results) => {
                let content: Vec<Value> = results
                    .iter()
                    .map(|r| {
                        let mut b = json!({"type": "tool_result", "tool_use_id": r.call_id, "content": r.content});
                        if r.is_error {
                            b["is_error"] = json!(true);
                        }
                        b
                    })
                    .collect();
                messages.push(json!({"role": "user", "content": content}));
            }
        }
    }
    let mut body = json!({
        "model": model,
        "max_tokens": max_tokens,
        "system": system,
        "messages": messages,
        "stream": stream,
    });
    if !tools.is_empty() {
        body["tools"] = tools
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.input_schema}))
            .collect();
    }
    body
}

fn read_usage(u: &Value, into: &mut Usage) {
    let n = |k: &str| u.get(k).and_then(Value::as_u64);
    if let Some(v) = n("input_tokens") {
        into.input_tokens = v;
    }
    if let Some(v) = n("output_tokens") {
        into.output_tokens = v;
    }
    if let Some(v) = n("cache_read_input_tokens") {
        into.cache_read_tokens = v;
    }
    if let Some(v) = n("cache_creation_input_tokens") {
        into.cache_write_tokens = v;
    }
}

/// A non-streamed `message`.
pub fn parse_response(v: &Value) -> anyhow::Result<Round> {
    if v.get("type").and_then(Value::as_str) == Some("error") {
        let m = v
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("unknown error");
        anyhow::bail!("the response is an error: {m}");
    }
    let content = v
        .get("content")
        .and_then(Value::as_array)
        .with_context(|| {
            format!(
                "no content in the response: {}",
                super::one_line(&v.to_string(), 120)
            )
        })?;
    let mut round = Round::default();
    for b in content {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => round
                .text
                .push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => {
                let id = b
                    .get("id")
                    .and_then(Value::as_str)
                    .context("a tool_use block has no id")?;
                let name = b
                    .get("name")
                    .and_then(Value::as_str)
                    .context("a tool_use block has no name")?;
                let input = b.get("input").cloned().unwrap_or(json!({}));
                round
                    .calls
                    .push(ToolCall::new(id.into(), name.into(), input.to_string()));
            }
            _ => {}
        }
    }
    if let Some(u) = v.get("usage") {
        read_usage(u, &mut round.usage);
    }
    round.stop = v
        .get("stop_reason")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    Ok(round)
}

enum Block {
    Text,
    ToolUse {
        id: String,
        name: String,
        json: String,
        start_input: Value,
    },
    Other,
}

/// Folds Messages stream events into a round.
#[derive(Default)]
pub struct StreamState {
    text: String,
    blocks: Vec<(u64, Block)>,
    usage: Usage,
    stop: String,
    started: bool,
}

impl StreamState {
    /// Takes one event's data; returns true at `message_stop`.
    pub fn feed(&mut self, data: &str, on_text: &mut dyn FnMut(&str)) -> anyhow::Result<bool> {
        let v: Value = serde_json::from_str(data).map_err(|e| {
            anyhow::anyhow!("an event is not JSON ({e}): {}", super::one_line(data, 80))
        })?;
        let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
        match v.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                self.started = true;
                if let Some(u) = v.pointer("/message/usage") {
                    read_usage(u, &mut self.usage);
                }
            }
            Some("content_block_start") => {
                let b = v
                    .get("content_block")
                    .context("content_block_start without a block")?;
                let block = match b.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        if let Some(t) = b.get("text").and_then(Value::as_str)
                            && !t.is_empty()
                        {
                            self.text.push_str(t);
                            on_text(t);
                        }
                        Block::Text
                    }
                    Some("tool_use") => Block::ToolUse {
                        id: b
                            .get("id")
                            .and_then(Value::as_str)
                            .context("a tool_use block has no id")?
                            .into(),
                        name: b
                            .get("name")
                            .and_then(Value::as_str)
                            .context("a tool_use block has no name")?
                            .into(),
                        json: String::new(),
                        start_input: b.get("input").cloned().unwrap_or(json!({})),
                    },
                    _ => Block::Other,
                };
                self.blocks.push((index, block));
            }
            Some("content_block_delta") => {
                let d = v
                    .get("delta")
                    .context("content_block_delta without a delta")?;
                let block = self
                    .blocks
                    .iter_mut()
                    .rev()
                    .find(|(i, _)| *i == index)
                    .map(|(_, b)| b)
                    .with_context(|| {
                        format!("a delta for block {index}, which was never started")
                    })?;
                match (d.get("type").and_then(Value::as_str), block) {
                    (Some("text_delta"), Block::Text) => {
                        let t = d.get("text").and_then(Value::as_str).unwrap_or("");
                        self.text.push_str(t);
                        on_text(t);
                    }
                    (Some("input_json_delta"), Block::ToolUse { json, .. }) => {
                        json.push_str(d.get("partial_json").and_then(Value::as_str).unwrap_or(""));
                    }
                    _ => {}
                }
            }
            Some("message_delta") => {
                if let Some(s) = v.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    self.stop = s.to_string();
                }
                if let Some(u) = v.get("usage") {
                    read_usage(u, &mut self.usage);
                }
            }
            Some("message_stop") => return Ok(true),
            Some("error") => {
                let m = v
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error");
                let t = v
                    .pointer("/error/type")
                    .and_then(Value::as_str)
                    .unwrap_or("error");
                anyhow::bail!("the stream reported {t}: {m}");
            }
            _ => {} // ping, content_block_stop, and event types added later
        }
        Ok(false)
    }

    pub fn finish(self) -> anyhow::Result<Round> {
        if !self.started {
            anyhow::bail!("the stream had no message_start");
        }
        let mut calls = Vec::new();
        for (_, b) in self.blocks {
            if let Block::ToolUse {
                id,
                name,
                json,
                start_input,
            } = b
            {
                let raw = if json.trim().is_empty() {
                    start_input.to_string()
                } else {
                    json
                };
                calls.push(ToolCall::new(id, name, raw));
            }
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
    fn results_go_back_as_one_user_message_of_tool_result_blocks() {
        let history = vec![
            Msg::User("q".into()),
            Msg::Assistant {
                text: "Checking.".into(),
                calls: vec![
                    ToolCall::new("toolu_1".into(), "a".into(), "{\"s\":\"api\"}".into()),
                    ToolCall::new("toolu_2".into(), "b".into(), "{}".into()),
                ],
            },
            Msg::ToolResults(vec![
                ToolResult {
                    call_id: "toolu_1".into(),
                    content: "1".into(),
                    is_error: false,
                },
                ToolResult {
                    call_id: "toolu_2".into(),
                    content: "down".into(),
                    is_error: true,
                },
            ]),
        ];
        let body = request("claude-x", 1024, "sys", &history, &[], true);
        assert_eq!(body["system"], "sys");
        assert_eq!(body["max_tokens"], 1024);
        let m = body["messages"].as_array().unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(
            m[1]["content"][0],
            json!({"type": "text", "text": "Checking."})
        );
        assert_eq!(m[1]["content"][1]["input"], json!({"s": "api"}));
        assert_eq!(m[2]["role"], "user");
        assert_eq!(
            m[2]["content"],
            json!([
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "1"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "down", "is_error": true},
            ])
        );
    }

    #[test]
    fn stream_events_build_text_tool_uses_and_usage() {
        let mut st = StreamState::default();
        let mut seen = String::new();
        let mut on = |t: &str| seen.push_str(t);
        let events = [
            r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude-x","stop_reason":null,"usage":{"input_tokens":50,"output_tokens":1,"cache_read_input_tokens":10}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Let me "}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"look."}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_9","name":"red","input":{}}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"service\":"}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" \"api\"}"}}"#,
            r#"{"type":"content_block_stop","index":1}"#,
            r#"{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_10","name":"map","input":{}}}"#,
            r#"{"type":"content_block_stop","index":2}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":33}}"#,
        ];
        for e in events {
            assert!(!st.feed(e, &mut on).unwrap());
        }
        assert!(st.feed(r#"{"type":"message_stop"}"#, &mut on).unwrap());
        let r = st.finish().unwrap();
        assert_eq!(seen, "Let me look.");
        assert_eq!(r.calls[0].args, Ok(json!({"service": "api"})));
        assert_eq!(r.calls[1].args, Ok(json!({})));
        assert_eq!(r.stop, "tool_use");
        assert_eq!(
            r.usage,
            Usage {
                input_tokens: 50,
                output_tokens: 33,
                cache_read_tokens: 10,
                cache_write_tokens: 0
            }
        );
        let mut st = StreamState::default();
        let err = st
            .feed(
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
                &mut |_| {},
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("overloaded_error: Overloaded"), "{err}");
    }
}
