//! `cohortflow run` against a real Kafka-protocol broker (nisshi, started on
//! a free loopback port for each test; `scripts/test.sh` installs it):
//! the same events through `run` and `replay` give the same figures, also
//! across `kill -9` crashes, two group members, a paused broker, dead
//! letters and a corrupt or locked snapshot; and the fetch queue `run` reads
//! messages from, whose wait an event on the consumer's queue ends.
//!
//! The tests share two cores, so they take turns (one lock), and each has
//! its own broker, topics and group.
//!
//! Needs tools from outside the crate: built with the `integration-tests`
//! feature only (`scripts/test.sh` installs the tools and turns it on).
#![cfg(feature = "integration-tests")]

mod common;

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use cohortflow::source::fetch::FetchQueue;
use rdkafka::Message;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Headers;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use common::Process;

static TURN: Mutex<()> = Mutex::new(());

const BIN: &str = env!("CARGO_BIN_EXE_cohortflow");
/// 2026-10-10: the data ends well before today, so nothing is too early.
const START: i64 = 1_791_590_400_000;

fn broker_binary() -> PathBuf {
    if let Ok(p) = std::env::var("COHORTFLOW_TEST_BROKER") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let p = Path::new(&home).join(".cache/kbroker/bin/nisshi");
    assert!(p.exists(), "no broker at {}: run scripts/test.sh, which installs nisshi", p.display());
    p
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

struct Broker {
    child: Process,
    addr: String,
}

impl Broker {
    fn start() -> Broker {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(broker_binary())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", &format!("memory://t{port}/")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start broker");
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "broker did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker { child: Process(child), addr }
    }

    fn create_topic(&self, name: &str, partitions: u32) {
        let status = Command::new(broker_binary())
            .args(["topic", "create", name, "--partitions", &partitions.to_string()])
            .args(["--broker", &format!("tcp://{}", self.addr)])
            .stdout(Stdio::null())
            .status()
            .expect("topic create");
        assert!(status.success(), "topic create failed");
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill").args([sig, &self.child.0.id().to_string()]).status().expect("kill");
        assert!(status.success());
    }
}

impl Drop for Broker {
    /// A paused broker is woken before its `Process` kills it.
    fn drop(&mut self) {
        self.signal("-CONT");
    }
}

struct Daemon {
    child: Process,
    addr: String,
}

impl Daemon {
    fn start(config: &Path) -> Daemon {
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--config"]).arg(config);
        let (child, addr) = common::spawn_serving(cmd);
        Daemon { child: Process(child), addr }
    }

    /// SIGKILL, as `Process` does when dropped.
    fn kill9(self) {}

    fn terminate(mut self) {
        // A client holding a half-sent request must not hold the shutdown up.
        let _held = std::net::TcpStream::connect(&self.addr).map(|mut s| {
            let _ = std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
            s
        });
        let _ = Command::new("kill").args(["-TERM", &self.child.0.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Ok(Some(status)) = self.child.0.try_wait() {
                assert!(status.success(), "daemon exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "daemon did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.0.try_wait(), Ok(None))
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        get(&self.addr, path)
    }

    fn metrics(&self) -> Metrics {
        self.get("/metrics").map(|(_, b)| parse(&b)).unwrap_or_default()
    }
}

fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    common::get(addr, path)
}

/// A consumer of the dead-letter topic, from its start.
fn dead_letter_reader(broker: &Broker, topic: &str) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", format!("dlq-reader-{}", free_port()))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

type Metrics = BTreeMap<String, f64>;

/// The figures to compare, keyed by series.
const FIGURES: &[&str] = &[
    "cohortflow_cohort_users{",
    "cohortflow_retained_users{",
    "cohortflow_active_users{",
    "cohortflow_new_users{",
    "cohortflow_known_users{",
    "cohortflow_lifecycle_users{",
    "cohortflow_stickiness_users{",
    "cohortflow_funnel_users{",
    "cohortflow_funnel_conversions_total{",
    "cohortflow_funnel_time_to_convert_seconds_count{",
    "cohortflow_trend_events{",
    "cohortflow_trend_users{",
    "cohortflow_trend_events_total{",
    "cohortflow_events_ingested_total",
    "cohortflow_events_rejected_total{",
];

fn parse(text: &str) -> Metrics {
    text.lines()
        .filter(|l| FIGURES.iter().any(|f| l.starts_with(f)))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn read_count(m: &Metrics) -> f64 {
    m.iter()
        .filter(|(k, _)| {
            k.starts_with("cohortflow_events_ingested_total") || k.starts_with("cohortflow_events_rejected_total")
        })
        .map(|(_, v)| v)
        .sum()
}

fn sum(parts: &[Metrics]) -> Metrics {
    let mut out = Metrics::new();
    for m in parts {
        for (k, v) in m {
            *out.entry(k.clone()).or_default() += v;
        }
    }
    out
}

struct Setup {
    _dir: tempfile::TempDir,
    config: PathBuf,
    events: PathBuf,
    lines: usize,
    state_dir: PathBuf,
}

/// The definitions of the ClickHouse cross-check.
const DEFINITIONS: &str = include_str!("fixtures/definitions.toml");

fn setup(broker: &Broker, name: &str, days: i64, users_per_day: u32, dead_letters: Option<&str>) -> Setup {
    let dir = tempfile::tempdir().expect("tmp");
    let topic = format!("events-{name}-{}", free_port());
    broker.create_topic(&topic, 4);
    let events = dir.path().join("events.ndjson");
    let out = Command::new(BIN)
        .args(["generate", "--days", &days.to_string(), "--users-per-day", &users_per_day.to_string()])
        .args(["--start-ms", &START.to_string(), "--seed", "7"])
        .output()
        .expect("generate");
    assert!(out.status.success());
    std::fs::write(&events, &out.stdout).expect("write events");
    let lines = out.stdout.iter().filter(|&&b| b == b'\n').count();
    let state_dir = dir.path().join("state");
    let dlq = dead_letters.map(|t| format!("dead_letter_topic = \"{t}\"\n")).unwrap_or_default();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"state_dir = "{state}"
history_days = 63
week_start = "sunday"
snapshot_interval = "500ms"
shutdown_timeout = "30s"
[http]
listen = "127.0.0.1:0"
[kafka]
brokers = "{brokers}"
topics = ["{topic}"]
group_id = "g-{topic}"
# More threads than this machine has cores, and partitions spread unevenly.
workers = 3
{dlq}
[kafka.options]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
"topic.metadata.refresh.interval.ms" = "2000"
{DEFINITIONS}"#,
            state = state_dir.display(),
            brokers = broker.addr,
        ),
    )
    .expect("config");
    Setup { _dir: dir, config, events, lines, state_dir }
}

fn topic_of(setup: &Setup) -> String {
    let text = std::fs::read_to_string(&setup.config).expect("config");
    text.lines().find_map(|l| l.strip_prefix("topics = [\"")?.strip_suffix("\"]").map(str::to_owned)).expect("topic")
}

fn produce(broker: &Broker, setup: &Setup, rate: u32) -> Process {
    let child = Command::new(BIN)
        .args(["loadgen", "--brokers", &broker.addr, "--topic", &topic_of(setup)])
        .args(["--rate", &rate.to_string()])
        .arg(&setup.events)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("loadgen");
    Process(child)
}

fn replay(setup: &Setup) -> Metrics {
    let out = Command::new(BIN)
        .args(["replay", "--config"])
        .arg(&setup.config)
        .arg(&setup.events)
        .env("RUST_LOG", "warn")
        .output()
        .expect("replay");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    parse(&String::from_utf8_lossy(&out.stdout))
}

/// Waits until the instances together have read every line.
fn drained(daemons: &[&Daemon], lines: usize, within: Duration) -> Vec<Metrics> {
    let deadline = Instant::now() + within;
    loop {
        let all: Vec<Metrics> = daemons.iter().map(|d| d.metrics()).collect();
        let read: f64 = all.iter().map(read_count).sum();
        if read as usize >= lines {
            // One more publish interval, so that every figure is current.
            std::thread::sleep(Duration::from_millis(600));
            return daemons.iter().map(|d| d.metrics()).collect();
        }
        assert!(Instant::now() < deadline, "only {read} of {lines} lines read");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn assert_same(got: &Metrics, want: &Metrics) {
    let mut diffs = Vec::new();
    for key in want.keys().chain(got.keys()) {
        let (a, b) = (got.get(key), want.get(key));
        if a != b {
            diffs.push(format!("{key}: run={a:?} replay={b:?}"));
        }
    }
    diffs.dedup();
    assert!(diffs.is_empty(), "{} differing series, e.g.:\n{}", diffs.len(), diffs[..diffs.len().min(20)].join("\n"));
    assert!(want.len() > 50, "too few series compared: {}", want.len());
}

#[test]
fn run_equals_replay_and_survives_kill_9() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let broker = Broker::start();
    let setup = setup(&broker, "crash", 6, 400, None);
    let want = replay(&setup);
    // The fixture's week definition and rolling windows, and the
    // lifecycle by day and week, are among the figures compared.
    for series in ["retention=\"weekly\"", "retention=\"rolling\"", "granularity=\"week\",status=\"dormant\""] {
        assert!(want.iter().any(|(k, v)| k.contains(series) && *v > 0.0), "no {series} figures to compare");
    }

    let mut producer = produce(&broker, &setup, 1000);
    let mut rng = fastrand::Rng::with_seed(42);
    let mut daemon = Daemon::start(&setup.config);
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(rng.u64(1500..4000)));
        daemon.kill9();
        daemon = Daemon::start(&setup.config);
    }
    assert!(producer.0.wait().expect("loadgen").success());
    let got = drained(&[&daemon], setup.lines, Duration::from_secs(180));
    assert_same(&got[0], &want);

    // A clean stop and start changes nothing either.
    daemon.terminate();
    let daemon = Daemon::start(&setup.config);
    let got = drained(&[&daemon], setup.lines, Duration::from_secs(60));
    assert_same(&got[0], &want);
    let (status, _) = daemon.get("/readyz").expect("readyz");
    assert_eq!(status, 200);
}

#[test]
fn two_members_sum_to_replay_and_take_over() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let broker = Broker::start();
    let setup = setup(&broker, "pair", 5, 400, None);
    let want = replay(&setup);
    let a = Daemon::start(&setup.config);
    let b = Daemon::start(&setup.config);
    let mut producer = produce(&broker, &setup, 0);
    assert!(producer.0.wait().expect("loadgen").success());
    let both = drained(&[&a, &b], setup.lines, Duration::from_secs(120));
    let counted: Vec<f64> = both.iter().map(read_count).collect();
    assert!(counted.iter().all(|&c| c > 0.0), "both members must own partitions: {counted:?}");
    let mut total = sum(&both);
    // Sums of gauges per member are what Prometheus recording rules add.
    total.retain(|_, v| *v != 0.0);
    let mut want_nonzero = want.clone();
    want_nonzero.retain(|_, v| *v != 0.0);
    assert_same(&total, &want_nonzero);

    // One member dies; the other restores its partitions from the shared
    // state directory and still accounts for every line.
    b.kill9();
    let alone = drained(&[&a], setup.lines, Duration::from_secs(120));
    assert_same(&alone[0], &want);
}

