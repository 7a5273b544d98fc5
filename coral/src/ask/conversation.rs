//! The model loop of `coral ask` (a conversation with the LLM): list the tools, send the question, run every tool call the
//! model asks for, feed the results back, until the model answers or the step
//! limit is reached.

use super::provider::{Msg, Provider, ProviderError, Round, ToolCall, ToolResult, Usage};
use crate::tools::Tools;
use serde::Serialize;
use serde_json::Value;

/// Rounds (model calls) allowed by default.
pub const DEFAULT_MAX_STEPS: u32 = 8;
/// A tool's output is cut to this many bytes before the model sees it.
pub const TOOL_OUTPUT_CAP: usize = 16 * 1024;

pub const SYSTEM_PROMPT: &str = "\
You are Coral, a debugging assistant for a distributed application. The tools \
read the application's live telemetry through its colony: services and health, \
RED metrics, the service map, traces, logs and recent changes. Ground every \
claim in tool output; call tools before answering and never guess values. \
Answer concisely, in this form: what changed, when, by how much; where the \
time goes; the likely root cause with a confidence; a recommendation. Cite the \
tool call ids you rely on. When a service got slower in its own code and no \
span or operation says which function, and coral_debug_probe is offered, probe \
its candidate functions (coral_debug_functions lists them) and cite the \
measured durations.";

pub struct Options {
    pub max_steps: u32,
    pub tool_output_cap: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            max_steps: DEFAULT_MAX_STEPS,
            tool_output_cap: TOOL_OUTPUT_CAP,
        }
    }
}

/// One tool call the answer rests on.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Evidence {
    /// The provider's call id (`call_…`, `toolu_…`).
    pub id: String,
    pub tool: String,
    pub args: Value,
    /// The round (1-based) in which the model asked for it.
    pub round: u32,
    /// False if the tool failed (or was refused); its error went to the model.
    pub ok: bool,
    /// Size of the tool's output before the cap.
    pub output_bytes: usize,
    pub truncated: bool,
    /// What the built-in analyzer read in the tool's answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// The tool error, if it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Tokens and rounds of one `coral ask`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AnswerUsage {
    pub provider: String,
    pub model: String,
    pub rounds: u32,
    #[serde(flatten)]
    pub tokens: Usage,
    /// Estimated from the price table; null if the model has no price.
    pub cost_usd: Option<f64>,
}

/// The `--json` output of `coral ask`: `{answer, root_cause, evidence, usage}`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Answer {
    /// The final answer; null if none came (see `error`).
    pub answer: Option<String>,
    /// The built-in analyzer's structured root cause (service, kind,
    /// component, confidence), for scripts; absent from LLM answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_cause: Option<crate::analyze::RootCause>,
    pub evidence: Vec<Evidence>,
    pub usage: AnswerUsage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the loop reports while it runs.
pub enum Event<'a> {
    /// Answer text as it streams in.
    Text(&'a str),
    /// A round ended; its usage is final (record it now).
    RoundDone(&'a Round),
    /// A tool call finished.
    ToolDone(&'a Evidence),
}

#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("no provider configured; run 'coral ask config'")]
    NoProvider,
    #[error("cannot list the colony's tools: {0:#}")]
    Tools(anyhow::Error),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(
        "the model gave no answer within {max_steps} rounds ({calls} tool calls made); raise --max-steps or ask a narrower question"
    )]
    StepLimit { max_steps: u32, calls: usize },
}

