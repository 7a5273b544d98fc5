//! `make fuzz`, or from coral-privhelper/:
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run -s none decode -- -max_total_time=60`
#![no_main]

use coral_privhelper::protocol;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((req, used)) = protocol::decode_request_frame(data) {
        assert_eq!(protocol::encode_request(&req), data[..used]);
    }
    let _ = protocol::decode_request(data);
    let _ = protocol::decode_response(data);
});