#[test]
fn paused_broker_then_recovery_and_dead_letters() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let broker = Broker::start();
    let dlq = format!("dead-{}", free_port());
    broker.create_topic(&dlq, 1);
    let setup = setup(&broker, "pause", 4, 400, Some(&dlq));
    let want = replay(&setup);
    let daemon = Daemon::start(&setup.config);
    let mut producer = produce(&broker, &setup, 2000);
    std::thread::sleep(Duration::from_secs(8));

    broker.signal("-STOP");
    let paused_at = Instant::now();
    let mut saw_not_ready = false;
    let before = daemon.metrics();
    while paused_at.elapsed() < Duration::from_secs(30) {
        let (status, _) = daemon.get("/readyz").expect("the daemon keeps serving");
        saw_not_ready |= status == 503;
        std::thread::sleep(Duration::from_millis(500));
    }
    let during = daemon.metrics();
    assert!(!during.is_empty(), "figures still served while the broker is away");
    assert!(read_count(&during) >= read_count(&before));
    assert!(saw_not_ready, "readyz never said not ready while the broker was paused");
    broker.signal("-CONT");

    assert!(producer.0.wait().expect("loadgen").success());
    let got = drained(&[&daemon], setup.lines, Duration::from_secs(180));
    assert_same(&got[0], &want);
    let deadline = Instant::now() + Duration::from_secs(30);
    while daemon.get("/readyz").map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "never ready again");
        std::thread::sleep(Duration::from_millis(250));
    }

    // Every rejected message is in the dead-letter topic, unchanged, with
    // its reason.
    let rejected: f64 =
        want.iter().filter(|(k, _)| k.starts_with("cohortflow_events_rejected_total")).map(|(_, v)| v).sum();
    assert!(rejected > 0.0);
    let consumer = dead_letter_reader(&broker, &dlq);
    let mut by_reason: BTreeMap<String, f64> = BTreeMap::new();
    let original: Vec<Vec<u8>> =
        std::fs::read(&setup.events).expect("events").split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while by_reason.values().sum::<f64>() < rejected && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) {
            let headers = m.headers().expect("headers");
            let reason = headers
                .iter()
                .find(|h| h.key == "cohortflow.reason")
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .expect("reason header");
            assert!(headers.iter().any(|h| h.key == "cohortflow.offset"));
            assert!(original.iter().any(|l| l.as_slice() == m.payload().unwrap_or(b"")), "payload changed");
            *by_reason.entry(reason).or_default() += 1.0;
        }
    }
    for (reason, n) in &by_reason {
        let key = format!("cohortflow_events_rejected_total{{reason=\"{reason}\"}}");
        assert_eq!(want.get(&key), Some(n), "{reason}");
    }
    assert_eq!(by_reason.values().sum::<f64>(), rejected);
}

