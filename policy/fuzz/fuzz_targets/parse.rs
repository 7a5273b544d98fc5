//! Any text through the parser: it must return Ok or a one-line error, and a
//! parsed policy must run its own tests without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match coral_policy::Policy::parse("fuzz.toml", text) {
        Ok(policy) => {
            for outcome in policy.run_tests() {
                assert!(!outcome.to_string().contains('\n'));
            }
        }
        Err(e) => assert!(!e.to_string().contains('\n')),
    }
});
