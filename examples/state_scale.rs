//! Memory per tracked user, the snapshot copy (what `run` pauses a shard
//! for), and snapshot write and restore times at a given number of users,
//! with the benchmark definitions (`config/bench.toml`: 3 retention
//! definitions, 2 funnels, 32 days of history).
//!
//! Each user signs up on one of 30 days, comes back on a few later days
//! (fewer as the cohort ages), views, sometimes adds to cart, orders, pays:
//! about 3.9 events a user, all within the history.
//!
//!     cargo run --release --example state_scale -- USERS [CONFIG]

use std::sync::Arc;
use std::time::Instant;

use cohortflow::allocator::GrowthTrim;
use cohortflow::checkpoint;
use cohortflow::config::Config;
use cohortflow::engine::Engine;

const DAY: i64 = 86_400_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // As the daemon does at start.
    let threshold = cohortflow::allocator::fix_mmap_threshold();
    let mut args = std::env::args().skip(1);
    let users: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1_000_000);
    let config = args.next().unwrap_or_else(|| "config/bench.toml".into());
    let cfg = Arc::new(Config::load(Some(config.as_ref()))?.engine);
    let mut engine = Engine::new(cfg.clone());
    let rss_before = rss_kib("VmRSS")?;

    let start = 1_790_000_000_000i64;
    let now = start + 31 * DAY;
    let mut rng = fastrand::Rng::with_seed(1);
    let mut events = 0u64;
    let mut line = String::new();
    // As the daemon's shards do.
    let mut trim = GrowthTrim::default();
    let mut emit = |engine: &mut Engine, u: u64, name: &str, ts: i64| {
        use std::fmt::Write;
        line.clear();
        let _ = write!(line, r#"{{"user_id":"u{u}","event":"{name}","ts":{ts}}}"#);
        let _ = engine.apply(line.as_bytes(), None, now);
        trim.observe(engine.tracked_users());
        events += 1;
    };
    let fed = Instant::now();
    // Users arrive in time order, as they would on a topic.
    for u in 0..users {
        let joined = start + (u as i64 * 30 * DAY) / users as i64;
        emit(&mut engine, u, "signup", joined);
        if rng.u8(..10) < 7 {
            emit(&mut engine, u, "verify", joined + 300_000);
        }
        let mut day = 0;
        let mut visits = 0;
        while visits < 4 {
            day += 1 + rng.i64(0..6);
            let ts = joined + day * DAY + rng.i64(0..DAY / 2);
            if ts >= start + 30 * DAY || rng.u8(..10) < 3 {
                break;
            }
            visits += 1;
            emit(&mut engine, u, "view", ts);
            if rng.u8(..3) == 0 {
                emit(&mut engine, u, "add_to_cart", ts + 60_000);
                if rng.bool() {
                    emit(&mut engine, u, "order", ts + 120_000);
                    emit(&mut engine, u, "pay", ts + 130_000);
                }
            }
        }
    }
    let fed_s = fed.elapsed().as_secs_f64();
    let rss_after = rss_kib("VmRSS")?;
    let per_user = (rss_after - rss_before) as f64 * 1024.0 / users as f64;
    println!(
        "users={} events={events} feed_seconds={fed_s:.2} rss_mib={:.0} state_rss_mib={:.0} \
         bytes_per_user={per_user:.1} state_bytes_estimate_per_user={:.1} mmap_threshold={threshold:?}",
        engine.tracked_users(),
        rss_after as f64 / 1024.0,
        (rss_after - rss_before) as f64 / 1024.0,
        engine.state_bytes() as f64 / users as f64
    );

    // What `run` pauses a shard for at a snapshot: a copy to write from.
    let t = Instant::now();
    let copy = engine.clone();
    let copy_s = t.elapsed().as_secs_f64();
    drop(copy);

    let dir = std::env::temp_dir().join(format!("cohortflow-state-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = checkpoint::path_for(&dir, "bench", 0);
    let t = Instant::now();
    let bytes = checkpoint::write(&path, "bench", &engine, 42)?;
    let write = t.elapsed().as_secs_f64();
    drop(engine);
    // The best of three: the machine's noise only ever adds time.
    let mut read = f64::INFINITY;
    let mut restored = None;
    for _ in 0..3 {
        drop(restored.take());
        let t = Instant::now();
        restored = Some(checkpoint::read(&path, "bench", &cfg)?.ok_or("snapshot missing")?);
        read = read.min(t.elapsed().as_secs_f64());
    }
    let restored = restored.ok_or("no restore")?;
    println!(
        "snapshot_users={} snapshot_mib={:.1} copy_seconds={copy_s:.3} write_seconds={write:.3} \
         restore_seconds={read:.3} peak_rss_mib={:.0}",
        restored.engine.tracked_users(),
        bytes as f64 / 1048576.0,
        rss_kib("VmHWM")? as f64 / 1024.0
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// A memory figure of this process from /proc/self/status, in KiB.
fn rss_kib(field: &str) -> Result<u64, Box<dyn std::error::Error>> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with(field)).ok_or("no such field in /proc/self/status")?;
    Ok(line.split_whitespace().nth(1).ok_or("malformed /proc/self/status")?.parse()?)
}
