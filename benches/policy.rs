//! Policy decision cost: 10 rules against 10,000 rules, and the time to load a
//! 10,000-rule file. `cargo bench --bench policy`.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use http::HeaderMap;
use ipcgate::ca::{Ca, KeyType, LeafSpec};
use ipcgate::identity::Peer;
use ipcgate::policy::Policy;

/// `n` rules shaped like a real policy: one per method, callers spread over
/// seven identities and thirteen services, a few prefix and suffix rules.
fn policy_json(n: usize) -> String {
    let mut rules = Vec::with_capacity(n);
    for i in 0..n {
        let path = match i % 50 {
            0 => format!("/svc.S{}/*", i % 13),
            1 => format!("*/Admin{i}"),
            _ => format!("/svc.S{}/M{i}", i % 13),
        };
        rules.push(format!(
            r#"{{"name":"r{i}","source":{{"principals":["spiffe://bench/c{}"]}},"request":{{"paths":["{path}"]}}}}"#,
            i % 7
        ));
    }
    format!(
        r#"{{"name":"bench","deny_rules":[{{"name":"no-debug","request":{{"paths":["*/Debug"]}}}}],"allow_rules":[{}]}}"#,
        rules.join(",")
    )
}

fn peer(id: &str) -> Peer {
    let ca = Ca::generate(
        "bench",
        std::time::Duration::from_secs(3600),
        KeyType::EcdsaP256,
    )
    .unwrap();
    let leaf = ca
        .issue(&LeafSpec {
            spiffe: vec![id.into()],
            client: true,
            ..Default::default()
        })
        .unwrap();
    Peer::new(&[leaf.cert_der], None, None).unwrap()
}

fn decisions(c: &mut Criterion) {
    let headers = HeaderMap::new();
    let caller = peer("spiffe://bench/c2");
    for n in [10usize, 10_000] {
        let p = Policy::from_json(&policy_json(n), Path::new("bench.json")).unwrap();
        // Rule 9 (or 9998) is for c2 on /svc.S9/M9 (or /svc.S1/M9998).
        let i = if n == 10 { 9 } else { 9998 };
        let allowed = format!("/svc.S{}/M{i}", i % 13);
        assert!(p.evaluate(&allowed, &headers, &caller).allowed());
        let denied = "/other.Svc/Nope";
        assert!(!p.evaluate(denied, &headers, &caller).allowed());
        // What a connection does per call: sources decided once per connection,
        // then each method's decision remembered by the connection.
        let mut src = p.source_match(&caller);
        c.bench_function(&format!("decide_allow_{n}_rules"), |b| {
            b.iter(|| {
                black_box(
                    p.evaluate_for(black_box(&allowed), &headers, &caller, &mut src)
                        .allowed(),
                )
            })
        });
        c.bench_function(&format!("decide_deny_{n}_rules"), |b| {
            b.iter(|| {
                black_box(
                    p.evaluate_for(black_box(denied), &headers, &caller, &mut src)
                        .allowed(),
                )
            })
        });
        // A connection's first call to a method: the indexes, no memo.
        c.bench_function(&format!("first_call_allow_{n}_rules"), |b| {
            b.iter_batched_ref(
                || p.source_match(&caller),
                |src| {
                    black_box(
                        p.evaluate_for(black_box(&allowed), &headers, &caller, src)
                            .allowed(),
                    )
                },
                criterion::BatchSize::SmallInput,
            )
        });
        c.bench_function(&format!("first_call_deny_{n}_rules"), |b| {
            b.iter_batched_ref(
                || p.source_match(&caller),
                |src| {
                    black_box(
                        p.evaluate_for(black_box(denied), &headers, &caller, src)
                            .allowed(),
                    )
                },
                criterion::BatchSize::SmallInput,
            )
        });
        // The once-per-connection part.
        c.bench_function(&format!("source_match_{n}_rules"), |b| {
            b.iter(|| black_box(p.source_match(black_box(&caller))))
        });
    }
}

fn load(c: &mut Criterion) {
    let json = policy_json(10_000);
    let mut g = c.benchmark_group("load");
    g.sample_size(10);
    g.bench_function("load_10000_rules", |b| {
        b.iter(|| black_box(Policy::from_json(&json, Path::new("bench.json")).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, decisions, load);
criterion_main!(benches);