#[test]
fn corrupt_or_locked_snapshot_pauses_its_partition_only() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let broker = Broker::start();
    let setup = setup(&broker, "corrupt", 2, 300, None);
    let mut producer = produce(&broker, &setup, 0);
    assert!(producer.0.wait().expect("loadgen").success());
    let daemon = Daemon::start(&setup.config);
    drained(&[&daemon], setup.lines, Duration::from_secs(120));
    daemon.terminate();

    let topic = topic_of(&setup);
    let victim = setup.state_dir.join(format!("group-g-{topic}/{topic}-2.snapshot"));
    let mut bytes = std::fs::read(&victim).expect("snapshot exists");
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&victim, &bytes).expect("corrupt it");
    // Partition 1's lock held by another process (this one), as by a
    // member the group has already replaced that still writes its files.
    let lock =
        std::fs::File::create(setup.state_dir.join(format!("group-g-{topic}/{topic}-1.lock"))).expect("lock file");
    lock.try_lock().expect("take the lock");
    let held = std::fs::read(setup.state_dir.join(format!("group-g-{topic}/{topic}-1.snapshot"))).expect("snapshot 1");

    let mut daemon = Daemon::start(&setup.config);
    let deadline = Instant::now() + Duration::from_secs(60);
    let refused = format!("cohortflow_snapshot_refused{{topic=\"{topic}\",partition=\"2\",reason=\"corrupt\"}} 1");
    let locked = format!("cohortflow_snapshot_refused{{topic=\"{topic}\",partition=\"1\",reason=\"locked\"}} 1");
    loop {
        let text = daemon.get("/metrics").map(|r| r.1).unwrap_or_default();
        if text.contains(&refused) && text.contains(&locked) && text.contains("cohortflow_owned_partitions 4") {
            break;
        }
        assert!(Instant::now() < deadline, "refusal never reported");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(daemon.get("/readyz").map(|r| r.0), Some(503));
    assert!(daemon.alive(), "a bad snapshot must not crash the daemon");
    // The other partitions were restored and are served.
    let m = daemon.metrics();
    assert!(read_count(&m) > 0.0);
    // The file is left for the operator, untouched; so is the locked one.
    assert_eq!(std::fs::read(&victim).expect("still there"), bytes);
    daemon.terminate();
    let after = std::fs::read(setup.state_dir.join(format!("group-g-{topic}/{topic}-1.snapshot"))).expect("snapshot 1");
    assert_eq!(after, held, "a partition locked elsewhere had its snapshot overwritten");
}

