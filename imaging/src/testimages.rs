//! Generated test images (feature `testimages`): JPEGs and PNGs with chosen EXIF (orientation,
//! capture time, GPS), for this crate's tests and the API's.

use image::{DynamicImage, ImageBuffer, Rgb, RgbImage};

/// A JPEG with full-size chroma (4:4:4).
pub fn jpeg_rgb(img: &RgbImage, quality: u8) -> Vec<u8> {
    jpeg_rgb_sampled(img, quality, (1, 1))
}

/// A JPEG with chroma subsampled `(h, v)`: (2, 2) is 4:2:0, as phones write; (2, 1) is 4:2:2,
/// as many cameras write; (1, 1) is 4:4:4.
pub fn jpeg_rgb_sampled(img: &RgbImage, quality: u8, (h, v): (u8, u8)) -> Vec<u8> {
    use jpeg_encoder::SamplingFactor as F;
    let sampling = match (h, v) {
        (1, 1) => F::F_1_1,
        (2, 1) => F::F_2_1,
        (1, 2) => F::F_1_2,
        (2, 2) => F::F_2_2,
        (4, 1) => F::F_4_1,
        other => panic!("no sampling factor {other:?}"),
    };
    let mut out = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut out, quality);
    enc.set_sampling_factor(sampling);
    enc.encode(
        img.as_raw(),
        img.width() as u16,
        img.height() as u16,
        jpeg_encoder::ColorType::Rgb,
    )
    .unwrap();
    out
}

