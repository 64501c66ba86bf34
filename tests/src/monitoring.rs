//! deploy/monitoring as the tests see it: the alert rules and the Grafana
//! dashboard, the metric names their expressions use, the names the binaries
//! really export, and `promtool` to lint and unit-test them.
use std::{
    collections::BTreeSet,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

pub fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring")
}

/// The rule groups of `prometheus-rules.yaml` (its `spec`), as a plain
/// Prometheus rules file.
pub fn rules_file_text() -> Result<String> {
    Ok(serde_yaml::to_string(&rules_spec()?)?)
}

/// (alert name, expression) of every rule.
pub fn rule_expressions() -> Result<Vec<(String, String)>> {
    let spec = serde_json::to_value(rules_spec()?)?;
    let mut out = Vec::new();
    for group in spec["groups"].as_array().context("spec.groups")? {
        for rule in group["rules"].as_array().context("rules")? {
            let name = rule["alert"].as_str().or(rule["record"].as_str());
            let expr = rule["expr"].as_str().context("a rule without expr")?;
            out.push((name.unwrap_or("?").to_owned(), expr.to_owned()));
        }
    }
    Ok(out)
}

fn rules_spec() -> Result<serde_yaml::Value> {
    let path = monitoring_dir().join("prometheus-rules.yaml");
    let text = std::fs::read_to_string(&path)?;
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    doc.get("spec")
        .cloned()
        .context("PrometheusRule has no spec")
}

pub fn dashboard() -> Result<Value> {
    let path = monitoring_dir().join("grafana-dashboard.json");
    let text = std::fs::read_to_string(&path)?;
    serde_json::from_str(&text).with_context(|| format!("{}", path.display()))
}

/// (panel title, expression) of every query of the dashboard.
pub fn dashboard_expressions(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                let title = panel["title"].as_str().unwrap_or("?");
                out.push((title.to_owned(), expr.to_owned()));
            }
        }
    }
    out
}

/// The Porter metric names an expression reads (`porter_...` identifiers).
pub fn metrics_read_by(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("porter_"))
        .map(str::to_owned)
        .collect()
}

/// Every series name an OpenMetrics exposition offers to a query: each
/// family's samples, including the suffixed ones a counter or histogram
/// has even before its first sample.
pub fn series_names(openmetrics: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#')
            && let Some(name) = line.split(['{', ' ']).next()
            && !name.is_empty()
        {
            names.insert(name.to_owned());
        }
    }
    names
}

/// The same exposition in Prometheus' text format, which is what
/// `promtool check metrics` reads: a counter's HELP and TYPE lines name its
/// `_total` series, and there is no `# EOF`. Prometheus itself scrapes the
/// OpenMetrics form, which both binaries serve.
pub fn as_prometheus_text(openmetrics: &str) -> String {
    let counters: BTreeSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::new();
    for line in openmetrics.lines().filter(|l| *l != "# EOF") {
        let meta = line
            .strip_prefix("# HELP ")
            .map(|rest| ("HELP", rest))
            .or_else(|| line.strip_prefix("# TYPE ").map(|rest| ("TYPE", rest)));
        match meta {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(name) {
                    format!("{name}_total")
                } else {
                    name.to_owned()
                };
                out.push_str(&format!("# {kind} {name} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Runs `promtool` with `args` in `dir`, feeding it `stdin`; fails with its
/// output when it reports a problem.
pub fn promtool(dir: &Path, args: &[&str], stdin: &str) -> Result<String> {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running promtool (Debian package prometheus; `cargo xtask setup` installs it)")?;
    child
        .stdin
        .take()
        .context("promtool's stdin")?
        .write_all(stdin.as_bytes())?;
    let out = child.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("promtool {}: {text}", args.join(" "));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPOSITION: &str = "# HELP porter_allocations Addresses handed out.\n\
        # TYPE porter_allocations counter\n\
        porter_allocations_total 4\n\
        # HELP porter_pool_size Addresses.\n\
        # TYPE porter_pool_size gauge\n\
        porter_pool_size{pool=\"a\"} 1.0\n\
        # HELP porter_reconcile_duration_seconds Time.\n\
        # TYPE porter_reconcile_duration_seconds histogram\n\
        # EOF\n";

    #[test]
    fn a_counter_is_named_by_its_total_series_in_the_prometheus_text() {
        let text = as_prometheus_text(EXPOSITION);
        assert!(text.contains("# HELP porter_allocations_total Addresses handed out.\n"));
        assert!(text.contains("# TYPE porter_allocations_total counter\n"));
        assert!(text.contains("# TYPE porter_pool_size gauge\n"));
        assert!(!text.contains("EOF"));
    }

    #[test]
    fn series_names_include_the_suffixes_queries_use() {
        let names = series_names(EXPOSITION);
        for name in [
            "porter_allocations_total",
            "porter_pool_size",
            "porter_reconcile_duration_seconds_bucket",
            "porter_reconcile_duration_seconds_count",
        ] {
            assert!(names.contains(name), "{name} in {names:?}");
        }
        assert!(!names.contains("porter_allocations"));
    }

    #[test]
    fn expressions_name_their_metrics_and_not_their_labels() {
        let read = metrics_read_by(
            "sum by (map) (porter_agent_map_entries{map!~\"PORTER_CT\"} / porter_agent_map_capacity) > 0.9",
        );
        assert_eq!(
            read.into_iter().collect::<Vec<_>>(),
            ["porter_agent_map_capacity", "porter_agent_map_entries"]
        );
    }
}
