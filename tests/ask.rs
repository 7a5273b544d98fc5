//! Issue 7 (`coral ask`): the real `coral` binary against fake LLM providers
//! that are real HTTP servers speaking OpenAI's Chat Completions and
//! Anthropic's Messages wire formats (JSON and SSE streaming). They replay
//! scripted multi-round tool-calling conversations and keep every request,
//! so the tests check what the client sent each round. Tools come from a
//! `--tools-file` (the colony's MCP gateway is tested on its own).

mod common;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use axum::response::Response;
use common::*;
use serde_json::{Value, json};
use std::io::BufReader;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// The fake provider

#[derive(Clone)]
enum Reply {
    /// A JSON body with a status and extra headers.
    Json(u16, Value, Vec<(&'static str, String)>),
    /// Raw text with a status and content type.
    Raw(u16, &'static str, String),
    /// An SSE stream: these event blocks, sent in pieces; with `pause`, the
    /// blocks from that index on are held back for that long.
    Sse(Vec<String>, Option<(usize, Duration)>),
}

#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: HeaderMap,
    body: Value,
}

struct Fake {
    /// host:port
    addr: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    _rt: tokio::runtime::Runtime,
}

impl Fake {
    /// Serves `script` one reply per request (then 500s), on every path.
    fn start(script: Vec<Reply>) -> Fake {
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
        let script = Arc::new(script);
        let s2 = seen.clone();
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
                let seen = s2.clone();
                let script = script.clone();
                async move {
                    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let n = {
                        let mut s = seen.lock().unwrap();
                        s.push(Seen {
                            path: uri.path().to_string(),
                            headers,
                            body,
                        });
                        s.len() - 1
                    };
                    match script.get(n).cloned() {
                        Some(r) => respond(r),
                        None => respond(Reply::Raw(500, "text/plain", "script exhausted".into())),
                    }
                }
            },
        );
        rt.spawn(async move { axum::serve(listener, app).await });
        Fake {
            addr,
            seen,
            _rt: rt,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn openai_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    fn anthropic_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn respond(r: Reply) -> Response {
    match r {
        Reply::Json(status, v, hs) => {
            let mut b = Response::builder()
                .status(status)
                .header(header::CONTENT_TYPE, "application/json");
            for (k, v) in hs {
                b = b.header(k, v);
            }
            b.body(Body::from(v.to_string())).unwrap()
        }
        Reply::Raw(status, ct, text) => Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, ct)
            .body(Body::from(text))
            .unwrap(),
        Reply::Sse(blocks, pause) => {
            // Pieces of 37 bytes, so events and even UTF-8 sequences are
            // split across reads as on a real network.
            let (now, later) = match pause {
                Some((i, _)) => (blocks[..i].concat(), blocks[i..].concat()),
                None => (blocks.concat(), String::new()),
            };
            let wait = pause.map(|p| p.1).unwrap_or_default();
            let chunks = |s: String| -> Vec<Result<Bytes, std::io::Error>> {
                s.into_bytes()
                    .chunks(37)
                    .map(|c| Ok(Bytes::copy_from_slice(c)))
                    .collect()
            };
            let first = futures::stream::iter(chunks(now));
            let rest = chunks(later);
            let delayed = futures::stream::once(async move {
                tokio::time::sleep(wait).await;
                futures::stream::iter(rest)
            });
            use futures::StreamExt as _;
            let stream = first.chain(delayed.flatten());
            Response::builder()
                .status(200)
                .header(header::CONTENT_TYPE, "text/event-stream")
                .header(header::CACHE_CONTROL, "no-cache")
                .body(Body::from_stream(stream))
                .unwrap()
        }
    }
}

fn sse(event: Option<&str>, data: &Value) -> String {
    match event {
        Some(e) => format!("event: {e}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    }
}

// --- OpenAI Chat Completions ---------------------------------------------

fn openai_chunk(delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": "chatcmpl-cask", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": "gpt-4.1-2025-04-14", "system_fingerprint": "fp_cask",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
    })
}

/// A streamed round: text in pieces and/or tool calls (arguments sent in two
/// fragments each), then the usage chunk and `[DONE]`.
fn openai_stream(text: &[&str], calls: &[(&str, &str, Value)], usage: (u64, u64)) -> Reply {
    let mut blocks = vec![sse(
        None,
        &openai_chunk(json!({"role": "assistant", "content": ""}), None),
    )];
    for t in text {
        blocks.push(sse(None, &openai_chunk(json!({"content": t}), None)));
    }
    for (i, (id, name, args)) in calls.iter().enumerate() {
        let args = args.to_string();
        let (a, b) = args.split_at(args.len() / 2);
        blocks.push(sse(
            None,
            &openai_chunk(
                json!({"tool_calls": [{"index": i, "id": id, "type": "function",
                                       "function": {"name": name, "arguments": ""}}]}),
                None,
            ),
        ));
        for part in [a, b] {
            blocks.push(sse(
                None,
                &openai_chunk(
                    json!({"tool_calls": [{"index": i, "function": {"arguments": part}}]}),
                    None,
                ),
            ));
        }
    }
    let finish = if calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    blocks.push(sse(None, &openai_chunk(json!({}), Some(finish))));
    blocks.push(sse(
        None,
        &json!({
            "id": "chatcmpl-cask", "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": "gpt-4.1-2025-04-14", "choices": [],
            "usage": {"prompt_tokens": usage.0, "completion_tokens": usage.1,
                      "total_tokens": usage.0 + usage.1,
                      "prompt_tokens_details": {"cached_tokens": 0}},
        }),
    ));
    blocks.push("data: [DONE]\n\n".into());
    Reply::Sse(blocks, None)
}

/// A non-streamed `chat.completion` (what Ollama answers when tools are used).
fn openai_json(text: Option<&str>, calls: &[(&str, &str, Value)], usage: (u64, u64)) -> Reply {
    let mut msg = json!({"role": "assistant", "content": text});
    if !calls.is_empty() {
        msg["tool_calls"] = calls
            .iter()
            .map(|(id, name, args)| {
                json!({"id": id, "type": "function",
                       "function": {"name": name, "arguments": args.to_string()}})
            })
            .collect();
    }
    Reply::Json(
        200,
        json!({
            "id": "chatcmpl-cask", "object": "chat.completion", "created": 1_700_000_000,
            "model": "qwen3:8b",
            "choices": [{"index": 0, "message": msg,
                         "finish_reason": if calls.is_empty() { "stop" } else { "tool_calls" }}],
            "usage": {"prompt_tokens": usage.0, "completion_tokens": usage.1,
                      "total_tokens": usage.0 + usage.1},
        }),
        vec![],
    )
}

fn openai_error(status: u16, kind: &str, message: &str) -> Reply {
    Reply::Json(
        status,
        json!({"error": {"message": message, "type": kind, "param": null, "code": null}}),
        vec![],
    )
}

// --- Anthropic Messages --------------------------------------------------

/// A streamed Messages round, event by event as the API sends them.
fn anthropic_stream(text: &[&str], calls: &[(&str, &str, Value)], usage: (u64, u64)) -> Reply {
    let mut b = vec![sse(
        Some("message_start"),
        &json!({"type": "message_start", "message": {
            "id": "msg_cask", "type": "message", "role": "assistant", "content": [],
            "model": "claude-sonnet-4-5-20250929", "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": usage.0, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0, "output_tokens": 1}}}),
    )];
    let mut index = 0;
    if !text.is_empty() {
        b.push(sse(
            Some("content_block_start"),
            &json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
        ));
        b.push(sse(Some("ping"), &json!({"type": "ping"})));
        for t in text {
            b.push(sse(
                Some("content_block_delta"),
                &json!({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "text_delta", "text": t}}),
            ));
        }
        b.push(sse(
            Some("content_block_stop"),
            &json!({"type": "content_block_stop", "index": 0}),
        ));
        index = 1;
    }
    for (id, name, input) in calls {
        b.push(sse(
            Some("content_block_start"),
            &json!({"type": "content_block_start", "index": index,
                    "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
        ));
        let s = input.to_string();
        let (x, y) = s.split_at(s.len() / 2);
        for part in ["", x, y] {
            b.push(sse(
                Some("content_block_delta"),
                &json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": part}}),
            ));
        }
        b.push(sse(
            Some("content_block_stop"),
            &json!({"type": "content_block_stop", "index": index}),
        ));
        index += 1;
    }
    let stop = if calls.is_empty() {
        "end_turn"
    } else {
        "tool_use"
    };
    b.push(sse(
        Some("message_delta"),
        &json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
                "usage": {"output_tokens": usage.1}}),
    ));
    b.push(sse(Some("message_stop"), &json!({"type": "message_stop"})));
    Reply::Sse(b, None)
}

