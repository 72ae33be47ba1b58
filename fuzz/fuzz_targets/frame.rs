//! Fuzz target `frame`: see `sam_fuzz::frame` for what it reads and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(init: sam_fuzz::init("frame"), |data: &[u8]| sam_fuzz::frame(data));
