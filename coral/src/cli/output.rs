//! Writing to stdout: every command's text or JSON goes through [`out`],
//! so a closed pipe (`coral ... | head`) ends the command quietly.

use std::io::Write;

pub(super) fn out(s: &str) -> anyhow::Result<()> {
    let mut o = std::io::stdout().lock();
    o.write_all(s.as_bytes())?;
    o.flush()?;
    Ok(())
}

pub(super) fn print_json_or<T: serde::Serialize>(
    json: bool,
    v: &T,
    human: impl Fn(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        out(&(serde_json::to_string_pretty(v)? + "\n"))
    } else {
        out(&human(v))
    }
}
