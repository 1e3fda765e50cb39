//! The `cohortflow` command: CLI, logging, signals; wiring only.

use std::io::{self, BufReader, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::info;

use cohortflow::allocator::{self, GrowthTrim};
use cohortflow::config::Config;
use cohortflow::engine::Engine;
use cohortflow::export::{Published, http, metrics};
use cohortflow::source::demo::{DEMO_CONFIG, Generator};
use cohortflow::source::file::replay_into;
use cohortflow::source::{kafka, loadgen};

#[derive(Parser)]
#[command(
    name = "cohortflow",
    version,
    about = "Real-time retention, activity and funnel figures as Prometheus metrics"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The most sign-ups a simulated day the generator makes: its users are
/// kept in memory, as are the engine's.
const MOST_USERS_PER_DAY: f64 = 1_000_000.0;
/// The fastest the demo's simulated time runs: a simulated day a second.
const MOST_SPEED: f64 = 86_400.0;
/// Events are from 1970 up to but not including 2100 (epoch ms).
const LAST_EVENT_MS: i64 = 4_102_444_800_000;

/// A positive number of sign-ups a day, at most [`MOST_USERS_PER_DAY`].
fn users_per_day(text: &str) -> Result<f64, String> {
    positive_at_most(text, MOST_USERS_PER_DAY)
}

/// A positive speed-up of simulated time, at most [`MOST_SPEED`].
fn speed(text: &str) -> Result<f64, String> {
    positive_at_most(text, MOST_SPEED)
}

fn positive_at_most(text: &str, most: f64) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(x) if x > 0.0 && x <= most => Ok(x),
        _ => Err(format!("must be a number more than 0 and at most {most}")),
    }
}

/// A rate of messages a second, 0 meaning as fast as possible.
fn rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err("must be a finite number of at least 0".into()),
    }
}

