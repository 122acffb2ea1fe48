//! The routes file: any text is either a cluster state or an error naming where it is wrong;
//! never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = agent::routes::file::parse_routes(text, "routes.yaml") {
        let _ = e.to_string();
    }
});
