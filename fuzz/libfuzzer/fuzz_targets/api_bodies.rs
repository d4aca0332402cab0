#![no_main]
libfuzzer_sys::fuzz_target!(init: clinic_fuzz::init("api_bodies"), |data: &[u8]| clinic_fuzz::api_bodies(data));