/// What the traffic generator simulates (`loadgen`, `generate`).
#[derive(Args)]
struct TrafficArgs {
    /// Simulated days of generated traffic (at most 3 650).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3650))]
    days: u32,
    /// Sign-ups per simulated day (at most 1 000 000).
    #[arg(long, default_value_t = 2000.0, value_parser = users_per_day)]
    users_per_day: f64,
    /// First simulated instant, epoch ms (default: `days` days before today,
    /// UTC); the traffic must end before 2100.
    #[arg(long, value_parser = clap::value_parser!(i64).range(0..LAST_EVENT_MS))]
    start_ms: Option<i64>,
    /// Random seed of the generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Only valid events: no hostile lines (benchmarks compare figures with ClickHouse).
    #[arg(long)]
    clean: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Built-in traffic through the engine in accelerated time; no Kafka, no config.
    Demo {
        /// Where /metrics and the JSON API are served.
        #[arg(long, default_value = "127.0.0.1:9464")]
        listen: SocketAddr,
        /// Simulated seconds per real second once the backfill is done (at
        /// most 86 400: a simulated day a second).
        #[arg(long, default_value_t = 600.0, value_parser = speed)]
        speed: f64,
        /// Days of history generated at start, as fast as possible (at most
        /// the demo's history, 35 days: older events would be too late).
        #[arg(long, default_value_t = 35, value_parser = clap::value_parser!(u32).range(0..=35))]
        backfill_days: u32,
        /// Sign-ups per simulated day (at most 1 000 000).
        #[arg(long, default_value_t = 2000.0, value_parser = users_per_day)]
        users_per_day: f64,
        /// Random seed of the generator.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// The daemon: consumes Kafka, snapshots state with offsets, serves metrics.
    Run {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// NDJSON through the engine as fast as it goes; prints the final metrics.
    Replay {
        /// The config file (defaults apply without one).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Keep serving the final figures here after the input ends.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Input files; `-` (the default) reads standard input.
        inputs: Vec<PathBuf>,
    },
    /// Produces events to Kafka, keyed by user id: generated traffic (the
    /// demo's generator) or the lines of NDJSON files.
    Loadgen {
        /// Bootstrap brokers.
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        /// Topic to produce to.
        #[arg(long, default_value = "events")]
        topic: String,
        /// Messages per second; 0 = as fast as possible.
        #[arg(long, default_value_t = 0.0, value_parser = rate)]
        rate: f64,
        /// Stop after this many messages (default: all of the input, or for
        /// generated traffic, `--days` of it).
        #[arg(long)]
        count: Option<u64>,
        #[command(flatten)]
        traffic: TrafficArgs,
        /// librdkafka producer settings, KEY=VALUE (repeatable).
        #[arg(long = "option", value_name = "KEY=VALUE")]
        options: Vec<String>,
        /// NDJSON files to produce instead of generated traffic (`-` = stdin).
        files: Vec<PathBuf>,
    },
    /// Writes generated traffic (the demo's generator) as NDJSON to stdout.
    Generate {
        #[command(flatten)]
        traffic: TrafficArgs,
    },
    /// Validates a config file (environment overrides included) and exits.
    CheckConfig {
        /// The config file.
        file: PathBuf,
    },
}

fn main() -> Result<()> {
    // Before any state grows (src/allocator.rs).
    let threshold = allocator::fix_mmap_threshold();
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => {
            let config = Config::load(Some(&file)).with_context(|| format!("{} is not valid", file.display()))?;
            for variable in &config.ignored_env {
                eprintln!("warning: environment variable {variable} names no config key; ignored");
            }
            // Only `run` writes snapshots.
            if config.kafka.is_some() {
                check_state_dir(&config).with_context(|| format!("{} is not valid", file.display()))?;
            }
            let e = &config.engine;
            println!(
                "{}: ok ({} retention definitions, {} funnels, {} trends, {} breakdowns, time zone {})",
                file.display(),
                e.retention.len(),
                e.funnels.len(),
                e.trends.len(),
                e.breakdowns.len(),
                e.timezone_name
            );
            Ok(())
        }
        Command::Run { config } => {
            let config = Config::load(Some(&config)).with_context(|| format!("{} is not valid", config.display()))?;
            init_logging(&config);
            info!(?threshold, "allocator's mmap threshold");
            run(config)
        }
        Command::Replay { config, listen, inputs } => {
            let config = Config::load(config.as_deref())?;
            init_logging(&config);
            replay(config, listen, inputs)
        }
        Command::Loadgen { brokers, topic, rate, count, traffic, options, files } => {
            tracing_subscriber::fmt().with_writer(io::stderr).with_ansi(io::stderr().is_terminal()).init();
            let mut producer = loadgen::Loadgen::new(&brokers, &topic, &options, rate)?;
            if files.is_empty() {
                let (generator, end) = traffic.generator()?;
                producer.generated(generator, end, count)?;
            } else {
                for f in &files {
                    producer.file(f, count)?;
                }
            }
            Ok(producer.finish()?)
        }
        Command::Generate { traffic } => {
            match generate(&traffic) {
                // `generate | head` is a normal way to use it.
                Err(e) if e.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe) => {
                    Ok(())
                }
                other => other,
            }
        }
        Command::Demo { listen, speed, backfill_days, users_per_day, seed } => {
            let mut config = Config::from_toml_str(DEMO_CONFIG)?;
            config.listen = listen;
            init_logging(&config);
            demo(config, speed, backfill_days, users_per_day, seed)
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log_level));
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_ansi(io::stderr().is_terminal()).with_writer(io::stderr);
    if config.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    for variable in &config.ignored_env {
        tracing::warn!(variable, "environment variable names no config key; ignored");
    }
}

