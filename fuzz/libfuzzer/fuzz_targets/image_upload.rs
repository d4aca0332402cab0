#![no_main]
libfuzzer_sys::fuzz_target!(init: clinic_fuzz::init("image_upload"), |data: &[u8]| clinic_fuzz::image_upload(data));
