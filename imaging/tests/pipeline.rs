//! The pipeline over generated images: every bad input is refused with the right error, valid
//! but unusual ones (16-bit PNG, CMYK JPEG) come out right, all eight EXIF orientations come out
//! upright, and no metadata survives while the original's pixels stay bit-exact.

use image::{DynamicImage, ImageBuffer, Rgb, RgbImage};
use imaging::pipeline::{PREVIEW_SIDE, THUMBNAIL_SIDE};
use imaging::testimages::{app1_exif, crc32, exif, jpeg_rgb, png, quadrants, with_segment};
use imaging::{Format, ImagingError, Limits, process};

fn near(p: &Rgb<u8>, want: [u8; 3], tol: i32) -> bool {
    (0..3).all(|c| (p[c] as i32 - want[c] as i32).abs() <= tol)
}

fn decode(jpeg: &[u8]) -> RgbImage {
    image::load_from_memory(jpeg).unwrap().into_rgb8()
}

fn assert_quadrants(img: &RgbImage, what: &str) {
    let (w, h) = img.dimensions();
    let at = |fx: f32, fy: f32| *img.get_pixel((w as f32 * fx) as u32, (h as f32 * fy) as u32);
    for (fx, fy, want, name) in [
        (0.25, 0.25, [255, 0, 0], "red top-left"),
        (0.75, 0.25, [0, 255, 0], "green top-right"),
        (0.25, 0.75, [0, 0, 255], "blue bottom-left"),
        (0.75, 0.75, [255, 255, 255], "white bottom-right"),
    ] {
        let p = at(fx, fy);
        assert!(near(&p, want, 48), "{what}: expected {name}, found {p:?}");
    }
}

