//! The `[ask]` table of `config.toml`, API key references, and the edits
//! `coral ask config` makes.
//!
//! ```toml
//! [ask]
//! model = "anthropic:claude-sonnet-4-5"   # provider:model-id
//! max_steps = 8
//! [ask.providers.anthropic]
//! api_key = "env:ANTHROPIC_API_KEY"       # or "stored": keys/anthropic.key, 0600
//! base_url = "https://api.anthropic.com"
//! [ask.prices."openai:gpt-4.1"]           # USD per million tokens
//! input = 2.0
//! output = 8.0
//! ```
//!
//! `crate::config` reads the file (this module does not import it); this
//! module types the table and writes
//! edits to it (format-preserving, validated before the file is replaced).
//! A key is never written to `config.toml` and never printed.

use super::provider::{Kind, parse_model};
use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AskConfig {
    /// The default model, `provider:model-id`.
    pub model: Option<String>,
    /// Model rounds per question (default 8).
    pub max_steps: Option<u32>,
    /// Anthropic's required `max_tokens` per round (default 4096).
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Price overrides, by `provider:model-id` prefix.
    #[serde(default)]
    pub prices: BTreeMap<String, Price>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// `env:NAME` or `stored`.
    pub api_key: Option<String>,
    pub base_url: Option<String>,
}

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// Cached input read (default: the input price).
    pub cache_read: Option<f64>,
    /// Cache writes (default: the input price).
    pub cache_write: Option<f64>,
}

/// Where an API key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    Env(String),
    /// In `<config dir>/keys/<provider>.key`, mode 0600.
    Stored,
}

/// An `api_key` value that is not a reference; it keeps only the start of
/// what may be a pasted key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "api_key must be a reference, 'env:NAME' or 'stored' (got '{shown}'); a key itself does not go in the config: use 'coral ask config --api-key-stdin'"
)]
pub struct NotAKeyRef {
    shown: String,
}

impl KeyRef {
    pub fn parse(s: &str) -> Result<KeyRef, NotAKeyRef> {
        if s == "stored" {
            return Ok(KeyRef::Stored);
        }
        match s.strip_prefix("env:") {
            Some(name) if valid_env_name(name) => Ok(KeyRef::Env(name.to_string())),
            _ => Err(NotAKeyRef { shown: redact(s) }),
        }
    }
}

impl std::fmt::Display for KeyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyRef::Env(n) => write!(f, "env:{n}"),
            KeyRef::Stored => f.write_str("stored"),
        }
    }
}

/// Shows only the start of something that may be a pasted key.
fn redact(s: &str) -> String {
    if s.len() > 8 {
        format!("{}…", s.chars().take(4).collect::<String>())
    } else {
        s.to_string()
    }
}

pub fn valid_env_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

fn check_base_url(u: &str) -> anyhow::Result<()> {
    let url =
        reqwest::Url::parse(u).map_err(|e| anyhow::anyhow!("base_url '{u}' is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        anyhow::bail!("base_url '{u}' must be an http:// or https:// URL");
    }
    Ok(())
}

impl AskConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(m) = &self.model {
            parse_model(m).map_err(|e| anyhow::anyhow!("ask.model: {e}"))?;
        }
        if self.max_steps == Some(0) || self.max_steps.is_some_and(|s| s > 100) {
            anyhow::bail!("ask.max_steps must be between 1 and 100");
        }
        if self.max_tokens == Some(0) {
            anyhow::bail!("ask.max_tokens must be at least 1");
        }
        for (name, p) in &self.providers {
            if Kind::parse(name).is_none() {
                anyhow::bail!(
                    "ask.providers.{name}: unknown provider (known: anthropic, openai, ollama)"
                );
            }
            if let Some(k) = &p.api_key {
                KeyRef::parse(k).map_err(|e| anyhow::anyhow!("ask.providers.{name}.{e}"))?;
            }
            if let Some(u) = &p.base_url {
                check_base_url(u).map_err(|e| anyhow::anyhow!("ask.providers.{name}.{e}"))?;
            }
        }
        for (model, p) in &self.prices {
            let (kind, _) = model.split_once(':').with_context(|| {
                format!("ask.prices.\"{model}\": the key must be provider:model-id")
            })?;
            if Kind::parse(kind).is_none() {
                anyhow::bail!("ask.prices.\"{model}\": unknown provider '{kind}'");
            }
            let all = [Some(p.input), Some(p.output), p.cache_read, p.cache_write];
            if all.iter().flatten().any(|v| !v.is_finite() || *v < 0.0) {
                anyhow::bail!("ask.prices.\"{model}\": prices must be numbers >= 0");
            }
        }
        Ok(())
    }

    pub fn provider(&self, kind: Kind) -> ProviderConfig {
        self.providers.get(kind.name()).cloned().unwrap_or_default()
    }

    /// The configured key reference, else the provider's usual variable
    /// (`env:OPENAI_API_KEY`, `env:ANTHROPIC_API_KEY`); None for Ollama
    /// without a key.
    pub fn key_ref(&self, kind: Kind) -> Option<KeyRef> {
        match self.provider(kind).api_key {
            Some(k) => KeyRef::parse(&k).ok(),
            None => kind.default_key_env().map(|n| KeyRef::Env(n.into())),
        }
    }
}

