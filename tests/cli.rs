//! The command line as users call it: `check-config` (environment overrides
//! included) and `replay` from standard input.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn cohortflow(args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cohortflow"));
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn");
    child.stdin.take().expect("stdin").write_all(stdin).expect("write stdin");
    child.wait_with_output().expect("wait")
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("temp");
    f.write_all(text.as_bytes()).expect("write");
    f
}

#[test]
fn check_config_accepts_the_example_and_names_bad_keys() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/cohortflow.toml");
    let ok = cohortflow(&["check-config", example], &[], b"");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("ok"));

    let bad = config_file("[[funnel]]\nname = \"f\"\nwindow = \"forever\"\nsteps = [\"a\"]\n");
    let out = cohortflow(&["check-config", bad.path().to_str().expect("path")], &[], b"");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("funnel[0].window"));

    let unknown = config_file("[http]\nlisten = \"127.0.0.1:1\"\nport = 5\n");
    let out = cohortflow(&["check-config", unknown.path().to_str().expect("path")], &[], b"");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("port"));
}

#[test]
fn environment_overrides_every_key() {
    let file = config_file("timezone = \"UTC\"\n");
    let path = file.path().to_str().expect("path");
    let out = cohortflow(&["check-config", path], &[("COHORTFLOW_TIMEZONE", "Asia/Shanghai")], b"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Asia/Shanghai"));

    let out = cohortflow(&["check-config", path], &[("COHORTFLOW_HTTP__LISTEN", "not-an-address")], b"");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("http.listen"));

    let out = cohortflow(&["check-config", path], &[("COHORTFLOW_HISTORY_DAYS", "1")], b"");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("history_days"));
}

#[test]
fn replay_from_stdin_prints_the_figures() {
    let cfg = config_file(
        "[[retention]]\nname = \"r\"\ndays = [1]\n[[funnel]]\nname = \"f\"\nwindow = \"1h\"\nsteps = [\"view\", \"buy\"]\n",
    );
    let input = concat!(
        r#"{"user_id":"a","event":"view","ts":"2026-10-01T10:00:00Z"}"#,
        "\n",
        r#"{"user_id":"a","event":"buy","ts":"2026-10-01T10:30:00Z"}"#,
        "\n\n",
        r#"{"user_id":"b","event":"view","ts":"2026-10-01T11:00:00Z"}"#,
        "\n",
        r#"{"user_id":"a","event":"view","ts":"2026-10-02T09:00:00Z"}"#,
        "\n",
        "not json\n",
        r#"{"user_id":"c","event":"view","ts":"2026-10-02T12:00:00Z"}"#,
    );
    let out = cohortflow(
        &["replay", "--config", cfg.path().to_str().expect("path"), "-"],
        &[("RUST_LOG", "warn")],
        input.as_bytes(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        r#"cohortflow_cohort_users{retention="r",cohort_date="2026-10-01"} 2"#,
        r#"cohortflow_retained_users{retention="r",cohort_date="2026-10-01",day="1"} 1"#,
        r#"cohortflow_retention_ratio{retention="r",cohort_date="2026-10-01",day="1"} 0.5"#,
        r#"cohortflow_cohort_users{retention="r",cohort_date="2026-10-02"} 1"#,
        r#"cohortflow_new_users{date="2026-10-02"} 1"#,
        r#"cohortflow_active_users{window="1d",date="2026-10-02"} 2"#,
        r#"cohortflow_active_users{window="7d",date="2026-10-02"} 3"#,
        r#"cohortflow_funnel_users{funnel="f",step="1",step_name="view",entry_date="2026-10-01"} 2"#,
        r#"cohortflow_funnel_users{funnel="f",step="2",step_name="buy",entry_date="2026-10-01"} 1"#,
        r#"cohortflow_funnel_conversions_total{funnel="f",step="2"} 1"#,
        "cohortflow_events_ingested_total 5",
        r#"cohortflow_events_rejected_total{reason="invalid_json"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "missing `{line}` in:\n{text}");
    }
}
