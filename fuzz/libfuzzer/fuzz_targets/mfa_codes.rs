#![no_main]
libfuzzer_sys::fuzz_target!(init: clinic_fuzz::init("mfa_codes"), |data: &[u8]| clinic_fuzz::mfa_codes(data));
