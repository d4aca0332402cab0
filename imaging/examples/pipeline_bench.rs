//! Pipeline speed on phone-sized photos: a 12 MP (4000×3000) and a 6 MP JPEG, each through the
//! whole `process` (validate, strip, decode, orient, preview 1280 px, thumbnail 256 px), plus
//! sealing the three results. Build with and without `--features turbojpeg` to compare the
//! shrink-on-load path with the pure-Rust one:
//!
//!     cargo run --release -p imaging --example pipeline_bench
//!     cargo run --release -p imaging --example pipeline_bench --features turbojpeg
//!
//! It leaves its fixtures in the temporary directory for the peer measurement
//! (`imaging/bench/sharp.mjs`: sharp/libvips doing the same work).

use std::time::Instant;

use imaging::envelope::{Context, Header, seal};
use imaging::testimages::{jpeg_rgb_sampled, photo_like};
use imaging::{Limits, process};

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let path = if cfg!(feature = "turbojpeg") {
        "turbojpeg (shrink on load)"
    } else {
        "pure Rust (full decode)"
    };
    println!("build: {path}");
    for (w, h) in [(4000u32, 3000u32), (3000, 2000)] {
        // q90, chroma 4:2:0: as phones write their photos.
        let jpeg = jpeg_rgb_sampled(&photo_like(w, h), 90, (2, 2));
        // The same fixture for the peer (sharp/libvips) in imaging/bench/sharp.mjs.
        let fixture = std::env::temp_dir().join(format!("clinic-bench-{w}x{h}.jpg"));
        std::fs::write(&fixture, &jpeg).unwrap();
        let limits = Limits::default();
        let _ = process(&jpeg, &limits).unwrap();
        let runs = 15;
        let mut ms = Vec::new();
        let mut seal_ms = Vec::new();
        let mut last = None;
        for _ in 0..runs {
            let t = Instant::now();
            let p = process(&jpeg, &limits).unwrap();
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
            let t = Instant::now();
            let header = Header {
                key_id: "k".into(),
                wrapped_key: vec![0; 60],
                nonce_prefix: [1; 7],
            };
            for (v, b) in [
                ("original", &p.original),
                ("preview", &p.preview.bytes),
                ("thumbnail", &p.thumbnail.bytes),
            ] {
                let _ = seal(&[7; 32], &header, &Context::new("t", "i", v), b).unwrap();
            }
            seal_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            last = Some(p);
        }
        let p = last.unwrap();
        println!(
            "{:>2} MP {}x{} JPEG ({} KB): process p50 {:.1} ms, p90 {:.1} ms; seal 3 objects p50 {:.2} ms; decode path {:?}",
            (w * h) / 1_000_000,
            w,
            h,
            jpeg.len() / 1024,
            percentile(&mut ms.clone(), 0.5),
            percentile(&mut ms, 0.9),
            percentile(&mut seal_ms, 0.5),
            p.decode_path
        );
    }
}
