//! `coral config validate`, and loading `config.toml` for the commands
//! that read it (usage errors, exit 64, when it does not parse).

use super::output::out;
use crate::config::CoralConfig;
use coral_proto::exit::Usage;
use std::path::PathBuf;

#[cfg(feature = "daemons")]
pub(super) fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<CoralConfig> {
    CoralConfig::load_or_default(path).map_err(|e| Usage(e.to_string()).into())
}

pub(super) fn validate(file: Option<PathBuf>) -> anyhow::Result<()> {
    let path = match file.or_else(crate::config::default_path) {
        Some(p) => p,
        None => {
            return Err(Usage("no config file given and no config directory known".into()).into());
        }
    };
    let cfg = CoralConfig::load(&path).map_err(|e| Usage(e.to_string()))?;
    let mut parts = Vec::new();
    if cfg.colony.is_some() {
        parts.push("[colony]");
    }
    if cfg.agent.is_some() {
        parts.push("[agent]");
    }
    if cfg.ask.is_some() {
        parts.push("[ask]");
    }
    let what = if parts.is_empty() {
        "no tables, all defaults".to_string()
    } else {
        parts.join(" and ")
    };
    out(&format!("{}: ok ({what})\n", path.display()))
}
