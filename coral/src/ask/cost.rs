//! Token usage of `coral ask`, recorded per model round in SQLite
//! (`$XDG_DATA_HOME/coral/ask.db`), and its estimated cost from a price
//! table (built in, overridable in `[ask.prices]`).

use super::config::Price;
use super::provider::{Kind, Usage};
use rusqlite::params;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// USD per million tokens: (provider:model prefix, input, output, cache
/// read, cache write). The longest matching prefix wins. List prices as
/// published by the vendors in 2025; override them in `[ask.prices]`.
const BUILTIN_PRICES: &[(&str, f64, f64, f64, f64)] = &[
    ("anthropic:claude-opus-4-5", 5.0, 25.0, 0.5, 6.25),
    ("anthropic:claude-opus-4", 15.0, 75.0, 1.5, 18.75),
    ("anthropic:claude-sonnet-4", 3.0, 15.0, 0.3, 3.75),
    ("anthropic:claude-3-7-sonnet", 3.0, 15.0, 0.3, 3.75),
    ("anthropic:claude-haiku-4-5", 1.0, 5.0, 0.1, 1.25),
    ("anthropic:claude-3-5-haiku", 0.8, 4.0, 0.08, 1.0),
    ("openai:gpt-5", 1.25, 10.0, 0.125, 1.25),
    ("openai:gpt-5-mini", 0.25, 2.0, 0.025, 0.25),
    ("openai:gpt-5-nano", 0.05, 0.4, 0.005, 0.05),
    ("openai:gpt-4.1", 2.0, 8.0, 0.5, 2.0),
    ("openai:gpt-4.1-mini", 0.4, 1.6, 0.1, 0.4),
    ("openai:gpt-4.1-nano", 0.1, 0.4, 0.025, 0.1),
    ("openai:gpt-4o", 2.5, 10.0, 1.25, 2.5),
    ("openai:gpt-4o-mini", 0.15, 0.6, 0.075, 0.15),
    ("openai:o3", 2.0, 8.0, 0.5, 2.0),
    ("openai:o4-mini", 1.1, 4.4, 0.275, 1.1),
    // Local models cost nothing per token.
    ("ollama:", 0.0, 0.0, 0.0, 0.0),
];

/// The built-in table merged with the user's overrides.
pub struct Prices(BTreeMap<String, Price>);

impl Prices {
    pub fn new(overrides: &BTreeMap<String, Price>) -> Prices {
        let mut m: BTreeMap<String, Price> = BUILTIN_PRICES
            .iter()
            .map(|&(k, input, output, cr, cw)| {
                (
                    k.to_string(),
                    Price {
                        input,
                        output,
                        cache_read: Some(cr),
                        cache_write: Some(cw),
                    },
                )
            })
            .collect();
        m.extend(overrides.iter().map(|(k, v)| (k.clone(), *v)));
        Prices(m)
    }

    /// The price of `provider:model`, by longest prefix.
    pub fn lookup(&self, model: &str) -> Option<&Price> {
        self.0
            .iter()
            .filter(|(k, _)| model.starts_with(k.as_str()))
            .max_by_key(|(k, _)| k.len())
            .map(|(_, p)| p)
    }

    pub fn cost(&self, model: &str, u: &Usage) -> Option<f64> {
        let p = self.lookup(model)?;
        let m = 1e6;
        Some(
            u.input_tokens as f64 * p.input / m
                + u.output_tokens as f64 * p.output / m
                + u.cache_read_tokens as f64 * p.cache_read.unwrap_or(p.input) / m
                + u.cache_write_tokens as f64 * p.cache_write.unwrap_or(p.input) / m,
        )
    }
}