// ---------------------------------------------------------------------------
// Helpers

const TOOLS: &str = r#"{
  "tools": [
    {"name": "coral_services", "description": "Services and their health.",
     "input_schema": {"type": "object", "properties": {}},
     "output": {"services": [{"name": "api", "health": "up"}, {"name": "db", "health": "up"}]}},
    {"name": "coral_red_metrics", "description": "RED metrics against a baseline.",
     "input_schema": {"type": "object", "properties": {"service": {"type": "string"}},
                      "required": ["service"]},
     "output": {"service": "api", "p99_ms": 2400, "baseline_p99_ms": 40}},
    {"name": "coral_traces", "description": "Trace search.",
     "input_schema": {"type": "object", "properties": {"service": {"type": "string"}}},
     "error": "the colony is not reachable"}
  ],
  "log": "LOG"
}"#;

struct AskEnv {
    env: Env,
    tools: String,
    log: std::path::PathBuf,
}

impl AskEnv {
    fn new() -> AskEnv {
        let env = Env::new("");
        let log = env.root().join("cask-calls.jsonl");
        let tools = env.root().join("cask-tools.json");
        std::fs::write(&tools, TOOLS.replace("LOG", log.to_str().unwrap())).unwrap();
        AskEnv {
            tools: tools.to_str().unwrap().to_string(),
            log,
            env,
        }
    }

