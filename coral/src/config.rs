//! The one config file, `config.toml`: optional `[colony]`, `[agent]` and
//! `[ask]` tables, each typed and strict (unknown keys are errors).
//! Loaded here and nowhere else.

use crate::ask::config::AskConfig;
#[cfg(feature = "daemons")]
use coral_agent::AgentConfig;
#[cfg(feature = "daemons")]
use coral_colony::ColonyConfig;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoralConfig {
    #[cfg(feature = "daemons")]
    pub colony: Option<ColonyConfig>,
    #[cfg(feature = "daemons")]
    pub agent: Option<AgentConfig>,
    /// The CLI alone (no `daemons` feature) runs no daemon: it keeps the
    /// daemons' tables of a shared file unread, and does not check them.
    #[cfg(not(feature = "daemons"))]
    pub colony: Option<toml::Table>,
    #[cfg(not(feature = "daemons"))]
    pub agent: Option<toml::Table>,
    pub ask: Option<AskConfig>,
}

/// `$XDG_CONFIG_HOME/coral/config.toml` (or `~/.config/coral/config.toml`).
pub fn default_path() -> Option<PathBuf> {
    crate::ask::config::config_dir().map(|d| d.join("config.toml"))
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl CoralConfig {
    /// Parses and validates a config file.
    pub fn load(path: &Path) -> Result<CoralConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<CoralConfig, ConfigError> {
        let cfg: CoralConfig = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message: e.message().trim().replace('\n', " "),
            }
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        #[cfg(feature = "daemons")]
        if let Some(c) = &cfg.colony {
            c.validate().map_err(|e| invalid(e.to_string()))?;
        }
        #[cfg(feature = "daemons")]
        if let Some(a) = &cfg.agent {
            a.validate().map_err(invalid)?;
        }
        if let Some(a) = &cfg.ask {
            a.validate().map_err(|e| invalid(e.to_string()))?;
        }
        Ok(cfg)
    }

    /// The explicit file, else the default file if it exists, else defaults.
    pub fn load_or_default(explicit: Option<&Path>) -> Result<CoralConfig, ConfigError> {
        match explicit {
            Some(p) => Self::load(p),
            None => match default_path() {
                Some(p) if p.exists() => Self::load(&p),
                _ => Ok(CoralConfig::default()),
            },
        }
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ask::config::{Edit, KeyRef, apply_edit};
    use crate::ask::provider::Kind;

    #[test]
    fn unknown_keys_are_errors_with_a_location() {
        let err = CoralConfig::parse(
            Path::new("c.toml"),
            "[colony]\nlisten = \"127.0.0.1:9000\"\nlistn = 1\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("c.toml:3:1: unknown field `listn`"),
            "{err}"
        );
        assert!(!err.contains('\n'));
    }

    #[test]
    fn values_are_checked() {
        let err = CoralConfig::parse(Path::new("c.toml"), "[agent]\nservices = [\"api:abc\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("port 'abc' is not a number"), "{err}");
        let err = CoralConfig::parse(
            Path::new("c.toml"),
            "[colony]\nheartbeat_interval = \"5 parsecs\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("c.toml:2:"), "{err}");
        let ok = CoralConfig::parse(
            Path::new("c.toml"),
            "[colony]\nlisten = \"0.0.0.0:9100\"\nheartbeat_interval = \"1s\"\n[agent]\nname = \"web-1\"\nprobe_interval = \"2s\"\n",
        )
        .unwrap();
        assert_eq!(ok.colony.unwrap().listen, "0.0.0.0:9100");
        assert_eq!(ok.agent.unwrap().name.as_deref(), Some("web-1"));
    }

    #[test]
    fn ask_edits_keep_other_tables_and_comments() {
        let before = "# mine\n[colony]\nlisten = \"127.0.0.1:9000\" # keep\n";
        let after = apply_edit(
            before,
            &Edit {
                model: Some("anthropic:claude-sonnet-4-5".into()),
                provider: Some(Kind::Anthropic),
                api_key: Some(KeyRef::Env("MY_KEY".into())),
                base_url: Some("http://127.0.0.1:8080".into()),
            },
        )
        .unwrap();
        assert!(after.starts_with(before), "{after}");
        let cfg = CoralConfig::parse(Path::new("c.toml"), &after).unwrap();
        let ask = cfg.ask.unwrap();
        assert_eq!(ask.model.as_deref(), Some("anthropic:claude-sonnet-4-5"));
        assert_eq!(
            ask.key_ref(Kind::Anthropic),
            Some(KeyRef::Env("MY_KEY".into()))
        );
        assert_eq!(
            ask.key_ref(Kind::OpenAi),
            Some(KeyRef::Env("OPENAI_API_KEY".into()))
        );
        assert_eq!(ask.key_ref(Kind::Ollama), None);
        // A second edit changes only what it names.
        let again = apply_edit(
            &after,
            &Edit {
                provider: Some(Kind::Anthropic),
                api_key: Some(KeyRef::Stored),
                ..Edit::default()
            },
        )
        .unwrap();
        let ask = CoralConfig::parse(Path::new("c.toml"), &again)
            .unwrap()
            .ask
            .unwrap();
        assert_eq!(ask.key_ref(Kind::Anthropic), Some(KeyRef::Stored));
        assert_eq!(
            ask.provider(Kind::Anthropic).base_url.as_deref(),
            Some("http://127.0.0.1:8080")
        );
    }

    #[test]
    fn bad_ask_tables_are_refused() {
        let bad = |t: &str| {
            CoralConfig::parse(Path::new("c.toml"), t)
                .unwrap_err()
                .to_string()
        };
        assert!(bad("[ask]\nmodel = \"gpt-4\"\n").contains("provider:model-id"));
        assert!(bad("[ask.providers.gemini]\n").contains("unknown provider"));
        assert!(bad("[ask.providers.openai]\nbase_url = \"ftp://x\"\n").contains("http://"));
        assert!(bad("[ask.prices.\"openai:x\"]\ninput = -1\noutput = 1\n").contains(">= 0"));
        assert!(bad("[ask]\nmodle = \"x\"\n").contains("unknown field `modle`"));
    }
}
