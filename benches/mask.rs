//! Throughput of the contact-data masker (issue 18): a 20-CV search page (JSON array field) and
//! a 1,000-record NDJSON export from the mock CV API, fed in 64 KiB chunks as hyper hands them
//! over, (a) masked with the board's spec, (b) with an allowance covering every record (the
//! pass-through cost of a page under the soft budget), (c) in shadow mode (passed unchanged,
//! masked into scratch for the stats). Target: ≥ 1 GiB/s on one core for (a).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use cvgate::count::mask::{KeepIf, MaskFormat, MaskPlan, MaskSpec, Masker};

const CHUNK: usize = 64 << 10;

fn page() -> Vec<u8> {
    let mut s = String::from(r#"{"page":1,"size":20,"total":10000,"results":["#);
    for i in 0..20 {
        if i > 0 {
            s.push(',');
        }
        cvgate::devtools::mock_api::write_cv(&mut s, 1000 + i);
    }
    s.push_str("]}");
    s.into_bytes()
}

fn export() -> Vec<u8> {
    let mut s = String::new();
    for id in 1..=1000 {
        cvgate::devtools::mock_api::write_cv(&mut s, id);
        s.push('\n');
    }
    s.into_bytes()
}

/// The board's decision: contact data off every CV, the phone only where its owner shows it.
fn board() -> Arc<MaskPlan> {
    let spec = MaskSpec {
        remove: ["naam", "geslacht", "geboortedatum", "adres", "postcode", "woonplaats", "email"]
            .map(String::from)
            .to_vec(),
        replace: BTreeMap::new(),
        keep_if: vec![KeepIf { field: "telefoon".into(), when: "toon_telefoon".into(), equals: true.into() }],
        case_insensitive: true,
        ..MaskSpec::default()
    };
    Arc::new(MaskPlan::new(&spec).expect("the board's spec is valid"))
}

#[derive(Clone, Copy)]
enum Run {
    Mask,
    Allow,
    Shadow,
}

/// Feeds `body` in 64 KiB chunks; the output's length.
fn run(plan: &Arc<MaskPlan>, format: &MaskFormat, body: &[u8], how: Run, out: &mut BytesMut) -> usize {
    let m = Masker::new(plan.clone(), format.clone());
    let mut m = match how {
        Run::Mask => m,
        Run::Allow => m.with_allowance(u64::MAX),
        Run::Shadow => m.shadow(),
    };
    out.clear();
    for chunk in body.chunks(CHUNK) {
        m.feed(chunk, out).expect("a valid body");
    }
    m.finish(out).expect("a valid body");
    black_box(m.stats());
    out.len()
}

/// `MASK_DRIVER=<page|export>/<mask|allowance|shadow>:<iterations>`: runs just that, for a
/// profiler (`perf stat -e cycles:u`, `valgrind --tool=callgrind`), and exits; cycles per byte
/// do not suffer from a busy machine as wall time does.
fn driver(spec: &str) {
    let (what, n) = spec.split_once(':').expect("MASK_DRIVER=page/mask:10000");
    let (body, how) = what.split_once('/').expect("MASK_DRIVER=page/mask:10000");
    let n: u64 = n.parse().expect("a number of iterations");
    let (body, format) = match body {
        "page" => (page(), MaskFormat::JsonArrayField("results".into())),
        _ => (export(), MaskFormat::Ndjson),
    };
    let how = match how {
        "allowance" => Run::Allow,
        "shadow" => Run::Shadow,
        _ => Run::Mask,
    };
    let (plan, mut out) = (board(), BytesMut::new());
    for _ in 0..n {
        run(&plan, &format, black_box(&body), how, &mut out);
    }
    eprintln!("{what}: {n} x {} bytes", body.len());
}

fn bench(c: &mut Criterion) {
    if let Ok(spec) = std::env::var("MASK_DRIVER") {
        driver(&spec);
        std::process::exit(0);
    }
    let plan = board();
    let json = MaskFormat::JsonArrayField("results".into());
    for (name, body, format) in [("page", page(), json), ("export", export(), MaskFormat::Ndjson)] {
        let mut g = c.benchmark_group(format!("mask_{name}"));
        g.throughput(Throughput::Bytes(body.len() as u64));
        let mut out = BytesMut::with_capacity(body.len() + CHUNK);
        for (label, how) in [("mask", Run::Mask), ("allowance", Run::Allow), ("shadow", Run::Shadow)] {
            g.bench_function(label, |b| b.iter(|| run(&plan, &format, black_box(&body), how, &mut out)));
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
