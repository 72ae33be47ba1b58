//! Fuzz target `hello`: see `sam_fuzz::hello` for what it reads and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(init: sam_fuzz::init("hello"), |data: &[u8]| sam_fuzz::hello(data));