    /// `coral ask ... --tools-file T`, with the test keys in the environment.
    fn ask(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["ask"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--tools-file", &self.tools]);
        self.env
            .command(&all)
            .env("CASK_OPENAI_KEY", "sk-cask-openai-secret")
            .output()
            .unwrap()
    }

    fn configure(&self, args: &[&str]) -> String {
        let mut all = vec!["ask", "config"];
        all.extend_from_slice(args);
        self.env.ok(&all)
    }

    fn calls(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn messages(s: &Seen) -> Vec<Value> {
    s.body["messages"].as_array().unwrap().clone()
}

// ---------------------------------------------------------------------------
// Tests

#[test]
fn openai_multi_round_tool_calls_are_run_paired_by_id_and_the_answer_streams() {
    let fake = Fake::start(vec![
        // Round 1: two parallel calls.
        openai_stream(
            &[],
            &[
                ("call_svc", "coral_services", json!({})),
                ("call_red", "coral_red_metrics", json!({"service": "api"})),
            ],
            (300, 40),
        ),
        // Round 2: some narration and one call to a tool that fails.
        openai_stream(
            &["Latency is up 60×; ", "checking traces."],
            &[("call_tr", "coral_traces", json!({"service": "api"}))],
            (500, 30),
        ),
        // Round 3: the answer, in pieces.
        openai_stream(
            &[
                "The api's p99 rose ",
                "from 40 ms to 2.4 s. ",
                "Root cause: a slow query.",
            ],
            &[],
            (700, 60),
        ),
    ]);
    let a = AskEnv::new();
    a.configure(&[
        "--model",
        "openai:gpt-4.1",
        "--api-key-env",
        "CASK_OPENAI_KEY",
        "--base-url",
        &fake.openai_url(),
    ]);
    let out = a.ask(&["What's wrong with the API?"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(
        text.contains(
            "checking traces.\nThe api's p99 rose from 40 ms to 2.4 s. Root cause: a slow query."
        ),
        "{text}"
    );
    for id in ["call_svc", "call_red", "call_tr"] {
        assert!(
            text.contains(&format!("[{id}]")),
            "evidence lists {id}: {text}"
        );
    }
    assert!(text.contains("Evidence (3 tool calls)"), "{text}");
    assert!(
        text.contains("3 rounds, 1500 input + 130 output tokens"),
        "{text}"
    );
    assert!(!text.contains("secret") && !stderr(&out).contains("secret"));

    // Every call was executed once, with the model's arguments.
    let calls = a.calls();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert_eq!(
        calls[1],
        json!({"name": "coral_red_metrics", "args": {"service": "api"}})
    );
    assert_eq!(calls[2]["name"], "coral_traces");

    let seen = fake.seen();
    assert_eq!(seen.len(), 3);
    for s in &seen {
        assert_eq!(s.path, "/v1/chat/completions");
        assert_eq!(s.headers["authorization"], "Bearer sk-cask-openai-secret");
        assert_eq!(s.body["model"], "gpt-4.1");
        assert_eq!(s.body["stream"], true);
        assert_eq!(s.body["stream_options"]["include_usage"], true);
        let names: Vec<&str> = s.body["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["function"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["coral_services", "coral_red_metrics", "coral_traces"]
        );
        assert_eq!(
            s.body["tools"][1]["function"]["parameters"]["required"][0],
            "service"
        );
    }
    // Round 2 carries the assistant's calls, then one tool message per call
    // id, in order, with the tool's output.
    let m = messages(&seen[1]);
    assert_eq!(m.len(), 5, "{m:#?}");
    assert_eq!(m[0]["role"], "system");
    assert_eq!(
        m[1],
        json!({"role": "user", "content": "What's wrong with the API?"})
    );
    assert_eq!(m[2]["role"], "assistant");
    assert_eq!(m[2]["tool_calls"][0]["id"], "call_svc");
    assert_eq!(
        m[2]["tool_calls"][1]["function"]["arguments"],
        "{\"service\":\"api\"}"
    );
    assert_eq!(m[3]["role"], "tool");
    assert_eq!(m[3]["tool_call_id"], "call_svc");
    let svc: Value = serde_json::from_str(m[3]["content"].as_str().unwrap()).unwrap();
    assert_eq!(svc["services"][0]["name"], "api");
    assert_eq!(m[4]["tool_call_id"], "call_red");
    assert!(
        m[4]["content"]
            .as_str()
            .unwrap()
            .contains("\"p99_ms\":2400")
    );
    // Round 3 keeps the whole history, including the narration and the
    // failed tool's error.
    let m = messages(&seen[2]);
    assert_eq!(m.len(), 7);
    assert_eq!(m[5]["content"], "Latency is up 60×; checking traces.");
    assert_eq!(m[5]["tool_calls"][0]["id"], "call_tr");
    assert_eq!(m[6]["tool_call_id"], "call_tr");
    assert_eq!(m[6]["content"], "error: the colony is not reachable");
}

#[test]
fn anthropic_tool_use_results_go_back_as_tool_result_blocks_and_json_has_answer_evidence_usage() {
    let fake = Fake::start(vec![
        anthropic_stream(
            &["I'll check the services and the api's metrics."],
            &[
                ("toolu_01A", "coral_services", json!({})),
                ("toolu_01B", "coral_red_metrics", json!({"service": "api"})),
            ],
            (1200, 80),
        ),
        anthropic_stream(
            &[],
            &[("toolu_02C", "coral_traces", json!({"service": "api"}))],
            (1500, 40),
        ),
        anthropic_stream(
            &["Missing index on ", "orders.user_id (confidence: high)."],
            &[],
            (1800, 90),
        ),
    ]);
    let a = AskEnv::new();
    // The key is stored in a 0600 file; only "stored" goes in the config.
    let mut c = a
        .env
        .command(&[
            "ask",
            "config",
            "--model",
            "anthropic:claude-sonnet-4-5",
            "--api-key-stdin",
            "--base-url",
            &fake.anthropic_url(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    c.stdin
        .take()
        .unwrap()
        .write_all(b"sk-ant-cask-secret\n")
        .unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).contains("cask-secret"));
    let key_file = a.env.config_dir().join("keys/anthropic.key");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let config = std::fs::read_to_string(a.env.config_dir().join("config.toml")).unwrap();
    assert!(
        config.contains("api_key = \"stored\"") && !config.contains("cask-secret"),
        "{config}"
    );
    let shown = a.env.json(&["ask", "config", "--show", "--json"]);
    assert_eq!(shown["providers"]["anthropic"]["api_key"], "stored");
    assert_eq!(shown["providers"]["anthropic"]["key_available"], true);
    assert!(!shown.to_string().contains("cask-secret"));

    let out = a.ask(&["--json", "Why", "is", "checkout", "slow?"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["answer"],
        "Missing index on orders.user_id (confidence: high)."
    );
    let ids: Vec<&str> = v["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["toolu_01A", "toolu_01B", "toolu_02C"]);
    assert_eq!(v["evidence"][1]["args"], json!({"service": "api"}));
    assert_eq!(v["evidence"][1]["round"], 1);
    assert_eq!(v["evidence"][2]["ok"], false);
    assert_eq!(v["evidence"][2]["error"], "the colony is not reachable");
    assert_eq!(v["usage"]["provider"], "anthropic");
    assert_eq!(v["usage"]["rounds"], 3);
    assert_eq!(v["usage"]["input_tokens"], 4500);
    assert_eq!(v["usage"]["output_tokens"], 210);
    // 4500 × $3/M + 210 × $15/M
    let cost = v["usage"]["cost_usd"].as_f64().unwrap();
    assert!(
        (cost - (4500.0 * 3.0 + 210.0 * 15.0) / 1e6).abs() < 1e-9,
        "{cost}"
    );
    assert_eq!(a.calls().len(), 3);

    let seen = fake.seen();
    assert_eq!(seen.len(), 3);
    for s in &seen {
        assert_eq!(s.path, "/v1/messages");
        assert_eq!(s.headers["x-api-key"], "sk-ant-cask-secret");
        assert_eq!(s.headers["anthropic-version"], "2023-06-01");
        assert!(s.headers.get("authorization").is_none());
        assert_eq!(s.body["model"], "claude-sonnet-4-5");
        assert_eq!(s.body["stream"], true);
        assert!(s.body["max_tokens"].as_u64().unwrap() > 0);
        assert!(s.body["system"].as_str().unwrap().contains("Coral"));
        assert_eq!(s.body["tools"][0]["name"], "coral_services");
        assert_eq!(s.body["tools"][1]["input_schema"]["required"][0], "service");
    }
    let m = messages(&seen[1]);
    assert_eq!(m.len(), 3, "{m:#?}");
    assert_eq!(
        m[0],
        json!({"role": "user", "content": "Why is checkout slow?"})
    );
    assert_eq!(m[1]["role"], "assistant");
    assert_eq!(
        m[1]["content"][0],
        json!({"type": "text", "text": "I'll check the services and the api's metrics."})
    );
    assert_eq!(
        m[1]["content"][2],
        json!({"type": "tool_use", "id": "toolu_01B", "name": "coral_red_metrics",
               "input": {"service": "api"}})
    );
    // One user message holding a tool_result per tool_use, in order.
    assert_eq!(m[2]["role"], "user");
    let results = m[2]["content"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["type"], "tool_result");
    assert_eq!(results[0]["tool_use_id"], "toolu_01A");
    assert_eq!(results[1]["tool_use_id"], "toolu_01B");
    assert!(
        results[1]["content"]
            .as_str()
            .unwrap()
            .contains("baseline_p99_ms")
    );
    assert!(results[1].get("is_error").is_none());
    let m = messages(&seen[2]);
    assert_eq!(m.len(), 5);
    assert_eq!(m[3]["content"][0]["id"], "toolu_02C");
    assert_eq!(
        m[4]["content"][0],
        json!({"type": "tool_result", "tool_use_id": "toolu_02C",
               "content": "the colony is not reachable", "is_error": true})
    );
}

#[test]
fn the_answer_is_printed_while_it_streams() {
    let Reply::Sse(blocks, _) = anthropic_stream(&["FIRST-PART ", "second part."], &[], (10, 5))
    else {
        unreachable!()
    };
    // Hold back everything after the first text delta for 2 s.
    let first_delta = blocks
        .iter()
        .position(|b| b.contains("FIRST-PART"))
        .unwrap();
    let fake = Fake::start(vec![Reply::Sse(
        blocks,
        Some((first_delta + 1, Duration::from_millis(2000))),
    )]);
    let a = AskEnv::new();
    a.configure(&[
        "--model",
        "anthropic:claude-haiku-4-5",
        "--api-key-env",
        "CASK_ANTHROPIC_KEY",
        "--base-url",
        &fake.anthropic_url(),
    ]);
    let mut child = a
        .env
        .command(&["ask", "hello", "--tools-file", &a.tools])
        .env("CASK_ANTHROPIC_KEY", "k")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut buf = Vec::new();
    // The first piece arrives without a newline: read byte-wise until it shows.
    let mut byte = [0u8; 1];
    use std::io::Read as _;
    while !String::from_utf8_lossy(&buf).contains("FIRST-PART") {
        assert_eq!(reader.read(&mut byte).unwrap(), 1, "stdout closed early");
        buf.push(byte[0]);
    }
    let first_seen = started.elapsed();
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    let total = started.elapsed();
    assert!(status.success());
    assert!(rest.starts_with(" second part."), "{rest}");
    assert!(
        total - first_seen >= Duration::from_millis(1200),
        "the first part showed at {first_seen:?}, the process ended at {total:?}"
    );
}

#[test]
fn ollama_uses_its_openai_api_without_streaming_and_without_a_key() {
    let fake = Fake::start(vec![
        openai_json(None, &[("call_o1", "coral_services", json!({}))], (50, 10)),
        openai_json(Some("All services are up."), &[], (80, 12)),
    ]);
    let a = AskEnv::new();
    a.configure(&[
        "--model",
        "ollama:qwen3:8b",
        "--base-url",
        &fake.openai_url(),
    ]);
    let out = a.ask(&["Are there any issues?"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("All services are up.\n"),
        "{}",
        stdout(&out)
    );
    let seen = fake.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.path, "/v1/chat/completions");
        assert_eq!(s.body["model"], "qwen3:8b");
        assert_eq!(s.body["stream"], false);
        assert!(s.headers.get("authorization").is_none());
    }
    assert_eq!(messages(&seen[1])[3]["tool_call_id"], "call_o1");
    // Local models are free.
    let cost = a.env.json(&["ask", "cost", "--json"]);
    assert_eq!(cost["rows"][0]["model"], "ollama:qwen3:8b");
    assert_eq!(cost["rows"][0]["cost_usd"], 0.0);
}

#[test]
fn the_step_limit_stops_the_loop_with_a_clear_error() {
    let round = |i: usize| {
        openai_stream(
            &[],
            &[(
                Box::leak(format!("call_{i}").into_boxed_str()),
                "coral_services",
                json!({}),
            )],
            (100, 10),
        )
    };
    let fake = Fake::start((0..5).map(round).collect());
    let a = AskEnv::new();
    a.configure(&[
        "--model",
        "openai:gpt-4.1",
        "--api-key-env",
        "CASK_OPENAI_KEY",
        "--base-url",
        &fake.openai_url(),
    ]);
    let out = a.ask(&["loop forever", "--max-steps", "2"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(
            "error: the model gave no answer within 2 rounds (2 tool calls made); raise --max-steps"
        ),
        "{err}"
    );
    // The evidence gathered so far is still shown.
    assert!(
        err.contains("[call_0]") && err.contains("[call_1]"),
        "{err}"
    );
    assert_eq!(fake.seen().len(), 2);
    assert_eq!(a.calls().len(), 2);
    // --json still gives the schema, with the error.
    let out = a.ask(&["loop forever", "--max-steps", "1", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["answer"], Value::Null);
    assert_eq!(v["evidence"][0]["id"], "call_2");
    assert!(v["error"].as_str().unwrap().contains("within 1 rounds"));
}

#[test]
fn a_rejected_key_names_the_key_reference_and_is_not_retried() {
    let fake = Fake::start(vec![openai_error(
        401,
        "invalid_request_error",
        "Incorrect API key provided: sk-cask-*****cret.",
    )]);
    let a = AskEnv::new();
    a.configure(&[
        "--model",
        "openai:gpt-4.1",
        "--api-key-env",
        "CASK_OPENAI_KEY",
        "--base-url",
        &fake.openai_url(),
    ]);
    let out = a.ask(&["q"]);
    assert_eq!(out.status.code(), Some(64));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("openai rejected the API key (401)")
            && err.contains("check the key reference env:CASK_OPENAI_KEY"),
        "{err}"
    );
    assert_eq!(fake.seen().len(), 1);

    // An unset variable is caught before anything is sent.
    let out = a
        .env
        .command(&["ask", "q", "--tools-file", &a.tools])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(
        stderr(&out).contains("the API key reference env:CASK_OPENAI_KEY is not set"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fake.seen().len(), 1);
}

#[test]
fn rate_limits_are_retried_honouring_retry_after_then_fail_clearly() {
    let limited = |h: (&'static str, &str)| {
        Reply::Json(
            429,
            json!({"error": {"message": "Rate limit reached for gpt-4.1", "type": "requests"}}),
            vec![(h.0, h.1.to_string())],
        )
    };
    let fake = Fake::start(vec![
        limited(("retry-after", "1")),
        limited(("retry-after-ms", "300")),
        openai_stream(&["fine now"], &[], (10, 2)),
    ]);
    let a = AskEnv::new();
    a.configure(&[
        "--model",
        "openai:gpt-4.1",
        "--api-key-env",
        "CASK_OPENAI_KEY",
        "--base-url",
        &fake.openai_url(),
    ]);
    let t = Instant::now();
    let out = a.ask(&["q"]);
    let took = t.elapsed();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("fine now"));
    assert_eq!(fake.seen().len(), 3);
    assert!(
        took >= Duration::from_millis(1300),
        "waited as told: {took:?}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    // The same request body each time.
    let seen = fake.seen();
    assert_eq!(seen[0].body, seen[2].body);

    // Always limited: bounded attempts, then one clear line.
    let fake = Fake::start(vec![limited(("retry-after", "0")); 10]);
    a.configure(&["--provider", "openai", "--base-url", &fake.openai_url()]);
    let out = a.ask(&["q"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("openai is rate limiting this key (429) after 4 attempts")
            && err.contains("Rate limit reached for gpt-4.1"),
        "{err}"
    );
    assert_eq!(fake.seen().len(), 4);

    // A server that asks for too long a wait is not waited for.
    let fake = Fake::start(vec![limited(("retry-after", "3600"))]);
    a.configure(&["--provider", "openai", "--base-url", &fake.openai_url()]);
    let t = Instant::now();
    let out = a.ask(&["q"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(
        stderr(&out).contains("after 1 attempts"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn server_errors_malformed_responses_and_refused_connections_say_what_to_check() {
    let a = AskEnv::new();
    let point = |url: &str| {
        a.configure(&[
            "--model",
            "openai:gpt-4.1",
            "--api-key-env",
            "CASK_OPENAI_KEY",
            "--base-url",
            url,
        ])
    };

    let fake = Fake::start(vec![openai_error(
        500,
        "server_error",
        "The server had an error",
    )]);
    point(&fake.openai_url());
    let out = a.ask(&["q"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("openai failed with HTTP 500 at http://")
            && err.contains("/v1/chat/completions: The server had an error"),
        "{err}"
    );
    assert_eq!(fake.seen().len(), 1, "500 is not retried");

    // A 200 whose body is not JSON (non-streamed).
    let fake = Fake::start(vec![Reply::Raw(
        200,
        "application/json",
        "{\"choices\": [".into(),
    )]);
    point(&fake.openai_url());
    let out = a.ask(&["q", "--no-stream"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("openai sent a malformed response from http://") && err.contains("not JSON"),
        "{err}"
    );

    // An event stream whose data is not JSON.
    let fake = Fake::start(vec![Reply::Sse(
        vec![
            sse(
                None,
                &openai_chunk(json!({"role": "assistant", "content": "Hi"}), None),
            ),
            "data: {\"choices\": [{\"delta\": \n\n".into(),
        ],
        None,
    )]);
    point(&fake.openai_url());
    let out = a.ask(&["q"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("an event is not JSON"),
        "{}",
        stderr(&out)
    );

    // A stream that stops before [DONE].
    let fake = Fake::start(vec![Reply::Sse(
        vec![sse(None, &openai_chunk(json!({"content": "Hi"}), None))],
        None,
    )]);
    point(&fake.openai_url());
    let out = a.ask(&["q"]);
    assert!(
        stderr(&out).contains("ended before the answer was complete"),
        "{}",
        stderr(&out)
    );

    // Anthropic's in-stream error event.
    let fake = Fake::start(vec![Reply::Sse(
        vec![sse(
            Some("error"),
            &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        )],
        None,
    )]);
    a.configure(&[
        "--model",
        "anthropic:claude-sonnet-4-5",
        "--api-key-env",
        "CASK_OPENAI_KEY",
        "--base-url",
        &fake.anthropic_url(),
    ]);
    let out = a.ask(&["q"]);
    assert!(
        stderr(&out).contains("overloaded_error: Overloaded"),
        "{}",
        stderr(&out)
    );

    // Nobody listening.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/v1");
    point(&url);
    let out = a.ask(&["q"]);
    assert_eq!(out.status.code(), Some(69));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "cannot reach openai at {url}: connection refused (check the base URL"
        )),
        "{err}"
    );
}

#[test]
fn usage_lands_in_ask_cost_per_day_and_model_with_price_overrides() {
    let fake = Fake::start(vec![
        openai_stream(&[], &[("call_a", "coral_services", json!({}))], (1000, 100)),
        openai_stream(&["answer one"], &[], (2000, 200)),
        openai_stream(&["answer two"], &[], (500, 50)),
    ]);
    let a = AskEnv::new();
    a.configure(&[
        "--model",
        "openai:gpt-4.1",
        "--api-key-env",
        "CASK_OPENAI_KEY",
        "--base-url",
        &fake.openai_url(),
    ]);
    assert!(a.ask(&["first"]).status.success());
    assert!(
        a.ask(&["second", "--model", "openai:cask-unpriced"])
            .status
            .success()
    );

    let v = a.env.json(&["ask", "cost", "--json"]);
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{v:#}");
    let gpt = rows
        .iter()
        .find(|r| r["model"] == "openai:gpt-4.1")
        .unwrap();
    assert_eq!(gpt["asks"], 1);
    assert_eq!(gpt["rounds"], 2);
    assert_eq!(gpt["input_tokens"], 3000);
    assert_eq!(gpt["output_tokens"], 300);
    let c = gpt["cost_usd"].as_f64().unwrap();
    assert!(
        (c - (3000.0 * 2.0 + 300.0 * 8.0) / 1e6).abs() < 1e-12,
        "{c}"
    );
    let other = rows
        .iter()
        .find(|r| r["model"] == "openai:cask-unpriced")
        .unwrap();
    assert_eq!(other["cost_usd"], Value::Null);
    assert_eq!(v["unpriced_models"], json!(["openai:cask-unpriced"]));
    assert_eq!(v["total_tokens"]["input_tokens"], 3500);
    let today = gpt["day"].as_str().unwrap();
    assert_eq!(today.len(), 10);

    let text = a.env.ok(&["ask", "cost"]);
    assert!(
        text.contains("openai:gpt-4.1") && text.contains("$0.0084"),
        "{text}"
    );
    assert!(text.contains("No price for openai:cask-unpriced"), "{text}");

    // A price in the config file applies.
    let path = a.env.config_dir().join("config.toml");
    let mut cfg = std::fs::read_to_string(&path).unwrap();
    cfg.push_str("\n[ask.prices.\"openai:cask-unpriced\"]\ninput = 10.0\noutput = 20.0\n");
    std::fs::write(&path, cfg).unwrap();
    let v = a.env.json(&["ask", "cost", "--json", "--since", "1h"]);
    assert_eq!(v["unpriced_models"], json!([]));
    let other = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["model"] == "openai:cask-unpriced")
        .unwrap()
        .clone();
    let c = other["cost_usd"].as_f64().unwrap();
    assert!(
        (c - (500.0 * 10.0 + 50.0 * 20.0) / 1e6).abs() < 1e-12,
        "{c}"
    );
    // The SQLite file is in the data dir.
    assert!(a.env.root().join("data/coral/ask.db").exists());
}

#[test]
fn without_a_provider_ask_points_to_ask_config_and_config_checks_its_input() {
    let a = AskEnv::new();
    // No provider: the built-in analyzer answers, from the colony, which
    // is not running here.
    let out = a.ask(&["What's wrong?"]);
    assert_eq!(out.status.code(), Some(69));
    assert!(
        stderr(&out).contains("is 'coral colony start' running?"),
        "{}",
        stderr(&out)
    );
    let out = a.env.run(&["ask"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("give a question"));

    // No terminal and no flags: nothing to prompt on.
    let out = a.env.run(&["ask", "config"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        stderr(&out).contains("no terminal to ask on"),
        "{}",
        stderr(&out)
    );
    // A key pasted where a variable name belongs is refused and not echoed.
    let out = a.env.run(&[
        "ask",
        "config",
        "--provider",
        "openai",
        "--api-key-env",
        "sk-proj-cask-pasted-secret",
    ]);
    assert_eq!(out.status.code(), Some(64));
    assert!(!stderr(&out).contains("pasted-secret"), "{}", stderr(&out));
    let out = a.env.run(&["ask", "config", "--model", "gemini:pro"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("unknown provider 'gemini'"));
    let out = a.env.run(&["ask", "config", "--api-key-env", "X"]);
    assert!(stderr(&out).contains("say which provider"));
    // Nothing was written by the refused edits; the config still validates.
    a.env.ok(&["config", "validate"]);
    let shown = a.env.json(&["ask", "config", "--show", "--json"]);
    assert_eq!(shown["model"], Value::Null);

    // A literal key written into the file by hand is refused at load.
    let path = a.env.config_dir().join("config.toml");
    std::fs::write(
        &path,
        "[ask.providers.openai]\napi_key = \"sk-live-cask-handwritten\"\n",
    )
    .unwrap();
    let out = a.env.run(&["ask", "config", "--show"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("must be a reference") && !stderr(&out).contains("handwritten"));
}

/// On a terminal with no flags, `coral ask config` prompts (run under
/// util-linux `script`, which gives it a pseudo-terminal); a pasted key is
/// read without echo and stored 0600.
#[test]
fn config_prompts_on_a_terminal_and_stores_a_pasted_key() {
    let has_script = std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_script {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI: 'script' (util-linux) is missing; packaging/dev/deps.sh installs it (bsdutils)"
        );
        eprintln!("skipping: 'script' (util-linux) is not installed");
        return;
    }
    let a = AskEnv::new();
    let run = |input: &str| {
        let mut c = std::process::Command::new("script");
        c.args(["-qec", &format!("{CORAL} ask config"), "/dev/null"])
            .env("XDG_CONFIG_HOME", a.env.root().join("config"))
            .env("XDG_DATA_HOME", a.env.root().join("data"))
            .env("XDG_RUNTIME_DIR", a.env.runtime())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stdout(&out));
        stdout(&out)
    };
    // Provider, model (default), '-' to paste, the key, base URL (default).
    let screen = run("anthropic\n\n-\nsk-ant-cask-typed\n\n");
    assert!(screen.contains("Model id [claude-sonnet-4-5]"), "{screen}");
    assert!(screen.contains("Key (not shown)"), "{screen}");
    assert!(
        screen.contains("anthropic: key stored (available)"),
        "{screen}"
    );
    let key = a.env.config_dir().join("keys/anthropic.key");
    assert_eq!(
        std::fs::read_to_string(&key).unwrap(),
        "sk-ant-cask-typed\n"
    );
    let shown = a.env.json(&["ask", "config", "--show", "--json"]);
    assert_eq!(shown["model"], "anthropic:claude-sonnet-4-5");
    assert_eq!(shown["providers"]["anthropic"]["api_key"], "stored");
    assert_eq!(shown["providers"]["anthropic"]["base_url_is_default"], true);

    // Again, for Ollama: no key question; the current values are offered.
    let screen = run("ollama\nllama3.2\nhttp://127.0.0.1:11434/v1\n");
    assert!(!screen.contains("Key variable"), "{screen}");
    let shown = a.env.json(&["ask", "config", "--show", "--json"]);
    assert_eq!(shown["model"], "ollama:llama3.2");
    assert_eq!(
        shown["providers"]["ollama"]["base_url"],
        "http://127.0.0.1:11434/v1"
    );
    assert_eq!(shown["providers"]["anthropic"]["api_key"], "stored");
}

#[test]
fn the_model_calls_the_real_colony_tools_over_mcp() {
    // A real colony and agent; the model's tool calls go to the colony's
    // MCP gateway, and their real output is fed back to the model.
    let env = Env::new(FAST_CONFIG);
    env.start_colony();
    env.start_agent();
    let fake = Fake::start(vec![
        openai_stream(
            &[],
            &[
                ("call_svc", "coral_services", json!({})),
                ("call_bad", "coral_red_metrics", json!({"window": "soon"})),
            ],
            (300, 40),
        ),
        openai_stream(&["All agents are online."], &[], (400, 10)),
    ]);
    env.ok(&[
        "ask",
        "config",
        "--model",
        "openai:gpt-4.1",
        "--api-key-env",
        "CASK_OPENAI_KEY",
        "--base-url",
        &fake.openai_url(),
    ]);
    let out = env
        .command(&["ask", "Are there any issues?", "--json"])
        .env("CASK_OPENAI_KEY", "sk-cask-openai-secret")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["answer"], "All agents are online.");
    // The colony's real tool list went to the model.
    let seen = fake.seen();
    let tools: Vec<&str> = seen[0].body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert!(tools.contains(&"coral_hotspots"), "{tools:?}");
    // Round 2 carries the real outputs, paired by id: the agent as the
    // colony sees it, and the tool's error for the bad window.
    let msgs = messages(&seen[1]);
    let result = |id: &str| {
        msgs.iter()
            .find(|m| m["role"] == "tool" && m["tool_call_id"] == id)
            .map(|m| m["content"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("no result for {id}: {msgs:?}"))
    };
    assert!(
        result("call_svc").contains("\"test-host\""),
        "{}",
        result("call_svc")
    );
    assert!(
        result("call_bad").contains("'soon' is not a duration"),
        "{}",
        result("call_bad")
    );
    let ev = v["evidence"].as_array().unwrap();
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[1]["ok"], false);
}