#[test]
fn refuses_bad_inputs_with_clear_errors() {
    let limits = Limits::default();
    let good = jpeg_rgb(&quadrants(64, 48), 90);

    assert!(matches!(process(b"", &limits), Err(ImagingError::Empty)));

    let truncated = &good[..good.len() * 6 / 10];
    assert!(
        matches!(process(truncated, &limits), Err(ImagingError::Corrupt(_))),
        "truncated"
    );
    assert!(
        matches!(
            process(&good[..good.len() - 2], &limits),
            Err(ImagingError::Corrupt(_))
        ),
        "no EOI"
    );

    // A corrupt header: the frame header's length runs past the end of the file.
    let mut bad_header = good.clone();
    let sof = bad_header
        .windows(2)
        .position(|w| w == [0xff, 0xc0])
        .unwrap();
    bad_header[sof + 2] = 0xff;
    bad_header[sof + 3] = 0xff;
    assert!(
        matches!(process(&bad_header, &limits), Err(ImagingError::Corrupt(_))),
        "corrupt header"
    );
    // Garbage where the frame header's fields are.
    let mut garbage = good.clone();
    for b in &mut garbage[sof + 4..sof + 12] {
        *b = 0;
    }
    assert!(process(&garbage, &limits).is_err(), "zeroed frame header");

    // A header that claims 64250 × 64250 pixels: refused from the header, at once.
    let mut huge = good.clone();
    huge[sof + 5..sof + 7].copy_from_slice(&64250u16.to_be_bytes());
    huge[sof + 7..sof + 9].copy_from_slice(&64250u16.to_be_bytes());
    let t = std::time::Instant::now();
    match process(&huge, &limits) {
        Err(ImagingError::Dimensions { width, height, .. }) => {
            assert_eq!((width, height), (64250, 64250))
        }
        other => panic!("64250×64250: {other:?}"),
    }
    assert!(
        t.elapsed() < std::time::Duration::from_secs(2),
        "refused before decoding"
    );

    // A PNG bomb: 100 bytes claiming 20000 × 20000 pixels.
    let mut bomb = b"\x89PNG\r\n\x1a\n".to_vec();
    let chunk = |out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc_in = kind.to_vec();
        crc_in.extend_from_slice(data);
        out.extend_from_slice(&crc_in);
        out.extend_from_slice(&crc32(&crc_in).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&20000u32.to_be_bytes());
    ihdr.extend_from_slice(&20000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    chunk(&mut bomb, b"IHDR", &ihdr);
    chunk(
        &mut bomb,
        b"IDAT",
        &[
            0x78, 0xda, 0xed, 0xc1, 0x01, 0x0d, 0x00, 0x00, 0x00, 0xc2, 0xa0,
        ],
    );
    chunk(&mut bomb, b"IEND", &[]);
    assert!(
        matches!(
            process(&bomb, &limits),
            Err(ImagingError::Dimensions { .. })
        ),
        "PNG bomb"
    );

    // Not images, whatever their names say.
    for (what, bytes) in [
        ("pdf", &b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj"[..]),
        ("html", b"<!doctype html><script>alert(1)</script>"),
        ("gif", b"GIF89a\x01\x00\x01\x00\x80\x00\x00"),
        ("zip", b"PK\x03\x04\x14\x00\x00\x00"),
    ] {
        assert!(
            matches!(process(bytes, &limits), Err(ImagingError::Unsupported)),
            "{what}"
        );
    }
    let heic = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic";
    if cfg!(feature = "heic") {
        assert!(
            matches!(process(heic, &limits), Err(ImagingError::Corrupt(_))),
            "a broken HEIC"
        );
    } else {
        assert!(matches!(
            process(heic, &limits),
            Err(ImagingError::HeicUnsupported)
        ));
    }

    // Over the size limit.
    let small = Limits {
        max_bytes: 100,
        ..Limits::default()
    };
    assert!(matches!(
        process(&good, &small),
        Err(ImagingError::TooLarge { limit: 100 })
    ));
    assert!(process(&good, &limits).is_ok());
}

#[test]
fn sixteen_bit_png_and_cmyk_jpeg_are_accepted_and_converted() {
    let limits = Limits::default();
    let img16: ImageBuffer<Rgb<u16>, Vec<u16>> =
        ImageBuffer::from_pixel(40, 30, Rgb([65535, 32896, 0]));
    let p = process(&png(&DynamicImage::ImageRgb16(img16)), &limits).unwrap();
    assert_eq!(p.format, Format::Png);
    let thumb = decode(&p.thumbnail.bytes);
    assert!(
        near(thumb.get_pixel(20, 15), [255, 128, 0], 6),
        "16-bit orange: {:?}",
        thumb.get_pixel(20, 15)
    );

    // CMYK as Photoshop writes it (Adobe APP14, samples stored inverted; jpeg-encoder takes
    // 255 = full ink and inverts): pure red is C=0 M=100% Y=100% K=0.
    let (w, h) = (40u16, 30u16);
    let cmyk: Vec<u8> = (0..w as usize * h as usize)
        .flat_map(|_| [0u8, 255, 255, 0])
        .collect();
    let mut jpeg = Vec::new();
    jpeg_encoder::Encoder::new(&mut jpeg, 95)
        .encode(&cmyk, w, h, jpeg_encoder::ColorType::Cmyk)
        .unwrap();
    let p = process(&jpeg, &limits).unwrap();
    assert_eq!((p.width, p.height), (40, 30));
    let thumb = decode(&p.thumbnail.bytes);
    assert!(
        near(thumb.get_pixel(20, 15), [255, 0, 0], 40),
        "CMYK red: {:?}",
        thumb.get_pixel(20, 15)
    );
    // The stored original keeps its Adobe segment: it still decodes as red.
    let orig = decode(&p.original);
    assert!(
        near(orig.get_pixel(20, 15), [255, 0, 0], 40),
        "stored CMYK original: {:?}",
        orig.get_pixel(20, 15)
    );
}

/// The stored image that EXIF orientation `o` displays as `upright`.
fn stored_for(upright: &RgbImage, o: u16) -> RgbImage {
    let (wu, hu) = upright.dimensions();
    let (ws, hs) = if o >= 5 { (hu, wu) } else { (wu, hu) };
    let mut stored = RgbImage::new(ws, hs);
    for y in 0..hu {
        for x in 0..wu {
            let (sx, sy) = match o {
                1 => (x, y),
                2 => (ws - 1 - x, y),
                3 => (ws - 1 - x, hs - 1 - y),
                4 => (x, hs - 1 - y),
                5 => (y, x),
                6 => (y, wu - 1 - x),
                7 => (hu - 1 - y, wu - 1 - x),
                _ => (hu - 1 - y, x),
            };
            stored.put_pixel(sx, sy, *upright.get_pixel(x, y));
        }
    }
    stored
}

#[test]
fn all_eight_orientations_come_out_upright() {
    let upright = quadrants(64, 40);
    let (wu, hu) = upright.dimensions();
    for o in 1u16..=8 {
        let (ws, hs) = if o >= 5 { (hu, wu) } else { (wu, hu) };
        let jpeg = with_segment(
            &jpeg_rgb(&stored_for(&upright, o), 95),
            0xe1,
            &app1_exif(&exif(o, None, false)),
        );
        let p = process(&jpeg, &Limits::default()).unwrap();
        assert_eq!(p.orientation, o as u8);
        assert_eq!(
            (p.width, p.height),
            (wu, hu),
            "orientation {o}: upright size"
        );
        for (name, d) in [("thumbnail", &p.thumbnail), ("preview", &p.preview)] {
            let img = decode(&d.bytes);
            assert_eq!(img.dimensions(), (wu, hu), "orientation {o} {name}");
            assert_quadrants(&img, &format!("orientation {o} {name}"));
        }
        // The original is stored as shot, its orientation kept as data (and, for viewers, as
        // its one EXIF tag; `decode` here ignores it).
        assert_eq!(decode(&p.original).dimensions(), (ws, hs));
    }
}

#[test]
fn metadata_is_stripped_and_original_pixels_stay_exact() {
    let img = quadrants(300, 200);
    let base = jpeg_rgb(&img, 90);
    let mut photo = with_segment(
        &base,
        0xe1,
        &app1_exif(&exif(6, Some("2026:11:20 14:03:09"), true)),
    );
    // XMP with a location, IPTC, a comment, and a secondary image with its own EXIF after EOI
    // (as phones append for depth maps).
    photo = with_segment(
        &photo,
        0xe1,
        b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta><rdf:Description exif:GPSLatitude=\"39,57.6N\"/></x:xmpmeta>",
    );
    photo = with_segment(
        &photo,
        0xed,
        b"Photoshop 3.0\08BIM\x04\x04\0\0\0\0\0\x0a\x1c\x02\x5a\0\x05Ohio!",
    );
    photo = with_segment(&photo, 0xfe, b"patient Robin Ellis, left heel");
    photo = with_segment(&photo, 0xe2, b"MPF\0II*\0");
    let mut trailer = with_segment(&base, 0xe1, &app1_exif(&exif(1, None, true)));
    photo.append(&mut trailer);

    let p = process(&photo, &Limits::default()).unwrap();
    assert_eq!(p.captured_at.as_deref(), Some("2026-11-20T14:03:09-05:00"));
    assert_eq!(p.orientation, 6);
    assert_eq!((p.width, p.height), (200, 300));
    // The original carries its orientation back as its one EXIF tag (exif_writers.rs checks it
    // with an independent decoder); apart from that segment nothing of the metadata is left.
    let mut minimal = vec![0xff, 0xe1, 0, 34];
    minimal.extend_from_slice(&app1_exif(&imaging::strip::orientation_tiff(6)));
    let at = p
        .original
        .windows(minimal.len())
        .position(|w| w == minimal.as_slice())
        .expect("the orientation segment");
    let mut original = p.original.clone();
    original.drain(at..at + minimal.len());
    for (name, bytes) in [
        ("original", &original),
        ("preview", &p.preview.bytes),
        ("thumbnail", &p.thumbnail.bytes),
    ] {
        for needle in [
            &b"Exif"[..],
            b"GPS",
            b"xap/1.0",
            b"xmpmeta",
            b"8BIM",
            b"Robin",
            b"MPF\0",
            b"II*\0",
        ] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{name} still holds {:?}",
                String::from_utf8_lossy(needle)
            );
        }
        assert_eq!(
            bytes.windows(2).filter(|w| *w == [0xff, 0xd8]).count(),
            1,
            "{name}: one image only"
        );
    }
    // Bit-exact pixels: the stored original decodes exactly as the upload did.
    assert_eq!(decode(&p.original).as_raw(), decode(&base).as_raw());
    assert!(p.original.len() < photo.len());

    // PNG: text and eXIf chunks go, pixels stay.
    let png_in = png(&DynamicImage::ImageRgb8(img.clone()));
    let mut tagged = png_in[..33].to_vec();
    let add = |out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut c = kind.to_vec();
        c.extend_from_slice(data);
        out.extend_from_slice(&c);
        out.extend_from_slice(&crc32(&c).to_be_bytes());
    };
    add(&mut tagged, b"tEXt", b"Comment\0patient Robin Ellis");
    add(&mut tagged, b"eXIf", &exif(1, None, true));
    tagged.extend_from_slice(&png_in[33..]);
    let p = process(&tagged, &Limits::default()).unwrap();
    for needle in [&b"Robin"[..], b"eXIf", b"tEXt", b"II*\0"] {
        assert!(!p.original.windows(needle.len()).any(|w| w == needle));
    }
    assert_eq!(decode(&p.original).as_raw(), img.as_raw());
}