#[test]
fn huge_messages_are_rejected_and_dead_lettered() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let broker = Broker::start();
    let dlq = format!("dead-{}", free_port());
    broker.create_topic(&dlq, 1);
    let setup = setup(&broker, "huge", 1, 50, Some(&dlq));
    let topic = topic_of(&setup);

    // Valid JSON, one field padded past 1 MiB; then an ordinary event.
    let mut huge = br#"{"user_id":"big","event":"view","ts":1791600000000,"pad":""#.to_vec();
    huge.resize((1 << 20) + 100, b'x');
    huge.extend_from_slice(b"\"}");
    let normal = br#"{"user_id":"small","event":"view","ts":1791600000000}"#;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("message.max.bytes", "4194304")
        .create()
        .expect("producer");
    for payload in [&huge[..], &normal[..]] {
        producer.send(BaseRecord::<(), [u8]>::to(&topic).payload(payload)).expect("queue");
    }
    producer.flush(Duration::from_secs(30)).expect("the broker takes a 1 MiB message");

    let daemon = Daemon::start(&setup.config);
    let got = drained(&[&daemon], 2, Duration::from_secs(120));
    assert_eq!(got[0].get(r#"cohortflow_events_rejected_total{reason="too_large"}"#), Some(&1.0));
    assert_eq!(got[0].get("cohortflow_events_ingested_total"), Some(&1.0));

    let consumer = dead_letter_reader(&broker, &dlq);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "the huge message never reached the dead-letter topic");
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) {
            assert_eq!(m.payload(), Some(&huge[..]), "forwarded unchanged");
            let reason = m.headers().and_then(|h| h.iter().find(|h| h.key == "cohortflow.reason")?.value);
            assert_eq!(reason, Some(&b"too_large"[..]));
            break;
        }
    }
}

