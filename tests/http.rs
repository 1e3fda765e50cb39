//! The HTTP listener under abuse, on real processes: half-sent requests
//! are dropped after the header-read timeout, connections past the cap are
//! closed at once while `/healthz` still answers, and SIGTERM ends the
//! process on time whatever a client holds open.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Process, get, spawn_serving};

const BIN: &str = env!("CARGO_BIN_EXE_cohortflow");

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("temp");
    f.write_all(text.as_bytes()).expect("write");
    f
}

/// `replay --listen` of no input: it serves until stopped.
fn serving_replay(config: &tempfile::NamedTempFile) -> (Child, String) {
    serving_replay_with_files(config, None)
}

/// The same, with at most `files` open file descriptors when given (a
/// replay that serves uses some 12 of its own).
fn serving_replay_with_files(config: &tempfile::NamedTempFile, files: Option<u32>) -> (Child, String) {
    let mut cmd = Command::new("sh");
    let limit = files.map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
    cmd.args(["-c", "ulimit -n $0 2>/dev/null || ulimit -S -n $0; exec \"$@\"", &limit, BIN]);
    cmd.args(["replay", "--listen", "127.0.0.1:0", "--config"]).arg(config.path()).stdin(Stdio::null());
    spawn_serving(cmd)
}

/// A connection that sends half a request and then waits.
fn half_open(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").expect("write");
    s
}

/// Whether the server closed `s` within `within` (end of stream or reset).
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).expect("timeout");
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

fn metric(addr: &str, name: &str) -> f64 {
    let (_, body) = get(addr, "/metrics").expect("scrape");
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing"))
}

#[test]
fn a_half_sent_request_is_dropped_after_the_header_read_timeout() {
    let config = config_file("[http]\nheader_read_timeout = \"1s\"\n");
    let (child, addr) = serving_replay(&config);
    let _daemon = Process(child);
    let mut s = half_open(&addr);
    let started = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(5)), "a half-sent request was held for 5 s");
    assert!(started.elapsed() >= Duration::from_millis(800), "closed before the timeout");
    // An idle connection with no request at all goes the same way.
    let mut idle = TcpStream::connect(&addr).expect("connect");
    assert!(closed_within(&mut idle, Duration::from_secs(5)), "an idle connection was held for 5 s");
}

#[test]
fn healthz_answers_while_twice_the_cap_of_half_open_connections_are_held() {
    // 40 descriptors: the 32 connections held would use them all up
    // without the cap, and the listener could accept no probe.
    let config = config_file("[http]\nmax_connections = 16\nheader_read_timeout = \"60s\"\n");
    let (child, addr) = serving_replay_with_files(&config, Some(40));
    let _daemon = Process(child);
    let held: Vec<TcpStream> = (0..32).map(|_| half_open(&addr)).collect();
    std::thread::sleep(Duration::from_millis(300));
    for round in 0..5 {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match get(&addr, "/healthz") {
                Some((200, body)) => {
                    assert_eq!(body, "ok\n");
                    break;
                }
                _ => assert!(Instant::now() < deadline, "round {round}: /healthz did not answer within 3 s"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(metric(&addr, "cohortflow_http_connections_refused_total") >= 16.0);
    // The general slots are all still held by the half-sent requests.
    assert!(metric(&addr, "cohortflow_http_connections") >= 14.0);
    drop(held);
}

/// Sends SIGTERM to `child` and returns how long it took to exit, and how.
fn terminate(child: &mut Child, within: Duration) -> (Duration, std::process::ExitStatus) {
    let sent = Instant::now();
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return (sent.elapsed(), status);
        }
        assert!(sent.elapsed() < within, "still running {within:?} after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_ends_demo_and_replay_on_time_whatever_a_client_holds() {
    let mut cmd = Command::new(BIN);
    cmd.args(["demo", "--listen", "127.0.0.1:0", "--backfill-days", "2", "--users-per-day", "100"]);
    let (child, addr) = spawn_serving(cmd);
    let mut demo = Process(child);
    let _held = half_open(&addr);
    std::thread::sleep(Duration::from_millis(300));
    let (took, status) = terminate(&mut demo.0, Duration::from_secs(5));
    assert!(status.success(), "demo exited with {status}");
    assert!(took < Duration::from_secs(3), "demo took {took:?}");

    let config = config_file("");
    let (child, addr) = serving_replay(&config);
    let mut replay = Process(child);
    let _held = half_open(&addr);
    std::thread::sleep(Duration::from_millis(300));
    let (took, status) = terminate(&mut replay.0, Duration::from_secs(5));
    assert!(status.success(), "replay exited with {status}");
    assert!(took < Duration::from_secs(3), "replay took {took:?}");
}

#[test]
fn replay_binds_its_port_before_reading_input() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").to_string();
    // Standard input that never ends: the error must come without it.
    let mut child = Command::new(BIN)
        .args(["replay", "--listen", &port])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("replay read its input before binding a taken port");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut err = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut err).expect("read");
    assert!(err.contains("--listen") && err.contains(&port), "{err}");
}