#[test]
fn derivatives_fit_their_sides() {
    let p = process(&jpeg_rgb(&quadrants(3000, 2000), 80), &Limits::default()).unwrap();
    assert_eq!((p.preview.width, p.preview.height), (PREVIEW_SIDE, 853));
    assert_eq!(
        (p.thumbnail.width, p.thumbnail.height),
        (THUMBNAIL_SIDE, 171)
    );
    assert_quadrants(&decode(&p.preview.bytes), "preview");
    assert_quadrants(&decode(&p.thumbnail.bytes), "thumbnail");
}

/// Large 4:2:0 photos, as phones write them, in all eight orientations: with `turbojpeg` they
/// take the plane path (decoded at 1/2 size to Y, Cb and Cr, resized and turned plane by
/// plane), and come out upright, at the right sizes, in the right colours. Odd sides on purpose
/// (the chroma planes then have a half-sample edge).
#[test]
fn large_phone_photos_in_all_eight_orientations_come_out_upright() {
    let upright = quadrants(2601, 1301);
    for o in 1u16..=8 {
        let jpeg = with_segment(
            &imaging::testimages::jpeg_rgb_sampled(&stored_for(&upright, o), 90, (2, 2)),
            0xe1,
            &app1_exif(&exif(o, None, false)),
        );
        let p = process(&jpeg, &Limits::default()).unwrap();
        assert_eq!((p.width, p.height), (2601, 1301), "orientation {o}");
        assert_eq!((p.preview.width, p.preview.height), (1280, 640));
        assert_eq!((p.thumbnail.width, p.thumbnail.height), (256, 128));
        for (name, d) in [("thumbnail", &p.thumbnail), ("preview", &p.preview)] {
            let img = decode(&d.bytes);
            assert_eq!(
                img.dimensions(),
                (d.width, d.height),
                "orientation {o} {name}"
            );
            assert_quadrants(&img, &format!("orientation {o} {name}"));
        }
        #[cfg(feature = "turbojpeg")]
        assert_eq!(
            p.decode_path,
            imaging::pipeline::DecodePath::Shrunk { num: 1, denom: 2 }
        );
        if o == 6 {
            // Cut off, or missing its end marker: refused on this path too.
            for cut in [&jpeg[..jpeg.len() * 6 / 10], &jpeg[..jpeg.len() - 2]] {
                assert!(
                    matches!(
                        process(cut, &Limits::default()),
                        Err(ImagingError::Corrupt(_))
                    ),
                    "a cut-off large photo"
                );
            }
        }
    }
}

