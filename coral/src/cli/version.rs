//! `coral version`: the build, its commit and its storage engines.

use super::output::print_json_or;

pub(super) fn version(json: bool) -> anyhow::Result<()> {
    #[cfg(feature = "daemons")]
    let (duckdb, features) = (
        duckdb::Connection::open_in_memory()
            .and_then(|c| c.version())
            .unwrap_or_else(|_| "unknown".into()),
        vec!["daemons"],
    );
    // The CLI alone stores only `ask.db` (SQLite); DuckDB is the daemons'.
    #[cfg(not(feature = "daemons"))]
    let (duckdb, features): (String, Vec<&str>) = ("none (CLI only)".into(), Vec::new());
    let v = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "git_commit": env!("CORAL_GIT_COMMIT"),
        "build_date": env!("CORAL_BUILD_DATE"),
        "features": features,
        "sqlite": rusqlite::version(),
        "duckdb": duckdb,
    });
    print_json_or(json, &v, |v| {
        format!(
            "coral {}\ncommit:   {}\nbuilt:    {}\nfeatures: {}\nstorage:  sqlite {}, duckdb {}\n",
            v["version"].as_str().unwrap_or(""),
            v["git_commit"].as_str().unwrap_or(""),
            v["build_date"].as_str().unwrap_or(""),
            if features.is_empty() {
                "none".to_string()
            } else {
                features.join(", ")
            },
            v["sqlite"].as_str().unwrap_or(""),
            v["duckdb"].as_str().unwrap_or(""),
        )
    })
}
