//! Arbitrary bytes as a recorded-event file (length-delimited records): read
//! it record by record, then decode and convert every record.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    lookout_ingester_fuzz::replay_file(data);
});
