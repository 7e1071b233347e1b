//! Cost of decoding a compressed upstream body and counting it (issue 15), against counting the
//! plain body: one search page of 20 CVs (~7.5 KB of JSON, the e2e bench's request) and a
//! ~4 MiB NDJSON export, each gzip, br and zstd, through `codec::decode` → `CountingBody` as the
//! proxy composes them; and `codec::encode` of the page (what `encoding.compress` costs).

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use cvgate::count::codec::{self, BombGuard, Coding, Failure};
use cvgate::count::{CountingBody, RecordFormat};
use http_body_util::{BodyExt, Full};

fn page() -> Bytes {
    let mut s = String::from(r#"{"page":1,"size":20,"total":10000,"results":["#);
    for i in 0..20 {
        if i > 0 {
            s.push(',');
        }
        cvgate::devtools::mock_api::write_cv(&mut s, 1000 + i);
    }
    s.push_str("]}");
    Bytes::from(s)
}

fn export() -> Bytes {
    let mut s = String::new();
    let mut id = 1;
    while s.len() < 4 << 20 {
        cvgate::devtools::mock_api::write_cv(&mut s, id);
        s.push('\n');
        id += 1;
    }
    Bytes::from(s)
}

/// Decode (when `coding`) and count `wire` the way the proxy does; returns the record count.
async fn count(wire: Bytes, coding: Option<Coding>, format: RecordFormat) -> u64 {
    let (tx, rx) = std::sync::mpsc::channel();
    let on_end = Box::new(move |o: cvgate::count::BodyOutcome| tx.send(o.records).unwrap());
    let body = match coding {
        Some(c) => codec::decode(Full::new(wire), c, BombGuard::default(), Failure::default()),
        None => Full::new(wire).map_err(Into::into).boxed(),
    };
    let counted = CountingBody::new(body, Some(format), None, None, on_end);
    black_box(counted.collect().await.unwrap());
    rx.recv().unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let json = RecordFormat::JsonArrayField("results".into());
    for (name, plain, format, records) in [("page", page(), json, 20), ("export", export(), RecordFormat::Ndjson, 0)] {
        let mut g = c.benchmark_group(format!("decode_count_{name}"));
        g.throughput(Throughput::Bytes(plain.len() as u64));
        let want = rt.block_on(count(plain.clone(), None, format.clone()));
        assert!(records == 0 || want == records);
        g.bench_function("plain", |b| b.iter(|| rt.block_on(count(plain.clone(), None, format.clone()))));
        for coding in [Coding::Gzip, Coding::Br, Coding::Zstd] {
            let wire = rt.block_on(codec::compress(plain.clone(), coding));
            assert_eq!(rt.block_on(count(wire.clone(), Some(coding), format.clone())), want);
            g.bench_function(coding.as_str(), |b| {
                b.iter(|| rt.block_on(count(wire.clone(), Some(coding), format.clone())))
            });
        }
        g.finish();
    }
    let plain = page();
    let mut g = c.benchmark_group("encode_page");
    g.throughput(Throughput::Bytes(plain.len() as u64));
    for coding in [Coding::Gzip, Coding::Br, Coding::Zstd] {
        g.bench_function(coding.as_str(), |b| b.iter(|| rt.block_on(codec::compress(plain.clone(), coding))));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