/// Slivers (a side of a few pixels) shrink on load like any photo, and every derivative keeps at
/// least one pixel a side, in any orientation.
#[test]
fn slivers_come_out_with_at_least_a_pixel_a_side() {
    for (w, h, o) in [(2600, 3, 1u16), (3, 2600, 6), (2601, 2, 3), (4000, 1, 8)] {
        let jpeg = with_segment(
            &imaging::testimages::jpeg_rgb_sampled(&quadrants(w, h), 90, (2, 2)),
            0xe1,
            &app1_exif(&exif(o, None, false)),
        );
        let p = process(&jpeg, &Limits::default()).unwrap();
        #[cfg(feature = "turbojpeg")]
        assert!(
            matches!(p.decode_path, imaging::pipeline::DecodePath::Shrunk { .. }),
            "{w}x{h}: {:?}",
            p.decode_path
        );
        for (name, d) in [("thumbnail", &p.thumbnail), ("preview", &p.preview)] {
            let img = decode(&d.bytes);
            assert_eq!(img.dimensions(), (d.width, d.height), "{w}x{h} {name}");
            assert!(d.width >= 1 && d.height >= 1);
            assert_eq!(
                d.width.max(d.height),
                if name == "preview" { 1280 } else { 256 }
            );
        }
    }
}

