//! Throughput of record counting: `RecordCounter::feed` alone (NDJSON and JSON array) and the
//! `CountingBody` wrapper end to end, over a ~4 MiB body of ~600-byte fake CVs in 16 KiB chunks.

use std::collections::VecDeque;
use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use cvgate::count::{CountingBody, RecordCounter, RecordFormat};
use http_body::{Body, Frame};
use http_body_util::BodyExt;

const BODY_BYTES: usize = 4 << 20;
const CHUNK: usize = 16 << 10;

/// One fake CV of about 600 bytes, varied by `i` (escapes and brackets inside strings included).
fn cv(i: usize) -> String {
    let city = ["Amsterdam", "Rotterdam", "Utrecht", "Den Haag", "Eindhoven"][i % 5];
    format!(
        concat!(
            r#"{{"id":"cv-{i:08}","name":"Kandidaat {i}","city":"{city}","postcode":"{pc:04} AB","#,
            r#""title":"Logistiek medewerker \"heftruck\" [BBL]","experience_years":{exp},"#,
            r#""skills":["reachtruck","WMS {{SAP}}","VCA","rijbewijs B, C"],"#,
            r#""languages":[{{"lang":"nl","level":"C2"}},{{"lang":"en","level":"B1"}}],"#,
            r#""summary":"Ervaren in orderpicking, voorraadbeheer en het laden\\lossen van vrachtwagens; "#,
            r#"zoekt een vaste baan in ploegendienst, 32-40 uur per week, binnen 25 km.","#,
            r#""available_from":"2024-06-01","updated":"2024-05-0{d}T12:00:00Z"}}"#
        ),
        i = i,
        city = city,
        pc = 1000 + i % 9000,
        exp = i % 30,
        d = 1 + i % 9,
    )
}

fn records() -> Vec<String> {
    let mut out = Vec::new();
    let mut len = 0;
    while len < BODY_BYTES {
        let r = cv(out.len());
        len += r.len() + 1;
        out.push(r);
    }
    out
}

fn chunks(body: Vec<u8>) -> Vec<Bytes> {
    let body = Bytes::from(body);
    (0..body.len()).step_by(CHUNK).map(|at| body.slice(at..body.len().min(at + CHUNK))).collect()
}

/// An upstream body that is always ready: measures the wrapper, not a channel.
struct Frames(VecDeque<Bytes>);

impl Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

fn bench(c: &mut Criterion) {
    let recs = records();
    let ndjson = chunks(recs.iter().flat_map(|r| [r.as_bytes(), b"\n"]).flatten().copied().collect());
    let json =
        chunks(format!(r#"{{"page":1,"size":{n},"total":{n},"results":[{}]}}"#, recs.join(","), n = recs.len()).into());
    let total = |c: &[Bytes]| c.iter().map(Bytes::len).sum::<usize>() as u64;
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");

    let mut g = c.benchmark_group("count");
    let cases = [
        ("ndjson", &ndjson, RecordFormat::Ndjson),
        ("json_array", &json, RecordFormat::JsonArrayField("results".into())),
    ];
    for (name, body, format) in cases {
        g.throughput(Throughput::Bytes(total(body)));
        g.bench_function(format!("feed/{name}"), |b| {
            b.iter(|| {
                let mut counter = RecordCounter::new(format.clone());
                for chunk in body.iter() {
                    black_box(counter.feed(chunk, None));
                }
                assert_eq!(counter.finish(), recs.len() as u64);
            })
        });
        g.bench_function(format!("body/{name}"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let inner = Frames(body.iter().cloned().collect());
                    let on_end = Box::new(|o: cvgate::count::BodyOutcome| {
                        black_box(o);
                    });
                    let limit = Some(u64::MAX);
                    let idle = Some(std::time::Duration::from_secs(30));
                    let mut counted = Box::pin(CountingBody::new(inner, Some(format.clone()), limit, idle, on_end));
                    while let Some(frame) = counted.frame().await {
                        black_box(frame.expect("no error"));
                    }
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
