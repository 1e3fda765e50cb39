//! `run` as a process, where no broker is needed to tell: members of one
//! group sharing a state directory, SIGTERM on time while an HTTP client holds a
//! half-sent request (with the broker unreachable, the worst case), and a
//! log that says an outage once per cause and interval, not hundreds of
//! times a second.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Process, spawn_serving, spawn_serving_logged};

const BIN: &str = env!("CARGO_BIN_EXE_cohortflow");

fn config(dir: &Path, name: &str, group: &str, shutdown_timeout: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    // Nothing listens on port 1: the broker is unreachable.
    let text = format!(
        "state_dir = \"{}\"\nshutdown_timeout = \"{shutdown_timeout}\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [kafka]\nbrokers = \"127.0.0.1:1\"\ntopics = [\"events\"]\ngroup_id = \"{group}\"\n",
        dir.join("state").display()
    );
    std::fs::write(&path, text).expect("config");
    path
}

fn start(config: &Path) -> Process {
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config"]).arg(config);
    Process(spawn_serving(cmd).0)
}

#[test]
fn members_of_one_group_share_a_state_dir() {
    // Members of a group share one state_dir, so that one takes a dead
    // member's partitions over from its snapshots: the lock is taken per
    // partition (see tests/kafka.rs), not on the directory.
    let dir = tempfile::tempdir().expect("tmp");
    let mut first = start(&config(dir.path(), "a", "orders", "5s"));
    let mut second = start(&config(dir.path(), "b", "orders", "5s"));
    std::thread::sleep(Duration::from_secs(3));
    assert!(first.0.try_wait().expect("wait").is_none(), "the first member stopped");
    assert!(second.0.try_wait().expect("wait").is_none(), "the second member stopped");
}

#[test]
fn sigterm_ends_run_within_its_shutdown_timeout_whatever_a_client_holds() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config"]).arg(config(dir.path(), "a", "g", "5s"));
    let (child, addr) = spawn_serving(cmd);
    let mut daemon = Process(child);
    let mut held = TcpStream::connect(&addr).expect("connect");
    held.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").expect("write");
    std::thread::sleep(Duration::from_millis(500));
    let sent = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &daemon.0.id().to_string()]).status().expect("kill").success());
    loop {
        if daemon.0.try_wait().expect("wait").is_some() {
            break;
        }
        // The timeout, and a little for the process to end.
        assert!(sent.elapsed() < Duration::from_secs(7), "still running {:?} after SIGTERM", sent.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_unreachable_broker_is_logged_once_per_cause_and_interval() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config"]).arg(config(dir.path(), "a", "g", "5s"));
    let (child, _, logged) = spawn_serving_logged(cmd);
    let _daemon = Process(child);
    std::thread::sleep(Duration::from_secs(12));
    let lines = logged.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let warnings: Vec<&String> = lines.iter().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
    // Some five causes, each at start and after each 10 s: about 15 lines.
    // Without the limit it was some 40 a second.
    assert!(warnings.len() <= 30, "{} lines in 12 s:\n{}", warnings.len(), lines.join("\n"));
    assert!(warnings.iter().any(|l| l.contains("held_back=") && !l.contains("held_back=0")), "{lines:?}");
}