/// A large photo (the shrink-on-load path when built with `turbojpeg`): still upright and exact
/// in size, and with the feature the derivatives come from a DCT-domain reduced decode.
#[test]
fn large_photos_use_the_fast_path_where_built_and_stay_upright() {
    let upright = quadrants(2800, 1800);
    // Orientation 6: stored rotated 90° counter-clockwise (display rotates it clockwise).
    let (wu, hu) = upright.dimensions();
    let mut stored = RgbImage::new(hu, wu);
    for y in 0..hu {
        for x in 0..wu {
            stored.put_pixel(y, wu - 1 - x, *upright.get_pixel(x, y));
        }
    }
    let jpeg = with_segment(
        &jpeg_rgb(&stored, 85),
        0xe1,
        &app1_exif(&exif(6, None, true)),
    );
    let p = process(&jpeg, &Limits::default()).unwrap();
    assert_eq!((p.width, p.height), (2800, 1800));
    assert_eq!((p.preview.width, p.preview.height), (1280, 823));
    assert_quadrants(&decode(&p.preview.bytes), "large preview");
    assert_quadrants(&decode(&p.thumbnail.bytes), "large thumbnail");
    #[cfg(feature = "turbojpeg")]
    assert_eq!(
        p.decode_path,
        imaging::pipeline::DecodePath::Shrunk { num: 1, denom: 2 }
    );
    #[cfg(not(feature = "turbojpeg"))]
    assert_eq!(p.decode_path, imaging::pipeline::DecodePath::Full);
}

