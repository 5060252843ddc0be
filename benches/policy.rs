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
            _ => format!("/svc.S{}/M{i:05}", i % 13),
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

/// `n` callers, each granted the whole of one service.
fn wide_json(n: usize) -> String {
    let rules: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"name":"r{i}","source":{{"principals":["spiffe://bench/c{i}"]}},"request":{{"paths":["/svc.S/*"]}}}}"#
            )
        })
        .collect();
    format!(r#"{{"name":"wide","allow_rules":[{}]}}"#, rules.join(","))
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
        // Rule 9 (or 9998) is for c2 on /svc.S9/M00009 (or /svc.S1/M09998):
        // method names of one length, so only the rule count differs.
        let i = if n == 10 { 9 } else { 9998 };
        let allowed = format!("/svc.S{}/M{i:05}", i % 13);
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

/// 10,000 rules against 10, paired: criterion measures one case after the
/// other, seconds apart, and this VM's speed drifts by more than the 10%
/// the target allows within that time. Here each round times a block of
/// each case back to back (the order alternating), and the verdict is the
/// median of the rounds' ratios, as `scripts/bench` pairs its targets.
fn paired(_c: &mut Criterion) {
    const ROUNDS: usize = 101;
    const BLOCK: usize = 20_000;
    let headers = HeaderMap::new();
    let caller = peer("spiffe://bench/c2");
    let cases: Vec<_> = [10usize, 10_000]
        .into_iter()
        .map(|n| {
            let p = Policy::from_json(&policy_json(n), Path::new("bench.json")).unwrap();
            let i = if n == 10 { 9 } else { 9998 };
            (p, format!("/svc.S{}/M{i:05}", i % 13))
        })
        .collect();
    let denied = "/other.Svc/Nope";
    // ns per call of `f` over a block; `setup` values made before the clock.
    fn block<S>(setup: impl Fn() -> S, mut f: impl FnMut(&mut S)) -> f64 {
        let mut inputs: Vec<S> = (0..BLOCK).map(|_| setup()).collect();
        let t = std::time::Instant::now();
        for s in &mut inputs {
            f(s);
        }
        t.elapsed().as_nanos() as f64 / BLOCK as f64
    }
    let run = |name: &str, one: &mut dyn FnMut(usize) -> f64| {
        let mut times = [Vec::new(), Vec::new()];
        let mut ratios: Vec<f64> = (0..ROUNDS)
            .map(|r| {
                let (a, b) = if r % 2 == 0 {
                    let a = one(0);
                    (a, one(1))
                } else {
                    let b = one(1);
                    (one(0), b)
                };
                times[0].push(a);
                times[1].push(b);
                b / a
            })
            .collect();
        ratios.sort_by(f64::total_cmp);
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let within = ratios.iter().filter(|r| **r <= 1.10).count();
        println!(
            "paired {name}: 10,000 / 10 rules = {:.3} (median of {ROUNDS} rounds; {:.3}-{:.3}; within 10% in {within}; {:.1} / {:.1} ns)",
            ratios[ROUNDS / 2],
            ratios[0],
            ratios[ROUNDS - 1],
            median(&mut times[1]),
            median(&mut times[0]),
        );
    };
    // A connection's repeated calls: its source match and memo kept.
    let mut srcs: Vec<_> = cases.iter().map(|(p, _)| p.source_match(&caller)).collect();
    for (name, path) in [("decide_allow", None), ("decide_deny", Some(denied))] {
        run(name, &mut |k| {
            let (p, allowed) = &cases[k];
            let path = path.unwrap_or(allowed);
            let src = &mut srcs[k];
            block(
                || (),
                |()| {
                    black_box(
                        p.evaluate_for(black_box(path), &headers, &caller, src)
                            .allowed(),
                    );
                },
            )
        });
    }
    // A connection's first call to a method: a fresh source match, no memo.
    for (name, path) in [
        ("first_call_allow", None),
        ("first_call_deny", Some(denied)),
    ] {
        run(name, &mut |k| {
            let (p, allowed) = &cases[k];
            let path = path.unwrap_or(allowed);
            block(
                || p.source_match(&caller),
                |src| {
                    black_box(
                        p.evaluate_for(black_box(path), &headers, &caller, src)
                            .allowed(),
                    );
                },
            )
        });
    }
    // The same with the policy grown by callers instead of methods: 10 or
    // 10,000 callers granted one service, the call from the last of them.
    let wide: Vec<_> = [10usize, 10_000]
        .into_iter()
        .map(|n| {
            let p = Policy::from_json(&wide_json(n), Path::new("wide.json")).unwrap();
            let last = peer(&format!("spiffe://bench/c{}", n - 1));
            assert!(p.evaluate("/svc.S/M1", &headers, &last).allowed());
            (p, last)
        })
        .collect();
    run("first_call_wide", &mut |k| {
        let (p, last) = &wide[k];
        block(
            || p.source_match(last),
            |src| {
                black_box(
                    p.evaluate_for(black_box("/svc.S/M1"), &headers, last, src)
                        .allowed(),
                );
            },
        )
    });
    run("source_match", &mut |k| {
        let (p, _) = &cases[k];
        block(
            || (),
            |()| drop(black_box(p.source_match(black_box(&caller)))),
        )
    });
}

criterion_group!(benches, decisions, paired, load);
criterion_main!(benches);
