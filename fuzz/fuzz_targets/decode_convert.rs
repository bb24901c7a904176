//! Arbitrary bytes as one Pulsar message payload: decode it as an
//! `EventSequence` and, when that works, convert it; every output must keep
//! the column invariants (see `lookout_ingester_fuzz::check_instructions`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    lookout_ingester_fuzz::decode_convert(data);
});
