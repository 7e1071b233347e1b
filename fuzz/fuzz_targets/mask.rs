//! The contact-data masker on any bytes: the input is split into a header (chunk cuts, an
//! allowance, the record bound) and a body, which goes through a masker with the board's spec as
//! a JSON array field, as NDJSON and as a single record. The invariants (src/count/mask/
//! invariants.rs, shared with the stable replay test in count::mask::props): no panic; any
//! chunking gives the same output, stats and error; output that ends without an error is valid
//! JSON or NDJSON with no contact field left at a record's root; shadow mode passes the body
//! byte for byte with the same stats; an allowance changes what is masked only.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod invariants {
    use cvgate::count::mask::{KeepIf, MaskError, MaskFormat, MaskPlan, MaskSpec, MaskStats, Masker};
    include!("../../src/count/mask/invariants.rs");
}

fuzz_target!(|data: &[u8]| {
    let (body, cuts, allowance, max_record_bytes) = invariants::split_input(data);
    invariants::check(body, &cuts, allowance, max_record_bytes);
});
