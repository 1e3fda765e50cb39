//! Scrape rendering: what one `GET /metrics` costs the daemon, from the
//! published figures to the Prometheus text (the collector builds every
//! family, the encoder writes them), for the demo's definitions (31 days
//! exported) and the benchmarks' (400 days exported), each after 60 days
//! of generated traffic.

use std::hint::black_box;
use std::sync::Arc;

use cohortflow::config::Config;
use cohortflow::engine::Engine;
use cohortflow::export::Published;
use cohortflow::export::metrics::{registry, render};
use cohortflow::source::demo::{DEMO_CONFIG, Generator};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const BENCH_CONFIG: &str = include_str!("../config/bench.toml");

fn bench_render(c: &mut Criterion) {
    let mut group = c.benchmark_group("render");
    for (name, toml) in [("demo_config", DEMO_CONFIG), ("bench_config_400_days", BENCH_CONFIG)] {
        let config = match Config::from_toml_str(toml) {
            Ok(c) => c,
            Err(e) => panic!("{name}: {e}"),
        };
        let max_users = config.engine.max_users;
        let mut engine = Engine::new(Arc::new(config.engine));
        let start = 1_790_000_000_000;
        let mut generator = Generator::new(7, start, 500.0);
        let mut lines = Vec::new();
        generator.advance_to(start + 60 * 86_400_000, &mut lines);
        let now = generator.clock_ms();
        for line in &lines {
            let _ = engine.apply(line, None, now);
        }
        let published = Published::new();
        published.publish(engine.figures());
        let registry = match registry(published, max_users) {
            Ok(r) => r,
            Err(e) => panic!("{name}: registry: {e}"),
        };
        let text = render(&registry);
        let series = text.lines().filter(|l| !l.starts_with('#')).count();
        eprintln!("{name}: {series} series, {} KiB of text a scrape", text.len() / 1024);
        group.throughput(Throughput::Elements(series as u64));
        group.bench_function(name, |b| b.iter(|| black_box(render(&registry))));
    }
    group.finish();
}

criterion_group!(benches, bench_render);
criterion_main!(benches);
