#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| haagenti_fuzz::http_range(data));
