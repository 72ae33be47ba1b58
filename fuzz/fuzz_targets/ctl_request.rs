//! Fuzz target `ctl_request`: see `sam_fuzz::ctl_request` for what it reads and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(init: sam_fuzz::init("ctl_request"), |data: &[u8]| sam_fuzz::ctl_request(data));
