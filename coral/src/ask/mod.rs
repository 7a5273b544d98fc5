//! `coral ask`: the user's own LLM answers a question with the colony's tools.
//!
//! The loop (`conversation`) runs on the workstation. It talks to one provider
//! (`provider`: OpenAI, Anthropic, Ollama) and runs the model's tool calls
//! through a [`Tools`] source (the colony's MCP gateway; `crate::tools::file`
//! for tests). Usage is recorded per round (`cost`). With no provider configured,
//! [`builtin_answer`] answers instead.

pub mod config;
pub mod conversation;
pub mod cost;
pub mod provider;

pub use crate::tools::{ToolSpec, Tools};
pub use conversation::{Answer, AskError};

use config::{AskConfig, KeyRef};
use provider::{ProviderSettings, parse_model};

/// Anthropic's `max_tokens` when the config does not say.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// The answer when no provider is configured: the built-in analyzer
/// (`crate::analyze`), through the same colony tools a model would use.
pub async fn builtin_answer(question: &str) -> anyhow::Result<Answer> {
    let tools = crate::mcp::McpTools::connect().await?;
    let a = crate::analyze::analyze(&tools, question).await?;
    let rounds = a.evidence.len() as u32;
    Ok(Answer {
        answer: Some(a.answer),
        root_cause: a.root_cause,
        evidence: a
            .evidence
            .into_iter()
            .map(|e| {
                let error = e.summary.strip_prefix("error: ").map(str::to_string);
                conversation::Evidence {
                    id: e.id,
                    tool: e.tool,
                    args: e.args,
                    round: 1,
                    ok: error.is_none(),
                    output_bytes: e.bytes,
                    truncated: false,
                    summary: error.is_none().then_some(e.summary),
                    error,
                }
            })
            .collect(),
        usage: conversation::AnswerUsage {
            provider: "builtin".into(),
            model: "analyzer".into(),
            rounds,
            tokens: Default::default(),
            cost_usd: Some(0.0),
        },
        error: None,
    })
}

/// Why a provider cannot be set up (all are usage errors).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Model(#[from] provider::ModelError),
    #[error(transparent)]
    Key(#[from] config::KeyError),
}

/// The provider to use: `--model` if given, else `ask.model`; None means
/// no provider is configured.
pub fn provider_settings(
    cfg: &AskConfig,
    model_flag: Option<&str>,
    stream: bool,
) -> Result<Option<ProviderSettings>, SetupError> {
    let Some(model) = model_flag.or(cfg.model.as_deref()) else {
        return Ok(None);
    };
    let (kind, model) = parse_model(model).map_err(SetupError::Model)?;
    let p = cfg.provider(kind);
    let key_ref = cfg.key_ref(kind);
    let api_key = match &key_ref {
        // Ollama needs no key; a configured one is sent if it resolves.
        Some(r) if kind.needs_key() || p.api_key.is_some() => Some(config::resolve_key(kind, r)?),
        _ => None,
    };
    Ok(Some(ProviderSettings {
        kind,
        model,
        base_url: p.base_url,
        api_key,
        key_ref: key_ref
            .as_ref()
            .map(KeyRef::to_string)
            .unwrap_or_else(|| "(none)".into()),
        max_tokens: cfg.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        stream,
    }))
}
