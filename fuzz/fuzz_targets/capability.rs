//! Fuzz target `capability`: see `sam_fuzz::capability` for what it reads and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(init: sam_fuzz::init("capability"), |data: &[u8]| sam_fuzz::capability(data));
