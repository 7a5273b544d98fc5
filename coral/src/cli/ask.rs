//! `coral ask`, `coral ask config`, `coral ask cost`.

use super::args::{AskArgs, AskCmd, ConfigArgs};
use super::client::client;
use super::output::out;
use super::render;
use crate::ask::Tools;
use crate::ask::config::{self as askcfg, AskConfig, Edit, KeyRef};
use crate::ask::conversation::{self, Answer, AskError, Event, Options};
use crate::ask::cost::{CostReport, Prices, UsageDb};
use crate::ask::provider::{Kind, Provider, parse_model, printable};
use crate::config::CoralConfig;
use crate::mcp::McpTools;
use crate::tools::FileTools;
use anyhow::{Context as _, anyhow};
use coral_proto::exit::{Unavailable, Usage};
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::Duration;

pub fn run(args: AskArgs) -> anyhow::Result<()> {
    match args.cmd {
        Some(AskCmd::Config(c)) => config(c),
        Some(AskCmd::Cost { since, json }) => cost(since, json),
        None => ask(args),
    }
}

fn load() -> anyhow::Result<(PathBuf, AskConfig)> {
    let path = crate::config::default_path().ok_or_else(|| {
        Usage("no config directory is known (set XDG_CONFIG_HOME or HOME)".into())
    })?;
    let cfg = CoralConfig::load_or_default(None).map_err(|e| Usage(e.to_string()))?;
    Ok((path, cfg.ask.unwrap_or_default()))
}

fn db_path() -> anyhow::Result<PathBuf> {
    crate::ask::cost::default_db_path().ok_or_else(|| {
        Usage("no data directory is known (set XDG_DATA_HOME or HOME)".into()).into()
    })
}

fn ask(args: AskArgs) -> anyhow::Result<()> {
    let question = args.question.join(" ");
    if question.trim().is_empty() {
        return Err(Usage(
            "give a question, e.g. coral ask \"What's wrong with the API?\" (see 'coral ask --help')".into(),
        )
        .into());
    }
    let (_, cfg) = load()?;
    let settings = crate::ask::provider_settings(&cfg, args.model.as_deref(), !args.no_stream)
        .map_err(|e| Usage(e.to_string()))?;
    let Some(settings) = settings else {
        return client(async {
            let answer = crate::ask::builtin_answer(&question).await?;
            print_answer(&answer, args.json, false)
        });
    };
    let provider = Provider::new(settings)?;
    let opts = Options {
        max_steps: args
            .max_steps
            .or(cfg.max_steps)
            .unwrap_or(conversation::DEFAULT_MAX_STEPS),
        ..Options::default()
    };
    let prices = Prices::new(&cfg.prices);
    let db = UsageDb::open(&db_path()?)?;
    match &args.tools_file {
        Some(f) => {
            let tools = FileTools::load(f).map_err(|e| Usage(format!("{e:#}")))?;
            client(ask_with(
                &provider, &tools, &question, &opts, &prices, &db, args.json,
            ))
        }
        None => client(async {
            let tools = McpTools::connect().await?;
            ask_with(&provider, &tools, &question, &opts, &prices, &db, args.json).await
        }),
    }
}

