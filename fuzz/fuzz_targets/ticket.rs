//! Fuzz target `ticket`: see `sam_fuzz::ticket` for what it reads and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(init: sam_fuzz::init("ticket"), |data: &[u8]| sam_fuzz::ticket(data));
