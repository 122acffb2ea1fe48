//! Protocol detection on a connection's first bytes: never panics, and a verdict, once given,
//! stands as more bytes arrive (the proxy classifies as soon as it can).
#![no_main]
use agent::proxy::detect::classify;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(full) = classify(data) else {
        return;
    };
    for cut in 0..data.len() {
        if let Some(early) = classify(&data[..cut]) {
            assert_eq!(early, full, "verdict changed between {cut} and {} bytes", data.len());
        }
    }
});
