//! EXIF orientation as other writers put it (Pillow, piexif) and as broken files carry it: the
//! fixtures under `fixtures/exif/` were made once by `fixtures/exif/generate.py` (see there for
//! what each one is). Every one of them must give an upright thumbnail and preview; a quirk
//! elsewhere in the EXIF block must not cost the orientation.

use image::RgbImage;
use imaging::testimages::quadrants;
use imaging::{Limits, process};

const WRITERS: [&str; 5] = ["pillow", "piexif", "badnext", "badtag", "truncated"];

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/exif/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Why `got` is not `want` (the upright pattern), or `None` when it is, give or take JPEG loss.
/// Pixels next to the quadrant borders are skipped (JPEG rings there); everywhere else each
/// channel must be within 40 levels.
fn mismatch(got: &RgbImage, want: &RgbImage) -> Option<String> {
    if got.dimensions() != want.dimensions() {
        return Some(format!(
            "size {:?}, want {:?}",
            got.dimensions(),
            want.dimensions()
        ));
    }
    let (w, h) = want.dimensions();
    let near_border = |x: u32, y: u32| x.abs_diff(w / 2) <= 3 || y.abs_diff(h / 2) <= 3;
    let bad = (0..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .filter(|&(x, y)| !near_border(x, y))
        .filter(|&(x, y)| {
            let (p, q) = (got.get_pixel(x, y), want.get_pixel(x, y));
            (0..3).any(|c| p[c].abs_diff(q[c]) > 40)
        })
        .count();
    (bad > 0).then(|| format!("{bad} pixels off the upright pattern"))
}

#[test]
fn orientation_from_other_writers_and_broken_exif_comes_out_upright() {
    let upright = quadrants(64, 40);
    let mut failures = Vec::new();
    let mut checks = 0;
    for writer in WRITERS {
        for o in 2u8..=8 {
            checks += 1;
            let name = format!("{writer}-o{o}.jpg");
            let p = match process(&fixture(&name), &Limits::default()) {
                Ok(p) => p,
                Err(e) => {
                    failures.push(format!("{name}: refused: {e}"));
                    continue;
                }
            };
            let mut why = Vec::new();
            if p.orientation != o {
                why.push(format!("orientation read as {}", p.orientation));
            }
            for (what, d) in [("thumbnail", &p.thumbnail), ("preview", &p.preview)] {
                let img = image::load_from_memory(&d.bytes).unwrap().into_rgb8();
                if let Some(m) = mismatch(&img, &upright) {
                    why.push(format!("{what}: {m}"));
                }
            }
            if !why.is_empty() {
                failures.push(format!("{name}: {}", why.join("; ")));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checks} orientation checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Orientation 1 from every writer stays as it is (the lenient reading invents nothing).
#[test]
fn orientation_one_from_every_writer_stays_as_is() {
    let upright = quadrants(64, 40);
    for writer in WRITERS {
        let name = format!("{writer}-o1.jpg");
        let p = process(&fixture(&name), &Limits::default()).unwrap();
        assert_eq!(p.orientation, 1, "{name}");
        let img = image::load_from_memory(&p.preview.bytes)
            .unwrap()
            .into_rgb8();
        assert_eq!(mismatch(&img, &upright), None, "{name}");
    }
}
