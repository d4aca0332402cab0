#![no_main]
libfuzzer_sys::fuzz_target!(init: clinic_fuzz::init("sdp_offer"), |data: &[u8]| clinic_fuzz::sdp_offer(data));
