//! Fuzz target `doc_frame`: see `sam_fuzz::doc_frame` for what it reads and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(init: sam_fuzz::init("doc_frame"), |data: &[u8]| sam_fuzz::doc_frame(data));
