//! The deployment files pass the checks that can run here: hadolint on the
//! Dockerfile, yamllint on every YAML file, and the Kubernetes schemas
//! (offline, strict) on the manifests. `scripts/test.sh` installs the tools
//! (from PyPI). No image can be built here: the Dockerfile runs the same
//! cargo command CI runs.
//!
//! Needs tools from outside the crate: built with the `integration-tests`
//! feature only (`scripts/test.sh` installs the tools and turns it on).
#![cfg(feature = "integration-tests")]

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn passes(tool: &str, args: &[&str]) {
    let out = Command::new(tool)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("{tool} is needed (scripts/test.sh installs it): {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dockerfile_passes_hadolint() {
    passes("hadolint", &["--config", ".hadolint.yaml", "deploy/Dockerfile"]);
}

#[test]
fn yaml_passes_yamllint() {
    passes("yamllint", &["-c", ".yamllint.yml", "--strict", "deploy"]);
}

#[test]
fn manifests_match_the_kubernetes_schemas() {
    passes(
        "kubernetes-validate",
        &[
            "--strict",
            "deploy/k8s/configmap.yaml",
            "deploy/k8s/service.yaml",
            "deploy/k8s/statefulset.yaml",
            "deploy/k8s/pdb.yaml",
        ],
    );
}

#[test]
fn compose_names_the_grafana_the_dashboards_are_for() {
    let compose = std::fs::read_to_string(root().join("deploy/compose.yaml")).expect("compose");
    assert!(compose.contains("grafana/grafana:11."), "dashboards use schemaVersion 39 (Grafana 11)");
    for service in ["kafka:", "cohortflow:", "loadgen:", "prometheus:", "grafana:"] {
        assert!(compose.contains(&format!("\n  {service}")), "{service} missing");
    }
    assert!(compose.contains("KAFKA_PROCESS_ROLES: broker,controller"), "Kafka in KRaft mode");
}