async fn ask_with<T: Tools>(
    provider: &Provider,
    tools: &T,
    question: &str,
    opts: &Options,
    prices: &Prices,
    db: &UsageDb,
    json: bool,
) -> anyhow::Result<()> {
    let ask_id = uuid::Uuid::new_v4().to_string();
    let mut answer = Answer::default();
    let mut stdout = std::io::stdout().lock();
    let mut write_err: Option<std::io::Error> = None;
    let mut record_err = false;
    let mut at_line_start = true;
    let result = conversation::run(
        provider,
        tools,
        question,
        opts,
        &mut answer,
        &mut |ev| match ev {
            Event::Text(t) if !json => {
                if write_err.is_none()
                    && let Err(e) = stdout
                        .write_all(printable(t).as_bytes())
                        .and_then(|_| stdout.flush())
                {
                    write_err = Some(e);
                }
                if !t.is_empty() {
                    at_line_start = t.ends_with('\n');
                }
            }
            Event::Text(_) => {}
            Event::RoundDone(round) => {
                if let Err(e) = db.record(&ask_id, provider.kind, &provider.model, &round.usage)
                    && !record_err
                {
                    record_err = true;
                    eprintln!("warning: cannot record token usage: {e:#}");
                }
                if !json && !round.calls.is_empty() && !at_line_start {
                    let _ = stdout.write_all(b"\n");
                    at_line_start = true;
                }
            }
            Event::ToolDone(ev) => {
                if !json {
                    let status = match &ev.error {
                        None => format!("{} bytes", ev.output_bytes),
                        Some(e) => format!("failed: {}", crate::ask::provider::one_line(e, 120)),
                    };
                    eprintln!(
                        "  → [{}] {} {} ({status})",
                        ev.id,
                        ev.tool,
                        compact(&ev.args, 120)
                    );
                }
            }
        },
    )
    .await;
    drop(stdout);
    if let Some(e) = write_err {
        return Err(e.into());
    }
    answer.usage.cost_usd = prices.cost(
        &format!("{}:{}", provider.kind, provider.model),
        &answer.usage.tokens,
    );
    if let Err(e) = &result {
        answer.error = Some(e.to_string());
    }
    if json || result.is_ok() {
        print_answer(&answer, json, true)?;
    } else if !answer.evidence.is_empty() {
        eprint!("{}", evidence_text(&answer));
    }
    result.map_err(ask_error)
}

fn ask_error(e: AskError) -> anyhow::Error {
    match &e {
        AskError::NoProvider => Usage(e.to_string()).into(),
        AskError::Tools(_) => Unavailable(e.to_string()).into(),
        AskError::Provider(p) if p.is_unreachable() => Unavailable(e.to_string()).into(),
        AskError::Provider(p) if p.is_config() => Usage(e.to_string()).into(),
        _ => anyhow!(e),
    }
}

/// JSON on one line, cut to `max` characters.
fn compact(v: &serde_json::Value, max: usize) -> String {
    crate::ask::provider::one_line(&v.to_string(), max)
}

fn evidence_text(a: &Answer) -> String {
    let mut s = String::new();
    if a.evidence.is_empty() {
        s.push_str("\nEvidence: no tool calls\n");
    } else {
        s.push_str(&format!("\nEvidence ({} tool calls):\n", a.evidence.len()));
        for e in &a.evidence {
            let outcome = match &e.error {
                Some(err) => format!("error: {}", crate::ask::provider::one_line(err, 100)),
                None if e.truncated => format!("{} bytes, truncated", e.output_bytes),
                None => format!("{} bytes", e.output_bytes),
            };
            s.push_str(&format!(
                "  [{}] {} {}  → {outcome}\n",
                e.id,
                e.tool,
                compact(&e.args, 160)
            ));
        }
    }
    s
}

/// Prints an answer: JSON, or (human) the answer text unless it was already
/// streamed, the evidence and the usage.
fn print_answer(a: &Answer, json: bool, streamed: bool) -> anyhow::Result<()> {
    if json {
        return out(&(serde_json::to_string_pretty(a)? + "\n"));
    }
    let mut s = String::new();
    let text = a.answer.as_deref().unwrap_or("");
    if !streamed {
        s.push_str(&printable(text));
    }
    if !text.ends_with('\n') {
        s.push('\n');
    }
    s.push_str(&evidence_text(a));
    let u = &a.usage;
    if u.rounds > 0 {
        let cost = match u.cost_usd {
            Some(c) => format!(", ~${c:.4}"),
            None => String::new(),
        };
        s.push_str(&format!(
            "\n{}:{}: {} rounds, {} input + {} output tokens{cost}\n",
            u.provider,
            u.model,
            u.rounds,
            u.tokens.input_tokens + u.tokens.cache_read_tokens + u.tokens.cache_write_tokens,
            u.tokens.output_tokens
        ));
    }
    out(&s)
}

