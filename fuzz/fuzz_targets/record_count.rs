//! Record counting across arbitrary chunk boundaries: any split of a body gives the same count,
//! the same pass/cut position and the same total as feeding it in one piece (the contract in
//! src/count.rs), for NDJSON with and without a limit and for a JSON array field.
#![no_main]

use arbitrary::Arbitrary;
use cvgate::count::{RecordCounter, RecordFormat};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    json: bool,
    limit: Option<u8>,
    cuts: Vec<u16>,
    body: &'a [u8],
}

/// Feed `body` split at `cuts`; returns (bytes passed, cut?, total after finish).
fn run(format: RecordFormat, limit: Option<u64>, body: &[u8], cuts: &[usize]) -> (usize, bool, u64) {
    let mut c = RecordCounter::new(format);
    let (mut passed, mut at) = (0, 0);
    let mut bounds: Vec<usize> = cuts.iter().map(|x| x % (body.len() + 1)).collect();
    bounds.sort_unstable();
    bounds.push(body.len());
    for end in bounds {
        if end < at {
            continue;
        }
        let f = c.feed(&body[at..end], limit);
        assert!(f.pass <= end - at);
        passed += f.pass;
        if f.cut {
            return (passed, true, c.finish());
        }
        assert_eq!(f.pass, end - at, "a chunk was shortened without a cut");
        at = end;
    }
    (passed, false, c.finish())
}

fuzz_target!(|input: Input<'_>| {
    let format = || {
        if input.json {
            RecordFormat::JsonArrayField("results".into())
        } else {
            RecordFormat::Ndjson
        }
    };
    let limit = input.limit.map(u64::from);
    let cuts: Vec<usize> = input.cuts.iter().take(64).map(|x| usize::from(*x)).collect();
    let whole = run(format(), limit, input.body, &[]);
    let split = run(format(), limit, input.body, &cuts);
    assert_eq!(whole, split, "chunk boundaries changed the result");
    if let Some(l) = limit {
        if !input.json {
            assert!(whole.2 <= l.max(1) || !whole.1, "cut stream delivered more than the limit");
        }
    }
});