/// WebP in its extended form (VP8X) with EXIF (orientation 3, GPS) and XMP chunks: accepted,
/// oriented, and stored without either chunk, the VP8X flags cleared, the pixels untouched.
#[test]
fn webp_metadata_is_stripped_and_orientation_applied() {
    let img = quadrants(64, 40);
    let mut simple = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut simple)
        .encode(img.as_raw(), 64, 40, image::ExtendedColorType::Rgb8)
        .unwrap();
    // RIFF size WEBP VP8L… → RIFF size WEBP VP8X EXIF XMP VP8L…
    let chunk = |fourcc: &[u8; 4], data: &[u8]| {
        let mut c = fourcc.to_vec();
        c.extend_from_slice(&(data.len() as u32).to_le_bytes());
        c.extend_from_slice(data);
        if data.len() % 2 == 1 {
            c.push(0);
        }
        c
    };
    let mut vp8x = vec![0x08 | 0x04, 0, 0, 0];
    vp8x.extend_from_slice(&63u32.to_le_bytes()[..3]);
    vp8x.extend_from_slice(&39u32.to_le_bytes()[..3]);
    let mut body = b"WEBP".to_vec();
    body.extend(chunk(b"VP8X", &vp8x));
    body.extend_from_slice(&simple[12..]);
    body.extend(chunk(b"EXIF", &exif(3, Some("2026:01:02 03:04:05"), true)));
    body.extend(chunk(
        b"XMP ",
        b"<x:xmpmeta>GPSLatitude 39,57.6N</x:xmpmeta>",
    ));
    let mut webp = b"RIFF".to_vec();
    webp.extend_from_slice(&(body.len() as u32).to_le_bytes());
    webp.extend(body);

    let p = process(&webp, &Limits::default()).unwrap();
    assert_eq!(p.format, Format::WebP);
    assert_eq!(p.orientation, 3);
    assert_eq!(p.captured_at.as_deref(), Some("2026-01-02T03:04:05-05:00"));
    for needle in [&b"EXIF"[..], b"XMP ", b"GPS", b"II*\0"] {
        assert!(
            !p.original.windows(needle.len()).any(|w| w == needle),
            "{needle:?} left in the WebP"
        );
    }
    let vp8x_at = p.original.windows(4).position(|w| w == b"VP8X").unwrap();
    assert_eq!(
        p.original[vp8x_at + 8] & 0x0c,
        0,
        "EXIF and XMP flags cleared"
    );
    assert_eq!(
        decode(&p.original).as_raw(),
        img.as_raw(),
        "lossless pixels untouched"
    );
    // Orientation 3 is a half turn: the upright thumbnail has the quadrants rotated.
    let thumb = decode(&p.thumbnail.bytes);
    let px = *thumb.get_pixel(48, 30);
    assert!(
        near(&px, [255, 0, 0], 48),
        "red ends bottom-right after the half turn: {px:?}"
    );
}

/// A HEIC photo (made by Debian's heif-enc from a JPEG with EXIF GPS and XMP, as an iPhone's
/// would carry them): decoded, capture time read, metadata blanked in the stored original while
/// its image data stays bit-exact.
#[cfg(feature = "heic")]
#[test]
fn heic_photos_are_decoded_and_stripped() {
    let heic = include_bytes!("fixtures/phone.heic");
    assert!(heic.windows(4).any(|w| w == b"II*\0") && heic.windows(3).any(|w| w == b"GPS"));
    let p = process(heic, &Limits::default()).unwrap();
    assert_eq!(p.format, Format::Heic);
    assert_eq!((p.width, p.height), (320, 240));
    assert_eq!(p.captured_at.as_deref(), Some("2026-11-20T14:03:09-05:00"));
    for needle in [&b"II*\0"[..], b"xmpmeta", b"GPS"] {
        assert!(
            !p.original.windows(needle.len()).any(|w| w == needle),
            "{needle:?} left in the HEIC"
        );
    }
    assert_eq!(
        p.original.len(),
        heic.len(),
        "blanked in place, nothing moved"
    );
    assert_quadrants(&decode(&p.preview.bytes), "HEIC preview");
    // The stored original still decodes, to the same pixels (same derivative bytes), and has no
    // capture time left to read.
    let again = process(&p.original, &Limits::default()).unwrap();
    assert_eq!(again.captured_at, None);
    assert_eq!(again.preview.bytes, p.preview.bytes);
}

#[cfg(not(feature = "heic"))]
#[test]
fn heic_photos_are_refused_clearly_without_the_feature() {
    let heic = include_bytes!("fixtures/phone.heic");
    assert!(matches!(
        process(heic, &Limits::default()),
        Err(ImagingError::HeicUnsupported)
    ));
}

