//! Fuzz target `acp_line`: see `sam_fuzz::acp_line` for what it reads and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(init: sam_fuzz::init("acp_line"), |data: &[u8]| sam_fuzz::acp_line(data));