fn cost(since: Duration, json: bool) -> anyhow::Result<()> {
    let (_, cfg) = load()?;
    let path = db_path()?;
    let since_ms = coral_proto::now_ms() - since.as_millis().min(i64::MAX as u128) as i64;
    let prices = Prices::new(&cfg.prices);
    let report = if path.exists() {
        UsageDb::open(&path)?.report(since_ms, &prices)?
    } else {
        CostReport {
            since_ms,
            rows: Vec::new(),
            total_tokens: Default::default(),
            total_cost_usd: 0.0,
            unpriced_models: Vec::new(),
        }
    };
    if json {
        return out(&(serde_json::to_string_pretty(&report)? + "\n"));
    }
    let span = short_span(since);
    if report.rows.is_empty() {
        return out(&format!("No 'coral ask' usage in the last {span}.\n"));
    }
    let mut t = render::table(&["DAY", "MODEL", "ASKS", "ROUNDS", "INPUT", "OUTPUT", "COST"]);
    let money = |c: Option<f64>| c.map(|c| format!("${c:.4}")).unwrap_or_else(|| "?".into());
    for r in &report.rows {
        t.add_row(vec![
            r.day.clone(),
            r.model.clone(),
            r.asks.to_string(),
            r.rounds.to_string(),
            (r.tokens.input_tokens + r.tokens.cache_read_tokens + r.tokens.cache_write_tokens)
                .to_string(),
            r.tokens.output_tokens.to_string(),
            money(r.cost_usd),
        ]);
    }
    let mut s = format!("{t}\n");
    s.push_str(&format!(
        "Total over the last {span}: {} input + {} output tokens, ~${:.4}\n",
        report.total_tokens.input_tokens
            + report.total_tokens.cache_read_tokens
            + report.total_tokens.cache_write_tokens,
        report.total_tokens.output_tokens,
        report.total_cost_usd
    ));
    if !report.unpriced_models.is_empty() {
        s.push_str(&format!(
            "No price for {}: add one under [ask.prices] in config.toml (USD per million tokens).\n",
            report.unpriced_models.join(", ")
        ));
    }
    out(&s)
}

/// `7d`, `12h`, else humantime's form.
fn short_span(d: Duration) -> String {
    let s = d.as_secs();
    if s > 0 && s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s > 0 && s.is_multiple_of(3_600) {
        format!("{}h", s / 3_600)
    } else {
        humantime::format_duration(d).to_string()
    }
}

fn config(c: ConfigArgs) -> anyhow::Result<()> {
    let (path, cfg) = load()?;
    if c.show {
        return show(&path, &cfg, c.json);
    }
    let no_flags = c.provider.is_none()
        && c.model.is_none()
        && c.api_key_env.is_none()
        && !c.api_key_stdin
        && c.base_url.is_none();
    let (edit, key) = if no_flags {
        if !std::io::stdin().is_terminal() {
            return Err(Usage(
                "no terminal to ask on: give --provider, --model, --api-key-env, --api-key-stdin or --base-url (or --show)"
                    .into(),
            )
            .into());
        }
        interactive(&cfg)?
    } else {
        edit_from_flags(&c, &cfg)?
    };
    save(&path, &edit, key)
}

