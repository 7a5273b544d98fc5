//! Tokens per ask on the LLM path (issue 15): a fake provider speaking
//! OpenAI's Chat Completions wire format (streamed, as `openai:` models
//! are) replays a fixed tool sequence — the calls the built-in analyzer
//! made on the same case, one per round, then a final answer — while the
//! real `coral ask` runs its loop against the colony's real MCP tools. The
//! requests `coral ask` sent are kept and counted with a real tokenizer
//! (tiktoken's o200k_base, the encoding of OpenAI's GPT-4o and GPT-4.1
//! families; its data is embedded in the crate).

use axum::body::{Body, Bytes};
use axum::response::Response;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The tool calls of the fixed sequence: (name, arguments).
pub type Script = Vec<(String, Value)>;

pub struct Fake {
    /// host:port
    pub addr: String,
    seen: Arc<Mutex<Vec<Value>>>,
    _rt: tokio::runtime::Runtime,
}

fn chunk(delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": "chatcmpl-eval", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": "gpt-4.1-2025-04-14",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
    })
}

/// One streamed round: a tool call, or the final text.
fn round(call: Option<(usize, &str, &Value)>, text: &str) -> String {
    let mut blocks = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    let finish = match call {
        Some((i, name, args)) => {
            blocks.push(chunk(
                json!({"tool_calls": [{"index": 0, "id": format!("call_{i}"), "type": "function",
                                       "function": {"name": name, "arguments": args.to_string()}}]}),
                None,
            ));
            "tool_calls"
        }
        None => {
            blocks.push(chunk(json!({"content": text}), None));
            "stop"
        }
    };
    blocks.push(chunk(json!({}), Some(finish)));
    blocks.push(json!({
        "id": "chatcmpl-eval", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": "gpt-4.1-2025-04-14", "choices": [],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }));
    let mut out: String = blocks.iter().map(|b| format!("data: {b}\n\n")).collect();
    out.push_str("data: [DONE]\n\n");
    out
}

impl Fake {
    /// Serves the script: request n gets call n, the one after the last
    /// call gets `answer`.
    pub fn start(script: Script, answer: String) -> Fake {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let script = Arc::new((script, answer));
        let app = axum::Router::new().fallback(move |body: Bytes| {
            let seen = s2.clone();
            let script = script.clone();
            async move {
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let n = {
                    let mut s = seen.lock().unwrap();
                    s.push(body);
                    s.len() - 1
                };
                let (calls, answer) = &*script;
                let sse = match calls.get(n) {
                    Some((name, args)) => round(Some((n, name, args)), ""),
                    None => round(None, answer),
                };
                Response::builder()
                    .status(200)
                    .header("content-type", "text/event-stream")
                    .body(Body::from(sse))
                    .unwrap()
            }
        });
        rt.spawn(async move { axum::serve(listener, app).await });
        Fake {
            addr,
            seen,
            _rt: rt,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The request bodies `coral ask` sent.
    pub fn seen(&self) -> Vec<Value> {
        self.seen.lock().unwrap().clone()
    }
}

fn bpe() -> &'static tiktoken_rs::CoreBPE {
    static BPE: OnceLock<tiktoken_rs::CoreBPE> = OnceLock::new();
    BPE.get_or_init(|| tiktoken_rs::o200k_base().expect("o200k_base is embedded"))
}

/// Tokens of `text`; memoized, since every request repeats the tool
/// definitions and the conversation so far.
fn tokens(text: &str) -> usize {
    static SEEN: OnceLock<Mutex<HashMap<String, usize>>> = OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    if let Some(n) = seen.lock().unwrap().get(text) {
        return *n;
    }
    let n = bpe().encode_ordinary(text).len();
    let mut m = seen.lock().unwrap();
    if m.len() > 10_000 {
        m.clear();
    }
    m.insert(text.to_string(), n);
    n
}

/// Prompt tokens of one Chat Completions request, counted as OpenAI's
/// guide counts them: each message's role, content and tool calls (name
/// and arguments) plus 3 tokens of framing per message and 3 to prime
/// the reply, and the tool definitions as their JSON text (the provider
/// renders them in its own format, of about the same size).
pub fn request_tokens(body: &Value) -> usize {
    let mut n = 3;
    for m in body["messages"].as_array().into_iter().flatten() {
        n += 3 + tokens(m["role"].as_str().unwrap_or(""));
        if let Some(c) = m["content"].as_str() {
            n += tokens(c);
        }
        for c in m["tool_calls"].as_array().into_iter().flatten() {
            n += tokens(c["function"]["name"].as_str().unwrap_or(""))
                + tokens(c["function"]["arguments"].as_str().unwrap_or(""));
        }
        if let Some(id) = m["tool_call_id"].as_str() {
            n += tokens(id);
        }
    }
    if let Some(t) = body.get("tools") {
        n += tokens(&t.to_string());
    }
    n
}
