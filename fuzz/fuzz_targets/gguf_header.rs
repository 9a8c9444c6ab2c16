#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| haagenti_fuzz::gguf_header(data));
