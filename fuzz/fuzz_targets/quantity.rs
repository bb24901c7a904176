//! Arbitrary UTF-8 as a Kubernetes resource quantity.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    lookout_ingester_fuzz::quantity(s);
});