const MIGRATIONS: &[&str] = &["
CREATE TABLE llm_usage (
    id INTEGER PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    ask_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cache_read_tokens INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL
);
CREATE INDEX llm_usage_ts ON llm_usage (ts_ms);
"];

/// `$XDG_DATA_HOME/coral/ask.db`.
pub fn default_db_path() -> Option<PathBuf> {
    dirs::data_dir().map(|d| d.join("coral").join("ask.db"))
}

pub struct UsageDb {
    conn: rusqlite::Connection,
}

/// One row of `coral ask cost`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CostRow {
    /// Local date, YYYY-MM-DD.
    pub day: String,
    /// provider:model-id
    pub model: String,
    pub asks: u64,
    pub rounds: u64,
    #[serde(flatten)]
    pub tokens: Usage,
    /// Null when the model has no price (add one under [ask.prices]).
    pub cost_usd: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CostReport {
    pub since_ms: i64,
    pub rows: Vec<CostRow>,
    pub total_tokens: Usage,
    /// The sum over rows that have a price.
    pub total_cost_usd: f64,
    /// Models without a price (their cost is not in the total).
    pub unpriced_models: Vec<String>,
}

impl UsageDb {
    pub fn open(path: &Path) -> anyhow::Result<UsageDb> {
        use std::os::unix::fs::DirBuilderExt as _;
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        }
        let conn = coral_store::sqlite::open_migrated(path, MIGRATIONS)?;
        Ok(UsageDb { conn })
    }

    pub fn record(&self, ask_id: &str, kind: Kind, model: &str, u: &Usage) -> anyhow::Result<()> {
        self.conn.execute(
            "INSERT INTO llm_usage (ts_ms, ask_id, provider, model, input_tokens, output_tokens,
                                    cache_read_tokens, cache_write_tokens)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                coral_proto::now_ms(),
                ask_id,
                kind.name(),
                model,
                u.input_tokens as i64,
                u.output_tokens as i64,
                u.cache_read_tokens as i64,
                u.cache_write_tokens as i64
            ],
        )?;
        Ok(())
    }

    /// Usage since `since_ms`, per local day and model, newest day first.
    pub fn report(&self, since_ms: i64, prices: &Prices) -> anyhow::Result<CostReport> {
        let mut stmt = self.conn.prepare(
            "SELECT date(ts_ms / 1000, 'unixepoch', 'localtime') AS day,
                    provider || ':' || model,
                    count(DISTINCT ask_id), count(*),
                    sum(input_tokens), sum(output_tokens),
                    sum(cache_read_tokens), sum(cache_write_tokens)
             FROM llm_usage WHERE ts_ms >= ?1
             GROUP BY 1, 2 ORDER BY 1 DESC, 2",
        )?;
        let rows = stmt.query_map([since_ms], |r| {
            let n = |i: usize| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
            Ok(CostRow {
                day: r.get(0)?,
                model: r.get(1)?,
                asks: n(2)?,
                rounds: n(3)?,
                tokens: Usage {
                    input_tokens: n(4)?,
                    output_tokens: n(5)?,
                    cache_read_tokens: n(6)?,
                    cache_write_tokens: n(7)?,
                },
                cost_usd: None,
            })
        })?;
        let mut report = CostReport {
            since_ms,
            rows: Vec::new(),
            total_tokens: Usage::default(),
            total_cost_usd: 0.0,
            unpriced_models: Vec::new(),
        };
        for row in rows {
            let mut row = row?;
            row.cost_usd = prices.cost(&row.model, &row.tokens);
            match row.cost_usd {
                Some(c) => report.total_cost_usd += c,
                None if !report.unpriced_models.contains(&row.model) => {
                    report.unpriced_models.push(row.model.clone())
                }
                None => {}
            }
            report.total_tokens.add(&row.tokens);
            report.rows.push(row);
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins_and_overrides_replace_builtins() {
        let p = Prices::new(&BTreeMap::new());
        assert_eq!(
            p.lookup("openai:gpt-4o-mini-2024-07-18").unwrap().input,
            0.15
        );
        assert_eq!(p.lookup("openai:gpt-4o-2024-08-06").unwrap().input, 2.5);
        assert_eq!(
            p.lookup("anthropic:claude-sonnet-4-5-20250929")
                .unwrap()
                .output,
            15.0
        );
        assert!(p.lookup("openai:davinci").is_none());
        let u = Usage {
            input_tokens: 1_000_000,
            output_tokens: 500_000,
            cache_read_tokens: 1_000_000,
            cache_write_tokens: 0,
        };
        let c = p.cost("anthropic:claude-sonnet-4-5", &u).unwrap();
        assert!((c - (3.0 + 7.5 + 0.3)).abs() < 1e-9, "{c}");
        let mut o = BTreeMap::new();
        o.insert(
            "openai:gpt-4o".to_string(),
            Price {
                input: 1.0,
                output: 1.0,
                cache_read: None,
                cache_write: None,
            },
        );
        let p = Prices::new(&o);
        assert_eq!(p.cost("openai:gpt-4o", &u), Some(1.0 + 0.5 + 1.0));
        assert_eq!(p.cost("ollama:qwen3:8b", &u), Some(0.0));
    }

    #[test]
    fn usage_is_summed_per_day_and_model() {
        let dir = tempfile::tempdir().unwrap();
        let db = UsageDb::open(&dir.path().join("sub/ask.db")).unwrap();
        let u = |i, o| Usage {
            input_tokens: i,
            output_tokens: o,
            ..Usage::default()
        };
        db.record("a1", Kind::OpenAi, "gpt-4.1", &u(100, 10))
            .unwrap();
        db.record("a1", Kind::OpenAi, "gpt-4.1", &u(200, 20))
            .unwrap();
        db.record("a2", Kind::OpenAi, "gpt-4.1", &u(300, 30))
            .unwrap();
        db.record("a3", Kind::OpenAi, "mystery", &u(1, 1)).unwrap();
        let r = db.report(0, &Prices::new(&BTreeMap::new())).unwrap();
        assert_eq!(r.rows.len(), 2);
        let row = &r.rows[0];
        assert_eq!(
            (row.model.as_str(), row.asks, row.rounds),
            ("openai:gpt-4.1", 2, 3)
        );
        assert_eq!(row.tokens.input_tokens, 600);
        assert!((row.cost_usd.unwrap() - (600.0 * 2.0 + 60.0 * 8.0) / 1e6).abs() < 1e-12);
        assert_eq!(r.unpriced_models, ["openai:mystery"]);
        assert_eq!(r.total_tokens.output_tokens, 61);
        let later = db
            .report(
                coral_proto::now_ms() + 60_000,
                &Prices::new(&BTreeMap::new()),
            )
            .unwrap();
        assert!(later.rows.is_empty());
    }
}