fn edit_from_flags(c: &ConfigArgs, cfg: &AskConfig) -> anyhow::Result<(Edit, Option<String>)> {
    let flag_kind = c.provider.as_deref().and_then(Kind::parse);
    let model = match (&c.model, flag_kind) {
        (None, _) => None,
        (Some(m), Some(k)) if !m.starts_with(&format!("{k}:")) => Some(format!("{k}:{m}")),
        (Some(m), _) => Some(m.clone()),
    };
    let model_kind = match &model {
        Some(m) => Some(parse_model(m).map_err(|e| Usage(e.to_string()))?.0),
        None => None,
    };
    let current = cfg
        .model
        .as_deref()
        .and_then(|m| parse_model(m).ok())
        .map(|(k, _)| k);
    let kind = flag_kind.or(model_kind).or(current);
    let needs_kind = c.api_key_env.is_some() || c.api_key_stdin || c.base_url.is_some();
    if needs_kind && kind.is_none() {
        return Err(Usage("say which provider: --provider anthropic|openai|ollama".into()).into());
    }
    let api_key = match &c.api_key_env {
        Some(name) if !askcfg::valid_env_name(name) => {
            return Err(Usage(format!(
                "--api-key-env takes the name of an environment variable, like ANTHROPIC_API_KEY (got '{}')",
                if name.len() > 8 { "a value that looks like a key" } else { name.as_str() }
            ))
            .into());
        }
        Some(name) => Some(KeyRef::Env(name.clone())),
        None if c.api_key_stdin => Some(KeyRef::Stored),
        None => None,
    };
    let key = if c.api_key_stdin {
        let mut s = String::new();
        std::io::stdin()
            .read_line(&mut s)
            .context("cannot read the key from stdin")?;
        Some(s.trim().to_string())
    } else {
        None
    };
    Ok((
        Edit {
            model,
            provider: kind,
            api_key,
            base_url: c.base_url.clone(),
        },
        key,
    ))
}

fn prompt(question: &str, default: &str) -> anyhow::Result<String> {
    let mut err = std::io::stderr().lock();
    if default.is_empty() {
        write!(err, "{question}: ")?;
    } else {
        write!(err, "{question} [{default}]: ")?;
    }
    err.flush()?;
    let mut s = String::new();
    if std::io::stdin().read_line(&mut s)? == 0 {
        return Err(Usage("no answer (end of input)".into()).into());
    }
    let s = s.trim();
    Ok(if s.is_empty() {
        default.to_string()
    } else {
        s.to_string()
    })
}

fn interactive(cfg: &AskConfig) -> anyhow::Result<(Edit, Option<String>)> {
    let current = cfg.model.as_deref().and_then(|m| parse_model(m).ok());
    let default_kind = current.as_ref().map(|c| c.0).unwrap_or(Kind::Anthropic);
    let kind = loop {
        let p = prompt("Provider (anthropic, openai, ollama)", default_kind.name())?;
        match Kind::parse(&p) {
            Some(k) => break k,
            None => eprintln!("  '{p}' is not one of anthropic, openai, ollama"),
        }
    };
    let default_model = match &current {
        Some((k, m)) if *k == kind => m.clone(),
        _ => kind.suggested_model().to_string(),
    };
    let model = prompt("Model id", &default_model)?;
    let (api_key, key) = if kind.needs_key() {
        let default_env = match cfg.key_ref(kind) {
            Some(KeyRef::Env(n)) => n,
            _ => kind.default_key_env().unwrap_or("").to_string(),
        };
        eprintln!(
            "The API key: give the name of an environment variable that holds it, or '-' to paste\nthe key now and store it in a 0600 file."
        );
        loop {
            let a = prompt("Key variable or '-'", &default_env)?;
            if a == "-" {
                let k = rpassword::prompt_password("Key (not shown): ")?;
                break (Some(KeyRef::Stored), Some(k.trim().to_string()));
            }
            if askcfg::valid_env_name(&a) {
                if std::env::var_os(&a).is_none() {
                    eprintln!("  note: {a} is not set in this shell; set it before 'coral ask'");
                }
                break (Some(KeyRef::Env(a)), None);
            }
            eprintln!(
                "  '{}' is not a variable name",
                if a.len() > 8 { "that" } else { &a }
            );
        }
    } else {
        (None, None)
    };
    let current_url = cfg
        .provider(kind)
        .base_url
        .unwrap_or_else(|| kind.default_base_url().to_string());
    let base_url = prompt("Base URL", &current_url)?;
    Ok((
        Edit {
            model: Some(format!("{kind}:{model}")),
            provider: Some(kind),
            api_key,
            base_url: (base_url != kind.default_base_url()
                || cfg.provider(kind).base_url.is_some())
            .then_some(base_url),
        },
        key,
    ))
}

