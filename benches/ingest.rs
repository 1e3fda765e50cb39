//! Engine ingest: decode plus state update per event, on generated traffic
//! (the demo's generator and config: 2 retention definitions, 3 funnels).

use std::hint::black_box;
use std::sync::Arc;

use cohortflow::config::Config;
use cohortflow::engine::Engine;
use cohortflow::source::demo::{DEMO_CONFIG, Generator};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

fn bench_ingest(c: &mut Criterion) {
    let config = match Config::from_toml_str(DEMO_CONFIG) {
        Ok(c) => c,
        Err(e) => panic!("demo config: {e}"),
    };
    let cfg = Arc::new(config.engine);
    let start = 1_790_000_000_000;
    let mut generator = Generator::new(3, start, 5000.0);
    let mut lines = Vec::new();
    generator.advance_to(start + 3 * 86_400_000, &mut lines);
    let now = generator.clock_ms();

    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(lines.len() as u64));
    group.sample_size(10);
    group.bench_function("demo_3_days", |b| {
        b.iter_batched(
            || Engine::new(cfg.clone()),
            |mut engine| {
                for line in &lines {
                    let _ = black_box(engine.apply(line, None, now));
                }
                engine
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench_ingest);
criterion_main!(benches);
