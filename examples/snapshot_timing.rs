//! Snapshot write and restore time at a given number of tracked users
//! (demo config: 2 retention definitions, 3 funnels), each user with a few
//! events over a week.
//!
//!     cargo run --release --example snapshot_timing -- USERS

use std::sync::Arc;
use std::time::Instant;

use cohortflow::checkpoint;
use cohortflow::config::Config;
use cohortflow::engine::Engine;
use cohortflow::source::demo::DEMO_CONFIG;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let users: u64 = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(1_000_000);
    let cfg = Arc::new(Config::from_toml_str(DEMO_CONFIG)?.engine);
    let mut engine = Engine::new(cfg.clone());
    let start = 1_790_000_000_000i64;
    let mut rng = fastrand::Rng::with_seed(1);
    let names = ["signup", "view", "view", "add_to_cart", "order", "pay"];
    let mut events = 0u64;
    let fed = Instant::now();
    for u in 0..users {
        let t0 = start + rng.i64(0..7 * 86_400_000);
        for (i, name) in names.iter().enumerate().take(1 + rng.usize(..names.len())) {
            let line = format!(r#"{{"user_id":"user-{u}","event":"{name}","ts":{}}}"#, t0 + i as i64 * 600_000);
            let _ = engine.apply(line.as_bytes(), None, start + 30 * 86_400_000);
            events += 1;
        }
    }
    println!("fed {events} events for {users} users in {:.2} s", fed.elapsed().as_secs_f64());
    let dir = tempfile_dir()?;
    let path = checkpoint::path_for(&dir, "bench", 0);
    let t = Instant::now();
    let bytes = checkpoint::write(&path, &engine, 42)?;
    let write = t.elapsed().as_secs_f64();
    drop(engine);
    let t = Instant::now();
    let restored = checkpoint::read(&path, &cfg)?.ok_or("snapshot missing")?;
    let read = t.elapsed().as_secs_f64();
    println!(
        "snapshot of {} users: {:.1} MiB, write {write:.3} s (fsync included), restore {read:.3} s",
        restored.engine.tracked_users(),
        bytes as f64 / 1048576.0
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("cohortflow-snapshot-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