/// `$XDG_CONFIG_HOME/coral` (or `~/.config/coral`): `config.toml` and the
/// stored keys (`keys/`).
pub fn config_dir() -> Option<PathBuf> {
    dirs::config_dir().map(|d| d.join("coral"))
}

/// The file holding a stored key.
pub fn key_file(kind: Kind) -> Option<PathBuf> {
    config_dir().map(|d| d.join("keys").join(format!("{}.key", kind.name())))
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "the API key reference {0} is not set in the environment (export it, or run 'coral ask config')"
    )]
    EnvUnset(KeyRef),
    #[error(
        "cannot read the stored {kind} key {path}: {reason} (run 'coral ask config --api-key-stdin')"
    )]
    Stored {
        kind: Kind,
        path: PathBuf,
        reason: String,
    },
    #[error("no configuration directory is known (set XDG_CONFIG_HOME or HOME)")]
    NoDir,
}

/// Reads the key a reference points at.
pub fn resolve_key(kind: Kind, r: &KeyRef) -> Result<String, KeyError> {
    match r {
        KeyRef::Env(name) => std::env::var(name)
            .ok()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| KeyError::EnvUnset(r.clone())),
        KeyRef::Stored => {
            use std::os::unix::fs::PermissionsExt;
            let path = key_file(kind).ok_or(KeyError::NoDir)?;
            let err = |reason: String| KeyError::Stored {
                kind,
                path: path.clone(),
                reason,
            };
            let meta = std::fs::metadata(&path).map_err(|e| err(e.to_string()))?;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(err(format!(
                    "its mode is {:o}; other users may read it (chmod 600 it)",
                    meta.permissions().mode() & 0o777
                )));
            }
            let key = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
            let key = key.trim().to_string();
            if key.is_empty() {
                return Err(err("it is empty".into()));
            }
            Ok(key)
        }
    }
}

/// Whether a reference currently yields a key (for `--show`).
pub fn key_available(kind: Kind, r: &KeyRef) -> bool {
    resolve_key(kind, r).is_ok()
}

/// Writes a key to `keys/<provider>.key` with mode 0600 (directory 0700).
pub fn store_key(kind: Kind, key: &str) -> anyhow::Result<PathBuf> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
    let key = key.trim();
    if key.is_empty() {
        anyhow::bail!("the key is empty");
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        anyhow::bail!("the key contains spaces or control characters; paste only the key");
    }
    let path = key_file(kind).ok_or(KeyError::NoDir)?;
    let dir = path.parent().expect("key file has a parent");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let tmp = dir.join(format!(".{}.key.tmp", kind.name()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(key.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// What `coral ask config` changes. `None` leaves a value as it is.
#[derive(Debug, Default)]
pub struct Edit {
    pub model: Option<String>,
    pub provider: Option<Kind>,
    pub api_key: Option<KeyRef>,
    pub base_url: Option<String>,
}

/// Applies `edit` to the `[ask]` table of `text` (keeping everything else,
/// comments included) and returns the new text.
pub fn apply_edit(text: &str, edit: &Edit) -> anyhow::Result<String> {
    use toml_edit::{DocumentMut, Item, Table, value};
    let mut doc: DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
        anyhow::anyhow!("{}", e.to_string().trim().replace('\n', " "))
    })?;
    let ask = doc
        .entry("ask")
        .or_insert_with(|| Item::Table(Table::new()))
        .as_table_mut()
        .context("'ask' in the config is not a table")?;
    if let Some(m) = &edit.model {
        ask["model"] = value(m.as_str());
    }
    if edit.api_key.is_some() || edit.base_url.is_some() {
        let kind = edit
            .provider
            .context("a key or base URL needs a provider")?;
        let providers = ask
            .entry("providers")
            .or_insert_with(|| {
                let mut t = Table::new();
                t.set_implicit(true);
                Item::Table(t)
            })
            .as_table_mut()
            .context("'ask.providers' in the config is not a table")?;
        let p = providers
            .entry(kind.name())
            .or_insert_with(|| Item::Table(Table::new()))
            .as_table_mut()
            .with_context(|| format!("'ask.providers.{kind}' in the config is not a table"))?;
        if let Some(k) = &edit.api_key {
            p["api_key"] = value(k.to_string());
        }
        if let Some(u) = &edit.base_url {
            check_base_url(u)?;
            p["base_url"] = value(u.as_str());
        }
    }
    let mut text = doc.to_string();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// Replaces `path` with `text` atomically (mode 0600 for a new file; the
/// directory is created 0700).
pub fn write_config(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
    let dir = path
        .parent()
        .ok_or_else(|| anyhow::anyhow!("{} has no directory", path.display()))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0o600);
    let tmp = dir.join(".config.toml.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_keys_are_refused_without_echoing_the_key() {
        let err = KeyRef::parse("sk-ant-api03-secretsecret")
            .unwrap_err()
            .to_string();
        assert!(err.contains("'sk-a…'") && !err.contains("secret"), "{err}");
        assert!(KeyRef::parse("env:1BAD").is_err());
    }
}
