//! Fuzz target `sync_message`: see `sam_fuzz::sync_message` for what it reads and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(init: sam_fuzz::init("sync_message"), |data: &[u8]| sam_fuzz::sync_message(data));
