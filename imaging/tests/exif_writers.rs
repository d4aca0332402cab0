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

/// The segments before the first scan (marker, body), and the bytes from the first SOS on.
fn segments(jpeg: &[u8]) -> (Vec<(u8, Vec<u8>)>, &[u8]) {
    let mut out = Vec::new();
    let mut i = 2;
    loop {
        assert_eq!(jpeg[i], 0xff, "a marker at {i}");
        let marker = jpeg[i + 1];
        if marker == 0xda {
            return (out, &jpeg[i..]);
        }
        let len = u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]) as usize;
        out.push((marker, jpeg[i + 4..i + 2 + len].to_vec()));
        i += 2 + len;
    }
}

/// The exported original of every orientation opens upright in a decoder that applies EXIF
/// orientation itself (the `image` crate's, which reads EXIF on its own, not with kamadak-exif),
/// holds an EXIF block with the Orientation tag and nothing else, and keeps the upload's scan
/// data byte for byte. The fixtures carry a camera make and a capture time besides.
#[test]
fn exported_originals_display_upright_with_only_the_orientation_tag() {
    use image::{DynamicImage, ImageDecoder, ImageReader};
    let upright = quadrants(64, 40);
    let mut failures = Vec::new();
    for o in 2u8..=8 {
        let name = format!("piexif-o{o}.jpg");
        let upload = fixture(&name);
        let p = process(&upload, &Limits::default()).unwrap();
        let original = &p.original;

        let mut decoder = ImageReader::new(std::io::Cursor::new(original))
            .with_guessed_format()
            .unwrap()
            .into_decoder()
            .unwrap();
        let shown = decoder.orientation().unwrap();
        let mut img = DynamicImage::from_decoder(decoder).unwrap();
        img.apply_orientation(shown);
        if let Some(m) = mismatch(&img.into_rgb8(), &upright) {
            failures.push(format!("{name}: the exported original shows {m}"));
        }

        let (segs, scan) = segments(original);
        let exif: Vec<_> = segs
            .iter()
            .filter(|(m, b)| *m == 0xe1 && b.starts_with(b"Exif\0\0"))
            .map(|(_, b)| b[6..].to_vec())
            .collect();
        match exif.as_slice() {
            [tiff] => {
                let be = tiff.starts_with(b"MM\0*");
                assert!(be || tiff.starts_with(b"II*\0"), "{name}: a TIFF header");
                let u16_at = |at: usize| {
                    let b = [tiff[at], tiff[at + 1]];
                    if be {
                        u16::from_be_bytes(b)
                    } else {
                        u16::from_le_bytes(b)
                    }
                };
                let u32_at = |at: usize| {
                    let b = [tiff[at], tiff[at + 1], tiff[at + 2], tiff[at + 3]];
                    if be {
                        u32::from_be_bytes(b)
                    } else {
                        u32::from_le_bytes(b)
                    }
                };
                let ifd0 = u32_at(4) as usize;
                assert_eq!(u16_at(ifd0), 1, "{name}: IFD0 holds exactly one tag");
                let e = ifd0 + 2;
                assert_eq!(
                    (u16_at(e), u16_at(e + 2), u32_at(e + 4), u16_at(e + 8)),
                    (0x0112, 3, 1, o as u16),
                    "{name}: that tag is Orientation = {o}"
                );
                assert_eq!(u32_at(e + 12), 0, "{name}: no further IFD");
                assert_eq!(tiff.len(), e + 16, "{name}: nothing else in the block");
            }
            other => failures.push(format!("{name}: {} EXIF blocks", other.len())),
        }
        for needle in [&b"FixtureCam"[..], b"2026:11:20"] {
            assert!(
                !original.windows(needle.len()).any(|w| w == needle),
                "{name}: {:?} survived",
                String::from_utf8_lossy(needle)
            );
        }
        assert_eq!(
            scan,
            segments(&upload).1,
            "{name}: scan data byte-identical"
        );
    }
    assert!(
        failures.is_empty(),
        "{} problems in the 7 exported originals:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