#[test]
fn an_event_for_the_consumer_ends_the_wait_on_the_fetch_queue() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let broker = Broker::start();
    let topic = format!("wake-{}", free_port());
    broker.create_topic(&topic, 1);
    let (consumer, queue) = forwarding_consumer(&broker, "wake");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumer.assignment().map_or(0, |a| a.count()) == 0 {
        assert!(Instant::now() < deadline, "never assigned");
        let _ = consumer.poll(Duration::ZERO);
        assert!(queue.consume(Duration::from_millis(100), 1).is_empty(), "the topic is empty");
    }
    while queue.events_waiting() {
        assert!(Instant::now() < deadline, "events never served");
        let _ = consumer.poll(Duration::ZERO);
    }

    // The topic is empty: a wait of a minute ends only when the
    // unsubscription's rebalance comes to the consumer's queue.
    let unsubscriber = {
        let consumer = consumer.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            consumer.unsubscribe();
        })
    };
    let waited = Instant::now();
    assert!(queue.consume(Duration::from_secs(60), 16).is_empty());
    assert!(waited.elapsed() < Duration::from_secs(30), "the wait was not ended: {:?}", waited.elapsed());
    unsubscriber.join().expect("unsubscribed");
    assert!(queue.events_waiting(), "the rebalance waits for the poll");
    while queue.events_waiting() {
        assert!(Instant::now() < deadline, "events never served");
        let _ = consumer.poll(Duration::ZERO);
    }

    // Once the queue is gone, the consumer's callback (which held the
    // queue to wake it) does nothing: a new assignment's event comes, is
    // served, and the consumer closes.
    drop(queue);
    consumer.subscribe(&[&topic]).expect("subscribe again");
    while consumer.assignment().map_or(0, |a| a.count()) == 0 {
        assert!(Instant::now() < deadline, "never assigned again");
        let _ = consumer.poll(Duration::from_millis(100));
    }
    let (closed, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(consumer);
        let _ = closed.send(());
    });
    assert!(wait.recv_timeout(Duration::from_secs(30)).is_ok(), "the consumer did not close");
}

/// Forwards each assigned partition to a fetch queue before it is
/// assigned, as `run` does.
struct Forwarding {
    queue: OnceLock<Weak<FetchQueue<Forwarding>>>,
}

