//! deploy/monitoring holds rules and a dashboard an operator applies as they
//! are: the rules pass `promtool check rules` and their own unit tests
//! (prometheus-rules.test.yaml), and the dashboard is one Grafana can load.
//! That every metric they name is one the binaries export is checked in the
//! end-to-end lab, against real scrapes (`e2e -- metrics`).
use std::collections::BTreeSet;

use porter_tests::monitoring::{
    dashboard, dashboard_expressions, monitoring_dir, promtool, rule_expressions, rules_file_text,
};

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = std::env::temp_dir().join(format!("porter-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("rules.yaml"), rules_file_text().expect("rules")).expect("write");
    std::fs::copy(
        monitoring_dir().join("prometheus-rules.test.yaml"),
        dir.join("rules.test.yaml"),
    )
    .expect("copy the rule tests");
    let checked = promtool(&dir, &["check", "rules", "rules.yaml"], "");
    let tested = promtool(&dir, &["test", "rules", "rules.test.yaml"], "");
    let _ = std::fs::remove_dir_all(&dir);
    let checked = checked.expect("promtool check rules");
    let tested = tested.expect("promtool test rules");
    println!("{checked}{tested}");
    let alerts = rule_expressions().expect("rules");
    assert!(checked.contains(&format!("SUCCESS: {} rules found", alerts.len())));
    // Every alert has a case in the rule tests.
    let cases = std::fs::read_to_string(monitoring_dir().join("prometheus-rules.test.yaml"))
        .expect("rule tests");
    for (alert, _) in &alerts {
        assert!(
            cases.contains(&format!("alertname: {alert}")),
            "alert {alert} has no case in prometheus-rules.test.yaml"
        );
    }
}

#[test]
fn the_dashboard_is_a_loadable_grafana_dashboard() {
    let dashboard = dashboard().expect("dashboard JSON");
    assert_eq!(dashboard["uid"], "porter");
    let panels = dashboard["panels"].as_array().expect("panels");
    let ids: BTreeSet<u64> = panels.iter().filter_map(|p| p["id"].as_u64()).collect();
    assert_eq!(ids.len(), panels.len(), "every panel has its own id");
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {} uses the dashboard's data source variable",
            panel["title"]
        );
        let grid = &panel["gridPos"];
        assert!(
            grid["w"].as_u64().is_some_and(|w| w > 0 && w <= 24) && grid["h"].as_u64() > Some(0),
            "panel {} has a place on the grid",
            panel["title"]
        );
    }
    let exprs = dashboard_expressions(&dashboard);
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
}
