//! sharp's own benchmark task on our code: decode a 2725×2225 JPEG, resize it to 720×588 with
//! Lanczos3, encode a JPEG at quality 80 (`imaging::pipeline::resize_to`, the same decode, resize
//! and encode code as uploads use). Operations per second at a given number of threads, each
//! thread running one operation after another for a fixed time.
//!
//!     cargo run --release -p imaging --example sharp_task -- --threads 1 --seconds 10
//!     cargo run --release -p imaging --example sharp_task --features turbojpeg -- --threads 2
//!
//! `imaging/bench/sharp-task.sh` runs both builds and sharp (the peer) side by side in one run,
//! on the same fixture, and prints the ratios. Prints one JSON line.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use imaging::Limits;
use imaging::pipeline::resize_to;
use imaging::testimages::{jpeg_rgb_sampled, photo_like};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = arg(&args, "--threads").map_or(1, |v| v.parse().expect("--threads"));
    let seconds: f64 = arg(&args, "--seconds").map_or(10.0, |v| v.parse().expect("--seconds"));
    // Chroma subsampling of a generated fixture: 420 (default, as phones write), 422, 444.
    let sampling_arg = arg(&args, "--sampling").unwrap_or_else(|| "420".into());
    let sampling = match sampling_arg.as_str() {
        "420" => (2, 2),
        "422" => (2, 1),
        "444" => (1, 1),
        other => panic!("--sampling {other}: 420, 422 or 444"),
    };
    let path = arg(&args, "--fixture").map_or_else(
        || std::env::temp_dir().join(format!("clinic-sharp-task-2725x2225-{sampling_arg}.jpg")),
        std::path::PathBuf::from,
    );
    let input = match std::fs::read(&path) {
        Ok(b) => b,
        Err(_) => {
            // Photo-like content at sharp's size, q90.
            let b = jpeg_rgb_sampled(&photo_like(2725, 2225), 90, sampling);
            std::fs::write(&path, &b).expect("write fixture");
            b
        }
    };
    let input = Arc::new(input);
    let limits = Limits::default();
    // Warm up, and check the output is what the task asks for.
    let out = resize_to(&input, 720, 588, 80, &limits).expect("resize");
    let check = image::load_from_memory(&out.bytes).expect("output decodes");
    assert_eq!((check.width(), check.height()), (720, 588));

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (input, stop, done, limits) =
                (input.clone(), stop.clone(), done.clone(), limits.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    resize_to(&input, 720, 588, 80, &limits).expect("resize");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("worker");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ops = done.load(Ordering::Relaxed);
    let build = if cfg!(feature = "turbojpeg") {
        "turbojpeg"
    } else {
        "pure-rust"
    };
    println!(
        "{{\"impl\":\"{build}\",\"threads\":{threads},\"ops\":{ops},\"seconds\":{elapsed:.3},\"ops_per_sec\":{:.2},\"input_bytes\":{},\"output_bytes\":{}}}",
        ops as f64 / elapsed,
        input.len(),
        out.bytes.len()
    );
}
