//! Decoding one message: the per-event parse cost of every source.

use std::hint::black_box;

use cohortflow::event::{FieldNames, decode};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn bench_decode(c: &mut Criterion) {
    let names = FieldNames::default();
    let typical = br#"{"user_id":"u123456","event":"view","ts":"2026-11-20T08:15:00.123Z","props":{"platform":"ios","channel":"organic","amount":12.5}}"#;
    let epoch = br#"{"user_id":123456,"event":"add_to_cart","ts":1795162500123}"#;
    let escaped =
        br#"{"user_id":"u\u0031","event":"v\u0069ew","ts":"2026-11-20T08:15:00+08:00","extra":{"a":[1,2,{"b":null}]}}"#;
    let invalid = br#"{"user_id":"u1","event":"view","ts":"2026-11-20T08:15:00Z""#;
    let mut group = c.benchmark_group("decode");
    for (name, line) in [
        ("typical", &typical[..]),
        ("epoch_ms_integer_id", &epoch[..]),
        ("escaped_unknown_fields", &escaped[..]),
        ("invalid_json", &invalid[..]),
    ] {
        group.throughput(Throughput::Bytes(line.len() as u64));
        group.bench_function(name, |b| b.iter(|| black_box(decode(black_box(line), &names, None).is_ok())));
    }
    group.finish();
}

criterion_group!(benches, bench_decode);
criterion_main!(benches);