/// Binds the HTTP listener; `what` names the setting it came from.
fn bind(listen: SocketAddr, what: &str) -> Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(listen).with_context(|| format!("{what}: cannot listen on {listen}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// How long the HTTP server lets requests in flight finish once stopped.
const HTTP_DRAIN: Duration = Duration::from_secs(1);

/// Serves the HTTP endpoints over `published` on `listener` until `stop`,
/// then for at most `drain`.
fn start_http(
    listener: std::net::TcpListener,
    published: &Arc<Published>,
    config: &Config,
    stop: CancellationToken,
    drain: Duration,
) -> Result<(SocketAddr, tokio::task::JoinHandle<io::Result<()>>)> {
    let registry = metrics::registry(published.clone(), config.engine.max_users)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let addr = listener.local_addr()?;
    let router = http::router(registry, published.clone());
    let server = http::serve(listener, router, config.http_limits, published.clone(), stop, drain);
    Ok((addr, tokio::spawn(server)))
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Whether `run` can write its snapshots under `state_dir`.
fn check_state_dir(config: &Config) -> Result<()> {
    cohortflow::checkpoint::check_writable(&config.state_dir)
        .map_err(|e| anyhow::anyhow!("config key `state_dir`: {e}"))
}

fn run(config: Config) -> Result<()> {
    if config.kafka.is_none() {
        bail!("config key `kafka`: `run` needs a [kafka] section (brokers, topics, group_id)");
    }
    check_state_dir(&config)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let shutdown = shutdown_on_signal();
        let published = Published::new();
        let http_stop = CancellationToken::new();
        // The deadline holds whatever HTTP clients do: the consumer gets
        // the shutdown timeout but the HTTP server's drain time, which
        // comes after it.
        let grace = Duration::from_millis(config.shutdown_timeout_ms as u64);
        let drain = HTTP_DRAIN.min(grace / 10);
        let grace = grace - drain;
        let listener = bind(config.listen, "config key `http.listen`")?;
        let (addr, server) = start_http(listener, &published, &config, http_stop.clone(), drain)?;
        info!("serving http://{addr}/metrics");

        let timing = kafka::Timing {
            snapshot_interval: Duration::from_millis(config.snapshot_interval_ms as u64),
            publish_interval: Duration::from_millis(200),
        };
        let stop = shutdown.clone();
        // A thread of its own, named, so that its CPU can be told apart
        // (the benchmark reads it); it reports its end through `source`.
        let (done, mut source) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("kafka-consumer".into())
            .spawn(move || {
                let _ = done.send(kafka::run(&config, timing, published, stop));
            })
            .context("cannot start the consumer thread")?;
        let result = tokio::select! {
            r = &mut source => r,
            _ = shutdown.cancelled() => {
                info!(grace_seconds = grace.as_secs_f64(), "signal received: stopping");
                match tokio::time::timeout(grace, &mut source).await {
                    Ok(r) => r,
                    Err(_) => {
                        http_stop.cancel();
                        let _ = server.await;
                        bail!("shutdown did not finish within shutdown_timeout; the last durable snapshot stands");
                    }
                }
            }
        };
        http_stop.cancel();
        server.await??;
        // No result: the thread ended in a panic (reported on stderr).
        result
            .map_err(|_| anyhow::anyhow!("the consumer thread stopped without a result"))?
            .map_err(anyhow::Error::from)
    })
}

fn replay(config: Config, listen: Option<SocketAddr>, inputs: Vec<PathBuf>) -> Result<()> {
    // Before the input is read: a taken port is told at once, not at the
    // end of a long backfill; and so is an output that would lose the
    // figures.
    let listener = listen.map(|addr| bind(addr, "--listen")).transpose()?;
    if stdout_is_closed() {
        bail!(
            "standard output is closed, so the figures would be lost; redirect it to a file \
             (or to /dev/null explicitly, with --listen)"
        );
    }
    let mut engine = Engine::new(Arc::new(config.engine.clone()));
    let inputs = if inputs.is_empty() { vec![PathBuf::from("-")] } else { inputs };
    let started = Instant::now();
    let now = now_ms();
    let mut last_report = Instant::now();
    let mut total = 0u64;
    for input in &inputs {
        let progress = |n: u64| {
            if last_report.elapsed() >= Duration::from_secs(5) {
                let secs = started.elapsed().as_secs_f64();
                eprintln!("{}: {} lines, {:.0} lines/s", input.display(), n, (total + n) as f64 / secs);
                last_report = Instant::now();
            }
        };
        let n = if input == Path::new("-") {
            replay_into(&mut engine, io::stdin().lock(), now, 1 << 20, progress)
        } else {
            let file = std::fs::File::open(input).with_context(|| format!("cannot open {}", input.display()))?;
            replay_into(&mut engine, BufReader::with_capacity(1 << 20, file), now, 1 << 20, progress)
        }
        .with_context(|| format!("reading {}", input.display()))?;
        total += n;
    }
    let secs = started.elapsed().as_secs_f64();
    let counters = engine.counters();
    info!(
        lines = total,
        ingested = counters.ingested,
        rejected = counters.read() - counters.ingested,
        seconds = format!("{secs:.3}"),
        lines_per_second = format!("{:.0}", total as f64 / secs.max(1e-9)),
        "replay done"
    );
    let published = Published::new();
    published.publish(engine.figures());
    published.set_ready(true);
    let registry = metrics::registry(published.clone(), config.engine.max_users)?;
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(metrics::render(&registry).as_bytes())
        .and_then(|()| stdout.flush())
        .context("cannot write the figures to standard output")?;
    drop(stdout);
    if let Some(listener) = listener {
        let runtime = tokio::runtime::Runtime::new()?;
        runtime.block_on(async move {
            let shutdown = shutdown_on_signal();
            let (addr, server) = start_http(listener, &published, &config, shutdown, HTTP_DRAIN)?;
            info!("serving the final figures on http://{addr}/metrics until interrupted");
            server.await??;
            Ok::<_, anyhow::Error>(())
        })?;
    }
    Ok(())
}

/// Cancelled on SIGINT or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    t.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        t.cancel();
    });
    token
}

const DAY_MS: i64 = 86_400_000;

/// Midnight UTC `days` days ago.
fn default_start(days: u32) -> i64 {
    (now_ms() / DAY_MS - i64::from(days)) * DAY_MS
}