/// An ICC profile in two APP2 chunks (as encoders split large ones) survives: the original keeps
/// its chunks, and the preview, the thumbnail and a fixed-size rendition carry the whole profile.
#[test]
fn the_icc_profile_is_kept_in_the_original_and_every_derivative() {
    use imaging::strip::jpeg_icc;
    let profile: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
    let chunk = |seq: u8, part: &[u8]| {
        let mut body = b"ICC_PROFILE\0".to_vec();
        body.extend_from_slice(&[seq, 2]);
        body.extend_from_slice(part);
        body
    };
    // with_segment inserts right after SOI, so the second chunk goes in first.
    let jpeg = with_segment(
        &with_segment(
            &jpeg_rgb(&quadrants(2000, 1600), 85),
            0xe2,
            &chunk(2, &profile[1000..]),
        ),
        0xe2,
        &chunk(1, &profile[..1000]),
    );
    assert_eq!(jpeg_icc(&jpeg).as_deref(), Some(profile.as_slice()));
    let p = process(&jpeg, &Limits::default()).unwrap();
    for (what, bytes) in [
        ("original", &p.original),
        ("preview", &p.preview.bytes),
        ("thumbnail", &p.thumbnail.bytes),
    ] {
        assert_eq!(
            jpeg_icc(bytes).as_deref(),
            Some(profile.as_slice()),
            "{what} has the profile"
        );
    }
    let r = imaging::pipeline::resize_to(&jpeg, 720, 576, 80, &Limits::default()).unwrap();
    assert_eq!(jpeg_icc(&r.bytes).as_deref(), Some(profile.as_slice()));
    // A profile with a chunk missing is no profile (never half of one).
    let broken = with_segment(
        &jpeg_rgb(&quadrants(64, 64), 85),
        0xe2,
        &chunk(1, &profile[..1000]),
    );
    assert_eq!(jpeg_icc(&broken), None);
}

/// sharp's benchmark task through `resize_to`: exactly the size asked for, the picture intact,
/// from a DCT-domain reduced decode where the build has libjpeg-turbo.
#[test]
fn resize_to_gives_exactly_the_size_asked_for() {
    // 4:4:4 and 4:2:2 take the RGB path, 4:2:0 the plane path (with `turbojpeg`).
    for sampling in [(1, 1), (2, 1), (2, 2)] {
        let jpeg = imaging::testimages::jpeg_rgb_sampled(&quadrants(2725, 2225), 90, sampling);
        let r = imaging::pipeline::resize_to(&jpeg, 720, 588, 80, &Limits::default()).unwrap();
        assert_eq!((r.width, r.height), (720, 588));
        let img = decode(&r.bytes);
        assert_eq!(img.dimensions(), (720, 588));
        assert_quadrants(&img, &format!("rendition of {sampling:?}"));
    }
    assert!(matches!(
        imaging::pipeline::resize_to(b"GIF89a not a photo at all", 10, 10, 80, &Limits::default()),
        Err(ImagingError::Unsupported)
    ));
}

/// A hostile HEIC (a million empty boxes in its `meta` box, 8 MB) is refused by the item-location
/// parser's box cap before libheif reads it, with a clear error.
#[cfg(feature = "heic")]
#[test]
fn hostile_heic_structures_are_refused_before_decoding() {
    let bx = |kind: &[u8; 4], payload: &[u8]| {
        let mut out = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(payload);
        out
    };
    let mut inner = vec![0u8; 4];
    for _ in 0..1_000_000 {
        inner.extend(bx(b"free", b""));
    }
    let mut file = bx(b"ftyp", b"heic\0\0\0\0mif1heic");
    file.extend(bx(b"meta", &inner));
    match process(&file, &Limits::default()) {
        Err(ImagingError::Corrupt(why)) => assert!(why.contains("too many boxes"), "{why}"),
        other => panic!("{other:?}"),
    }
}