/// A consumer of a new group, reading from the start, with its fetch
/// queue made as `run` makes it, assigned partitions forwarded to it.
fn forwarding_consumer(broker: &Broker, group: &str) -> (Arc<BaseConsumer<Forwarding>>, Arc<FetchQueue<Forwarding>>) {
    let consumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", format!("{group}-{}", free_port()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create_with_context(Forwarding { queue: OnceLock::new() })
        .expect("consumer");
    let (consumer, queue) = FetchQueue::new(consumer);
    let queue = Arc::new(queue.expect("a fetch queue"));
    assert!(consumer.context().queue.set(Arc::downgrade(&queue)).is_ok());
    (consumer, queue)
}

impl ClientContext for Forwarding {}

impl ConsumerContext for Forwarding {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let (Rebalance::Assign(tpl), Some(queue)) = (rebalance, self.queue.get().and_then(Weak::upgrade)) {
            assert!(queue.take_partitions(tpl), "a partition not forwarded");
        }
    }
}

/// Sends `range` of the fetch test's messages: message i goes to partition
/// i % 3 with payload "payload i", key "key i" when i is even, and
/// timestamp START + i.
fn produce_numbered(producer: &BaseProducer, topic: &str, range: std::ops::Range<i64>) {
    for i in range {
        let (payload, key) = (format!("payload {i}"), format!("key {i}"));
        let mut record = BaseRecord::to(topic).payload(&payload).partition((i % 3) as i32).timestamp(START + i);
        if i % 2 == 0 {
            record = record.key(&key);
        }
        while let Err((_, back)) = producer.send(record) {
            producer.poll(Duration::from_millis(50));
            record = back;
        }
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

#[test]
fn the_fetch_queue_hands_over_every_message_in_order_many_a_call() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let broker = Broker::start();
    let topic = format!("fetch-{}", free_port());
    broker.create_topic(&topic, 3);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    const N: i64 = 6000;
    produce_numbered(&producer, &topic, 0..N);

    let (consumer, queue) = forwarding_consumer(&broker, "fetch");
    consumer.subscribe(&[&topic]).expect("subscribe");

    let mut next = [0i64; 3];
    let (mut seen, mut calls) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen < N {
        assert!(Instant::now() < deadline, "only {seen} of {N} messages came");
        if let Some(Ok(m)) = consumer.poll(Duration::ZERO) {
            panic!("message {} came through the consumer's own queue", m.offset());
        }
        let fetched = queue.consume(Duration::from_millis(100), 64);
        assert!(fetched.len() <= 64, "more than the room given");
        calls += usize::from(!fetched.is_empty());
        for m in fetched.iter() {
            let m = m.expect("no consumption error");
            let p = usize::try_from(m.partition()).expect("a partition");
            assert_eq!(m.offset(), next[p], "partition {p} in offset order, none missed");
            next[p] += 1;
            let i = m.offset() * 3 + p as i64;
            assert_eq!(m.topic(), topic);
            assert_eq!(m.payload(), format!("payload {i}").as_bytes());
            assert_eq!(m.key(), (i % 2 == 0).then(|| format!("key {i}")).as_deref().map(str::as_bytes));
            assert_eq!(m.timestamp_ms(), Some(START + i));
            seen += 1;
        }
    }
    assert_eq!(next, [N / 3; 3]);
    assert!(calls * 4 < N as usize, "{calls} calls for {N} messages: not many a call");

    // With messages waiting in the queue, the consumer's reference is
    // dropped first, then the queue's: the queue destroys its messages
    // (which would otherwise hold the partitions, and the consumer's close
    // with them), then lets the consumer close.
    produce_numbered(&producer, &topic, N..N + 3000);
    let waiting = Instant::now() + Duration::from_secs(20);
    while queue.consume(Duration::from_millis(100), 1).is_empty() {
        assert!(Instant::now() < waiting, "the new messages never came");
    }
    std::thread::sleep(Duration::from_millis(500));
    let (closed, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(consumer);
        drop(queue);
        let _ = closed.send(());
    });
    assert!(wait.recv_timeout(Duration::from_secs(30)).is_ok(), "the consumer did not close");
}