impl TrafficArgs {
    /// The generator these arguments describe, and the simulated instant it
    /// stops at (epoch ms).
    fn generator(&self) -> Result<(Generator, i64)> {
        let start = self.start_ms.unwrap_or_else(|| default_start(self.days));
        let end = start + i64::from(self.days) * DAY_MS;
        if end > LAST_EVENT_MS {
            bail!("--start-ms {start} with --days {}: the traffic would reach past 2100-01-01", self.days);
        }
        let mut generator = Generator::new(self.seed, start, self.users_per_day);
        if self.clean {
            generator = generator.clean();
        }
        Ok((generator, end))
    }
}

fn generate(traffic: &TrafficArgs) -> Result<()> {
    let (mut generator, end) = traffic.generator()?;
    let mut out = io::BufWriter::with_capacity(1 << 20, io::stdout().lock());
    let mut lines = Vec::new();
    while generator.clock_ms() < end {
        lines.clear();
        generator.advance_to((generator.clock_ms() + 3_600_000).min(end), &mut lines);
        for line in &lines {
            out.write_all(line)?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(())
}

fn demo(config: Config, speed: f64, backfill_days: u32, users_per_day: f64, seed: u64) -> Result<()> {
    let listener = bind(config.listen, "--listen")?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let shutdown = shutdown_on_signal();
        let published = Published::new();
        let (addr, server) = start_http(listener, &published, &config, shutdown.clone(), HTTP_DRAIN)?;
        info!("demo serving http://{addr}/metrics, http://{addr}/api/v1/retention, http://{addr}/api/v1/funnels");

        let engine_cfg = Arc::new(config.engine.clone());
        let stop = shutdown.clone();
        let generator = tokio::task::spawn_blocking(move || {
            run_demo_generator(engine_cfg, &published, &stop, speed, backfill_days, users_per_day, seed)
        });
        let result = generator.await;
        shutdown.cancel();
        server.await??;
        result?
    })
}

/// Drives the generator: a backfill as fast as it goes, then simulated time
/// at `speed`× the wall clock, publishing figures every 200 ms.
fn run_demo_generator(
    cfg: Arc<cohortflow::engine::def::EngineConfig>,
    published: &Published,
    stop: &CancellationToken,
    speed: f64,
    backfill_days: u32,
    users_per_day: f64,
    seed: u64,
) -> Result<()> {
    let mut engine = Engine::new(cfg);
    let now = now_ms();
    let start = (now / DAY_MS - i64::from(backfill_days)) * DAY_MS;
    let mut generator = Generator::new(seed, start, users_per_day);
    let mut lines = Vec::new();
    let mut trim = GrowthTrim::default();
    let mut feed = |engine: &mut Engine, generator: &mut Generator, until: i64| {
        lines.clear();
        generator.advance_to(until, &mut lines);
        for line in &lines {
            // Simulated time is the engine's clock; rejects are counted inside.
            let _ = engine.apply(line, None, generator.clock_ms());
        }
        trim.observe(engine.tracked_users());
    };
    // Backfill one simulated hour at a time, publishing as it goes.
    while generator.clock_ms() < now && !stop.is_cancelled() {
        let until = (generator.clock_ms() + 3_600_000).min(now);
        feed(&mut engine, &mut generator, until);
        published.publish(engine.figures());
    }
    info!(events = engine.counters().ingested, "backfill done; running at {speed}x");
    published.set_ready(true);
    let mut tick = Instant::now();
    while !stop.is_cancelled() {
        std::thread::sleep(Duration::from_millis(200));
        let elapsed = tick.elapsed();
        tick = Instant::now();
        let until = generator.clock_ms() + (elapsed.as_secs_f64() * 1000.0 * speed) as i64;
        feed(&mut engine, &mut generator, until);
        published.publish(engine.figures());
    }
    Ok(())
}

/// Whether standard output was closed when the process started. The Rust
/// runtime then opens /dev/null read-write in its place, so writes succeed
/// and nothing would say the figures went nowhere; a shell's explicit
/// `>/dev/null` opens it write-only, and is left alone.
fn stdout_is_closed() -> bool {
    #[cfg(target_os = "linux")]
    {
        let null = std::fs::read_link("/proc/self/fd/1").is_ok_and(|p| p == Path::new("/dev/null"));
        let read_write = std::fs::read_to_string("/proc/self/fdinfo/1").is_ok_and(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
                .is_some_and(|flags| flags & 0o3 == 0o2)
        });
        null && read_write
    }
    #[cfg(not(target_os = "linux"))]
    false
}
