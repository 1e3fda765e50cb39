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
    // Every config the project ships: the example, the demo's, the
    // benchmarks'.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    let mut shipped = 0;
    for entry in std::fs::read_dir(dir).expect("config/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let ok = cohortflow(&["check-config", path.to_str().expect("path")], &[], b"");
            assert!(ok.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&ok.stderr));
            assert!(String::from_utf8_lossy(&ok.stdout).contains("ok"));
            shipped += 1;
        }
    }
    assert!(shipped >= 4, "{shipped} configs");

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

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn variables_that_name_no_key_are_ignored_and_string_keys_take_numbers() {
    let file = config_file("[kafka]\ntopics = [\"events\"]\n");
    let path = file.path().to_str().expect("path");
    // What Kubernetes sets in every pod of a namespace with a Service
    // named cohortflow.
    let env = [
        ("COHORTFLOW_PORT", "tcp://10.0.0.1:9464"),
        ("COHORTFLOW_SERVICE_HOST", "10.0.0.1"),
        ("COHORTFLOW_KAFKA__GROUP_ID", "12345"),
    ];
    let out = cohortflow(&["check-config", path], &env, b"");
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.matches("COHORTFLOW_PORT ").count(), 1, "{err}");
    assert_eq!(err.matches("COHORTFLOW_SERVICE_HOST ").count(), 1, "{err}");
    assert!(!err.contains("GROUP_ID"), "{err}");
}

#[test]
fn check_config_refuses_what_run_would_trip_on() {
    let check = |text: &str| {
        let file = config_file(text);
        let out = cohortflow(&["check-config", file.path().to_str().expect("path")], &[], b"");
        (out.status.success(), stderr(&out))
    };
    let (ok, err) = check("[log]\nlevel = \"!!!\"\n");
    assert!(!ok && err.contains("log.level"), "{err}");
    let (ok, err) =
        check("[[funnel]]\nname = \"f\"\nwindow = \"1h\"\nsteps = [{ event = \"a\", where = { x = nan } }]\n");
    assert!(!ok && err.contains("funnel[0].steps[0].where.x"), "{err}");
    let dir = tempfile::tempdir().expect("tmp");
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"").expect("write");
    let (ok, err) = check(&format!("state_dir = \"{}\"\n[kafka]\ntopics = [\"t\"]\n", blocker.display()));
    assert!(!ok && err.contains("state_dir") && err.contains("not a directory"), "{err}");
    let (ok, err) = check(&format!("state_dir = \"{}/below\"\n[kafka]\ntopics = [\"t\"]\n", blocker.display()));
    assert!(!ok && err.contains("state_dir"), "{err}");
    let (ok, err) = check(&format!("state_dir = \"{}/fine\"\n[kafka]\ntopics = [\"t\"]\n", dir.path().display()));
    assert!(ok, "{err}");
}

#[test]
fn generator_flags_are_bounded_and_named() {
    for (args, flag) in [
        (&["demo", "--speed", "1e12"][..], "--speed"),
        (&["demo", "--speed", "0"], "--speed"),
        (&["demo", "--users-per-day", "1e9"], "--users-per-day"),
        (&["demo", "--backfill-days", "100000"], "--backfill-days"),
        (&["generate", "--start-ms", "9223372036854775807"], "--start-ms"),
        (&["generate", "--start-ms", "4102444000000", "--days", "2"], "--start-ms"),
        (&["generate", "--users-per-day", "nan"], "--users-per-day"),
        (&["generate", "--days", "0"], "--days"),
        (&["loadgen", "--rate=-1"], "--rate"),
    ] {
        let out = cohortflow(args, &[], b"");
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr(&out).contains(flag), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn replay_fails_when_the_figures_cannot_be_written() {
    let input = b"{\"user_id\":\"u\",\"event\":\"e\",\"ts\":1790000000000}\n";
    // Standard output closed, as `>&-` leaves it.
    let mut child = Command::new("sh")
        .args(["-c", "exec \"$0\" replay - >&-", env!("CARGO_BIN_EXE_cohortflow")])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child.stdin.take().expect("stdin").write_all(input).expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("standard output is closed"), "{}", stderr(&out));
    // A full disk is an error too; /dev/null is fine.
    for (target, ok) in [("/dev/full", false), ("/dev/null", true)] {
        let status = Command::new("sh")
            .args(["-c", &format!("exec \"$0\" replay - < /dev/null > {target}"), env!("CARGO_BIN_EXE_cohortflow")])
            .stderr(Stdio::null())
            .status()
            .expect("spawn");
        assert_eq!(status.success(), ok, "{target}");
    }
}

#[test]
fn replay_counts_the_first_record_after_a_byte_order_mark_and_lone_crs() {
    let mut input = "\u{feff}".as_bytes().to_vec();
    input.extend_from_slice(b"{\"user_id\":\"a\",\"event\":\"e\",\"ts\":1790000000000}\r");
    input.extend_from_slice(b"{\"user_id\":\"b\",\"event\":\"e\",\"ts\":1790000000001}\r");
    let long = "x".repeat(300);
    input.extend_from_slice(format!("{{\"user_id\":\"{long}\",\"event\":\"e\",\"ts\":1790000000002}}\r").as_bytes());
    let out = cohortflow(&["replay", "-"], &[("RUST_LOG", "warn")], &input);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l == "cohortflow_events_ingested_total 2"), "{text}");
    assert!(text.lines().any(|l| l == r#"cohortflow_events_rejected_total{reason="bad_user_id"} 1"#), "{text}");
    assert!(text.lines().any(|l| l == r#"cohortflow_events_rejected_total{reason="invalid_json"} 0"#), "{text}");
    assert!(text.lines().any(|l| l == "cohortflow_tracked_users 2"), "{text}");
}