fn save(path: &std::path::Path, edit: &Edit, key: Option<String>) -> anyhow::Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(anyhow!("cannot read {}: {e}", path.display())),
    };
    let new =
        askcfg::apply_edit(&text, edit).map_err(|e| Usage(format!("{}: {e}", path.display())))?;
    // Never write a file that would not load.
    CoralConfig::parse(path, &new).map_err(|e| Usage(e.to_string()))?;
    let mut msg = String::new();
    if let (Some(k), Some(kind)) = (key, edit.provider) {
        let file = askcfg::store_key(kind, &k).map_err(|e| Usage(format!("{e:#}")))?;
        msg.push_str(&format!(
            "Stored the {kind} key in {} (mode 0600)\n",
            file.display()
        ));
    }
    askcfg::write_config(path, &new).with_context(|| format!("cannot write {}", path.display()))?;
    let cfg = CoralConfig::parse(path, &new).map_err(|e| Usage(e.to_string()))?;
    let ask = cfg.ask.unwrap_or_default();
    msg.push_str(&format!("Saved {}\n", path.display()));
    msg.push_str(&summary(&ask));
    out(&msg)
}

fn summary(cfg: &AskConfig) -> String {
    let mut s = format!(
        "  model: {}\n",
        cfg.model
            .as_deref()
            .unwrap_or("(none: the built-in analyzer answers)")
    );
    for kind in Kind::ALL {
        let p = cfg.provider(kind);
        if p.api_key.is_none()
            && p.base_url.is_none()
            && !cfg
                .model
                .as_deref()
                .is_some_and(|m| m.starts_with(&format!("{kind}:")))
        {
            continue;
        }
        let key = match cfg.key_ref(kind) {
            Some(r) => format!(
                "{r} ({})",
                if askcfg::key_available(kind, &r) {
                    "available"
                } else {
                    "not available"
                }
            ),
            None => "none".into(),
        };
        let url = p
            .base_url
            .clone()
            .unwrap_or_else(|| format!("{} (default)", kind.default_base_url()));
        s.push_str(&format!("  {kind}: key {key}, base URL {url}\n"));
    }
    s
}

fn show(path: &std::path::Path, cfg: &AskConfig, json: bool) -> anyhow::Result<()> {
    if json {
        let mut providers = serde_json::Map::new();
        for kind in Kind::ALL {
            let p = cfg.provider(kind);
            let r = cfg.key_ref(kind);
            providers.insert(
                kind.name().into(),
                serde_json::json!({
                    "api_key": r.as_ref().map(|r| r.to_string()),
                    "key_available": r.as_ref().is_some_and(|r| askcfg::key_available(kind, r)),
                    "base_url": p.base_url.clone().unwrap_or_else(|| kind.default_base_url().into()),
                    "base_url_is_default": p.base_url.is_none(),
                }),
            );
        }
        let v = serde_json::json!({
            "config": path,
            "model": cfg.model,
            "max_steps": cfg.max_steps.unwrap_or(conversation::DEFAULT_MAX_STEPS),
            "providers": providers,
            "usage_db": crate::ask::cost::default_db_path(),
        });
        return out(&(serde_json::to_string_pretty(&v)? + "\n"));
    }
    let mut s = format!("{}\n", path.display());
    s.push_str(&summary(cfg));
    if let Some(db) = crate::ask::cost::default_db_path() {
        s.push_str(&format!("  usage log: {}\n", db.display()));
    }
    out(&s)
}
