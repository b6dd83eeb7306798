//! Reed-Solomon 4+2 on 4 MiB stripes: `Codec::encode` (allocation, zero
//! padding and copy included), the raw in-place RS encode, and
//! `Codec::reconstruct` of two lost data fragments, each reported as a ratio
//! to a memcpy of the same 4 MiB measured in the same run.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use reed_solomon_erasure::galois_8::ReedSolomon;
use tessera_objserver::ec::Codec;
use tessera_objserver::placement::Redundancy;

const STRIPE_BYTES: usize = 4 << 20;

/// Total time and iterations criterion measured per benchmark.
static TIMES: Mutex<BTreeMap<&'static str, (Duration, u64)>> = Mutex::new(BTreeMap::new());

fn record(name: &'static str, elapsed: Duration, iters: u64) {
    let mut times = TIMES.lock().expect("times lock");
    let entry = times.entry(name).or_default();
    entry.0 += elapsed;
    entry.1 += iters;
}

fn pattern(len: usize) -> Vec<u8> {
    tessera_common::testing::pattern(1, len).to_vec()
}

fn bench_ec(c: &mut Criterion) {
    let codec = Codec::new(Redundancy::Ec { k: 4, m: 2 }).expect("codec");
    let data = pattern(STRIPE_BYTES);
    let (_, fragments) = codec.encode(&data).expect("encode");
    let mut group = c.benchmark_group("ec_4+2_4MiB");
    group.throughput(Throughput::Bytes(STRIPE_BYTES as u64));

    let mut target = vec![0u8; STRIPE_BYTES];
    group.bench_function("memcpy", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                target.copy_from_slice(black_box(&data));
                black_box(&mut target);
            }
            let elapsed = start.elapsed();
            record("memcpy", elapsed, iters);
            elapsed
        })
    });

    group.bench_function("encode", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                black_box(codec.encode(black_box(&data)).expect("encode"));
            }
            let elapsed = start.elapsed();
            record("encode", elapsed, iters);
            elapsed
        })
    });

    let rs = ReedSolomon::new(4, 2).expect("rs");
    let mut shards: Vec<Vec<u8>> = fragments.iter().map(|f| f.to_vec()).collect();
    group.bench_function("rs_encode_in_place", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                rs.encode(black_box(&mut shards)).expect("encode");
            }
            let elapsed = start.elapsed();
            record("rs_encode_in_place", elapsed, iters);
            elapsed
        })
    });

    group.bench_function("reconstruct_2_data_lost", |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iters {
                // Fresh, uniquely owned columns, as received from the network.
                let columns: Vec<Option<Bytes>> = (0..6)
                    .map(|i| (i >= 2).then(|| Bytes::from(fragments[i].to_vec())))
                    .collect();
                let start = Instant::now();
                black_box(codec.reconstruct(black_box(columns), &[0, 1]).expect("reconstruct"));
                elapsed += start.elapsed();
            }
            record("reconstruct_2_data_lost", elapsed, iters);
            elapsed
        })
    });
    group.finish();
    report_ratios();
}

fn report_ratios() {
    let times = TIMES.lock().expect("times lock");
    let per_iter_ns = |name: &str| {
        let (total, iters) = times.get(name).copied().unwrap_or_default();
        total.as_nanos() as f64 / iters.max(1) as f64
    };
    let memcpy_ns = per_iter_ns("memcpy");
    println!(
        "\n4+2 on {} MiB stripes (means over all criterion iterations):",
        STRIPE_BYTES >> 20
    );
    for name in ["memcpy", "encode", "rs_encode_in_place", "reconstruct_2_data_lost"] {
        let ns = per_iter_ns(name);
        let gb_per_s = STRIPE_BYTES as f64 / ns;
        println!(
            "  {name:<26} {:>9.1} us  {gb_per_s:>6.2} GB/s of data  {:>5.2}x memcpy time",
            ns / 1e3,
            ns / memcpy_ns
        );
    }
}

criterion_group!(benches, bench_ec);
criterion_main!(benches);