/// Runs the loop. `answer` is filled as it goes, so on an error it still
/// holds the evidence and usage so far.
pub async fn run<T: Tools>(
    provider: &Provider,
    tools: &T,
    question: &str,
    opts: &Options,
    answer: &mut Answer,
    observe: &mut dyn FnMut(Event<'_>),
) -> Result<(), AskError> {
    answer.usage.provider = provider.kind.name().to_string();
    answer.usage.model = provider.model.clone();
    let specs = tools.list().await.map_err(AskError::Tools)?;
    let mut history = vec![Msg::User(question.to_string())];
    for step in 1..=opts.max_steps.max(1) {
        let round = provider
            .round(SYSTEM_PROMPT, &history, &specs, &mut |t| {
                observe(Event::Text(t))
            })
            .await?;
        answer.usage.rounds += 1;
        answer.usage.tokens.add(&round.usage);
        observe(Event::RoundDone(&round));
        if round.calls.is_empty() {
            answer.answer = Some(round.text);
            return Ok(());
        }
        let results = futures::future::join_all(
            round
                .calls
                .iter()
                .map(|c| execute(tools, &specs, c, opts.tool_output_cap)),
        )
        .await;
        let mut fed = Vec::with_capacity(results.len());
        for (call, (result, mut ev)) in round.calls.iter().zip(results) {
            ev.round = step;
            observe(Event::ToolDone(&ev));
            answer.evidence.push(ev);
            debug_assert_eq!(call.id, result.call_id);
            fed.push(result);
        }
        history.push(Msg::Assistant {
            text: round.text,
            calls: round.calls,
        });
        history.push(Msg::ToolResults(fed));
    }
    Err(AskError::StepLimit {
        max_steps: opts.max_steps.max(1),
        calls: answer.evidence.len(),
    })
}

async fn execute<T: Tools>(
    tools: &T,
    specs: &[crate::tools::ToolSpec],
    call: &ToolCall,
    cap: usize,
) -> (ToolResult, Evidence) {
    let outcome = match &call.args {
        Err(why) => Err(format!("{why}; send the arguments as a JSON object")),
        Ok(_) if !specs.iter().any(|s| s.name == call.name) => {
            Err(format!("there is no tool named '{}'", call.name))
        }
        Ok(args) => tools
            .call(&call.name, args.clone())
            .await
            .map_err(|e| format!("{e:#}")),
    };
    let mut ev = Evidence {
        id: call.id.clone(),
        tool: call.name.clone(),
        args: call
            .args
            .clone()
            .unwrap_or_else(|_| Value::String(call.raw_args.clone())),
        round: 0,
        ok: outcome.is_ok(),
        output_bytes: 0,
        truncated: false,
        summary: None,
        error: None,
    };
    let (content, is_error) = match outcome {
        Ok(text) => {
            ev.output_bytes = text.len();
            let (t, cut) = cap_output(text, cap);
            ev.truncated = cut;
            (t, false)
        }
        Err(e) => {
            ev.error = Some(e.clone());
            (cap_output(e, cap).0, true)
        }
    };
    (
        ToolResult {
            call_id: call.id.clone(),
            content,
            is_error,
        },
        ev,
    )
}

/// Cuts `s` to at most `cap` bytes (on a character boundary) and says so.
pub fn cap_output(s: String, cap: usize) -> (String, bool) {
    if s.len() <= cap {
        return (s, false);
    }
    let mut end = cap;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let total = s.len();
    let mut t = s;
    t.truncate(end);
    t.push_str(&format!(
        "\n[coral: output truncated, showing {end} of {total} bytes; narrow the query]"
    ));
    (t, true)
}

#[cfg(test)]
mod tests {
    use super::super::provider::{Kind, ProviderSettings};
    use super::*;
    use crate::tools::ToolSpec;
    use std::sync::{Arc, Mutex};

    #[test]
    fn output_is_capped_on_a_character_boundary_with_a_marker() {
        let (t, cut) = cap_output("short".into(), 16);
        assert_eq!((t.as_str(), cut), ("short", false));
        let (t, cut) = cap_output("ééééé".into(), 5); // 2 bytes each
        assert!(cut);
        assert!(
            t.starts_with("éé\n[coral: output truncated, showing 4 of 10 bytes"),
            "{t}"
        );
    }

    /// A test tools source: records calls, fails one tool, returns a large
    /// output for another.
    struct TestTools {
        calls: Mutex<Vec<(String, Value)>>,
    }

    impl Tools for TestTools {
        async fn list(&self) -> anyhow::Result<Vec<ToolSpec>> {
            Ok(["services", "red", "broken"]
                .iter()
                .map(|n| ToolSpec {
                    name: n.to_string(),
                    description: format!("{n} tool"),
                    input_schema: serde_json::json!({"type": "object"}),
                })
                .collect())
        }
        async fn call(&self, name: &str, args: Value) -> anyhow::Result<String> {
            self.calls.lock().unwrap().push((name.to_string(), args));
            match name {
                "broken" => Err(anyhow::anyhow!("colony unreachable")),
                "red" => Ok("x".repeat(40_000)),
                _ => Ok(r#"{"services":["api"]}"#.into()),
            }
        }
    }

    /// A fake OpenAI server (non-streamed Chat Completions): replays
    /// `script` one response per request and keeps every request body.
    async fn fake_openai(script: Vec<Value>) -> (String, Arc<Mutex<Vec<Value>>>) {
        use axum::{Router, body::Bytes, extract::State, http::header, routing::post};
        type S = (Arc<Mutex<Vec<Value>>>, Arc<Vec<Value>>);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state: S = (seen.clone(), Arc::new(script));
        let app = Router::new()
            .route(
                "/v1/chat/completions",
                post(|State((seen, script)): State<S>, body: Bytes| async move {
                    let mut s = seen.lock().unwrap();
                    s.push(serde_json::from_slice::<Value>(&body).unwrap());
                    let reply = script[(s.len() - 1).min(script.len() - 1)].to_string();
                    ([(header::CONTENT_TYPE, "application/json")], reply)
                }),
            )
            .with_state(state);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        (url, seen)
    }

    fn completion(content: Option<&str>, calls: &[(&str, &str, &str)]) -> Value {
        let tool_calls: Vec<Value> = calls
            .iter()
            .map(|(id, name, args)| {
                serde_json::json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}})
            })
            .collect();
        let mut msg = serde_json::json!({"role": "assistant", "content": content});
        if !tool_calls.is_empty() {
            msg["tool_calls"] = Value::Array(tool_calls);
        }
        serde_json::json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": msg,
                         "finish_reason": if calls.is_empty() { "stop" } else { "tool_calls" }}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        })
    }

    fn provider(url: String) -> Provider {
        Provider::new(ProviderSettings {
            kind: Kind::OpenAi,
            model: "gpt-test".into(),
            base_url: Some(url),
            api_key: Some("sk-test".into()),
            key_ref: "env:OPENAI_API_KEY".into(),
            max_tokens: 1024,
            stream: false,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn every_call_runs_and_errors_unknown_tools_and_bad_args_go_back_to_the_model() {
        let (url, seen) = fake_openai(vec![
            completion(
                None,
                &[
                    ("c1", "services", "{}"),
                    ("c2", "broken", "{\"x\":1}"),
                    ("c3", "nope", "{}"),
                    ("c4", "services", "{oops"),
                ],
            ),
            completion(
                Some("Checking RED."),
                &[("c5", "red", "{\"service\":\"api\"}")],
            ),
            completion(Some("The api is slow."), &[]),
        ])
        .await;
        let tools = TestTools {
            calls: Mutex::new(Vec::new()),
        };
        let mut answer = Answer::default();
        let mut texts = String::new();
        run(
            &provider(url),
            &tools,
            "why?",
            &Options::default(),
            &mut answer,
            &mut |e| {
                if let Event::Text(t) = e {
                    texts.push_str(t)
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(answer.answer.as_deref(), Some("The api is slow."));
        assert_eq!(texts, "Checking RED.The api is slow.");
        // Only valid calls to known tools reached the tools source.
        let calls = tools.calls.lock().unwrap().clone();
        assert_eq!(
            calls.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
            ["services", "broken", "red"]
        );
        assert_eq!(answer.evidence.len(), 5);
        assert_eq!(answer.evidence[4].round, 2);
        assert!(answer.evidence[4].truncated && answer.evidence[4].output_bytes == 40_000);
        assert_eq!(answer.usage.rounds, 3);
        assert_eq!(answer.usage.tokens.input_tokens, 30);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        let m = seen[1]["messages"].as_array().unwrap();
        // system, user, assistant(4 calls), 4 tool messages in call order.
        assert_eq!(m.len(), 7);
        let tool_msgs: Vec<(&str, &str)> = m[3..]
            .iter()
            .map(|t| {
                (
                    t["tool_call_id"].as_str().unwrap(),
                    t["content"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(tool_msgs[0], ("c1", r#"{"services":["api"]}"#));
        assert_eq!(tool_msgs[1], ("c2", "error: colony unreachable"));
        assert!(tool_msgs[2].1.contains("no tool named 'nope'"));
        assert!(tool_msgs[3].1.contains("not valid JSON"));
        assert_eq!(m[2]["tool_calls"][3]["function"]["arguments"], "{oops");
        // The third request keeps the whole history and the capped output.
        let m = seen[2]["messages"].as_array().unwrap();
        assert_eq!(m.len(), 9);
        let red = m[8]["content"].as_str().unwrap();
        assert!(red.len() < TOOL_OUTPUT_CAP + 200 && red.contains("truncated"));
    }

    #[tokio::test]
    async fn the_step_limit_stops_a_model_that_never_answers() {
        let (url, seen) = fake_openai(vec![completion(None, &[("c", "services", "{}")])]).await;
        let tools = TestTools {
            calls: Mutex::new(Vec::new()),
        };
        let mut answer = Answer::default();
        let opts = Options {
            max_steps: 3,
            ..Options::default()
        };
        let err = run(&provider(url), &tools, "q", &opts, &mut answer, &mut |_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                AskError::StepLimit {
                    max_steps: 3,
                    calls: 3
                }
            ),
            "{err}"
        );
        assert_eq!(seen.lock().unwrap().len(), 3);
        assert_eq!(answer.usage.rounds, 3);
        assert!(answer.answer.is_none());
    }
}