pub fn png(img: &DynamicImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Inserts a segment right after SOI.
pub fn with_segment(jpeg: &[u8], marker: u8, body: &[u8]) -> Vec<u8> {
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xff, marker]);
    out.extend_from_slice(&((body.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// A little-endian TIFF/EXIF block: orientation, optionally DateTimeOriginal (+ offset) and GPS.
pub fn exif(orientation: u16, datetime: Option<&str>, gps: bool) -> Vec<u8> {
    // Layout: header(8) | IFD0 | ExifIFD | GPS IFD | data
    let mut ifd0: Vec<(u16, u16, u32, u32)> = vec![(0x0112, 3, 1, orientation as u32)];
    let n0 = 1 + datetime.is_some() as usize + gps as usize;
    let ifd0_len = 2 + 12 * n0 + 4;
    let exif_off = 8 + ifd0_len;
    let exif_len = if datetime.is_some() {
        2 + 12 * 2 + 4
    } else {
        0
    };
    let gps_off = exif_off + exif_len;
    let gps_len = if gps { 2 + 12 * 2 + 4 } else { 0 };
    let data_off = gps_off + gps_len;
    let mut data = Vec::new();
    let mut exif_ifd = Vec::new();
    if let Some(dt) = datetime {
        ifd0.push((0x8769, 4, 1, exif_off as u32));
        let dt_off = data_off + data.len();
        data.extend_from_slice(dt.as_bytes());
        data.push(0);
        let off_off = data_off + data.len();
        data.extend_from_slice(b"-05:00\0");
        exif_ifd.push((0x9003u16, 2u16, 20u32, dt_off as u32));
        exif_ifd.push((0x9011, 2, 7, off_off as u32));
    }
    let mut gps_ifd = Vec::new();
    if gps {
        ifd0.push((0x8825, 4, 1, gps_off as u32));
        let lat_off = data_off + data.len();
        for v in [39u32, 1, 57, 1, 3600, 100] {
            data.extend_from_slice(&v.to_le_bytes());
        }
        gps_ifd.push((0x0001u16, 2u16, 2u32, u32::from_le_bytes(*b"N\0\0\0")));
        gps_ifd.push((0x0002, 5, 3, lat_off as u32));
    }
    let mut out = b"II*\0".to_vec();
    out.extend_from_slice(&8u32.to_le_bytes());
    for ifd in [&ifd0, &exif_ifd, &gps_ifd] {
        if ifd.is_empty() {
            continue;
        }
        out.extend_from_slice(&(ifd.len() as u16).to_le_bytes());
        for (tag, typ, count, value) in ifd.iter() {
            out.extend_from_slice(&tag.to_le_bytes());
            out.extend_from_slice(&typ.to_le_bytes());
            out.extend_from_slice(&count.to_le_bytes());
            if *typ == 3 {
                out.extend_from_slice(&(*value as u16).to_le_bytes());
                out.extend_from_slice(&[0, 0]);
            } else {
                out.extend_from_slice(&value.to_le_bytes());
            }
        }
        out.extend_from_slice(&0u32.to_le_bytes());
    }
    assert_eq!(out.len(), data_off);
    out.extend_from_slice(&data);
    out
}

pub fn app1_exif(tiff: &[u8]) -> Vec<u8> {
    let mut b = b"Exif\0\0".to_vec();
    b.extend_from_slice(tiff);
    b
}

/// Four solid quadrants: red, green / blue, white (top-left, top-right / bottom-left, bottom-right).
pub fn quadrants(w: u32, h: u32) -> RgbImage {
    ImageBuffer::from_fn(w, h, |x, y| match (x < w / 2, y < h / 2) {
        (true, true) => Rgb([255, 0, 0]),
        (false, true) => Rgb([0, 255, 0]),
        (true, false) => Rgb([0, 0, 255]),
        (false, false) => Rgb([255, 255, 255]),
    })
}

/// CRC-32 (PNG chunks).
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A JPEG photo as a phone would send it: EXIF with orientation, capture time and GPS, XMP with a
/// location, a comment naming the patient, and a secondary image with its own EXIF after EOI.
pub fn phone_photo(w: u32, h: u32, orientation: u16) -> Vec<u8> {
    let base = jpeg_rgb(&quadrants(w, h), 90);
    let mut photo = with_segment(
        &base,
        0xe1,
        &app1_exif(&exif(orientation, Some("2026:11:20 14:03:09"), true)),
    );
    photo = with_segment(
        &photo,
        0xe1,
        b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta><rdf:Description exif:GPSLatitude=\"39,57.6N\"/></x:xmpmeta>",
    );
    photo = with_segment(&photo, 0xfe, b"patient Robin Ellis, left heel");
    let mut trailer = with_segment(&base, 0xe1, &app1_exif(&exif(1, None, true)));
    photo.append(&mut trailer);
    photo
}

/// Photo-like pixels: smooth gradients, rings (edges at every angle) and fine luminance texture, so a JPEG
/// of it has a realistic size and decoding cost (benchmarks).
pub fn photo_like(w: u32, h: u32) -> RgbImage {
    ImageBuffer::from_fn(w, h, |x, y| {
        let n = ((x.wrapping_mul(2654435761) ^ y.wrapping_mul(40503)) >> 7) & 31;
        let ring = (((x as f32 - w as f32 / 2.0).hypot(y as f32 - h as f32 / 2.0) / 23.0).sin()
            * 40.0) as i32;
        let c = |base: u32, k: i32| (base as i32 + k).clamp(0, 255) as u8;
        // Texture in luminance (the same in all three channels), little in chroma: as in a
        // camera's photo, where chroma is smooth.
        let n = n as i32;
        Rgb([
            c(x * 200 / w + 20, ring + n),
            c(y * 200 / h + 20, ring / 2 + n),
            c((x + y) * 128 / (w + h) + 40, n - ring / 4),
        ])
    })
}

/// A phone-sized photo with a phone's metadata (EXIF with GPS, XMP, a comment): photo-like
/// pixels at q90, chroma 4:2:0 as phones write it (benchmarks and load tests).
pub fn phone_photo_like(w: u32, h: u32) -> Vec<u8> {
    let base = jpeg_rgb_sampled(&photo_like(w, h), 90, (2, 2));
    let photo = with_segment(
        &base,
        0xe1,
        &app1_exif(&exif(1, Some("2026:11:20 14:03:09"), true)),
    );
    with_segment(&photo, 0xfe, b"patient Robin Ellis, left heel")
}
