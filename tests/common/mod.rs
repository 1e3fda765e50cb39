//! Helpers shared by the integration tests that run cohortflow as a process
//! and talk to it over HTTP on 127.0.0.1.
#![allow(dead_code)] // each test file uses its own subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A child process killed when dropped.
pub(crate) struct Process(pub(crate) Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` (a cohortflow command given `--listen 127.0.0.1:0`) and
/// returns it with the address it logged as bound. Its stderr keeps being
/// drained so that it never blocks on a full pipe.
pub(crate) fn spawn_serving(cmd: Command) -> (Child, String) {
    let (child, addr, _) = spawn_serving_logged(cmd);
    (child, addr)
}

/// The same, with the lines it logs after the address kept.
pub(crate) fn spawn_serving_logged(mut cmd: Command) -> (Child, String, Arc<Mutex<Vec<String>>>) {
    let mut child =
        cmd.env("RUST_LOG", "info").stderr(Stdio::piped()).stdout(Stdio::null()).spawn().expect("start cohortflow");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().expect("cohortflow exited before serving").expect("read stderr");
        if let Some(rest) = line.split("http://").nth(1) {
            break rest.split('/').next().expect("address").to_owned();
        }
    };
    let logged = Arc::new(Mutex::new(Vec::new()));
    let keep = logged.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            keep.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        }
    });
    (child, addr, logged)
}

/// A plain HTTP/1.1 GET: (status, body).
pub(crate) fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, text.split_once("\r\n\r\n")?.1.to_owned()))
}
