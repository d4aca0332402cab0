#![no_main]
libfuzzer_sys::fuzz_target!(init: clinic_fuzz::init("signaling_frame"), |data: &[u8]| clinic_fuzz::signaling_frame(data));
