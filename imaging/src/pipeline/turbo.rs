//! Shrink on load: libjpeg-turbo decodes at 1/2, 1/4 or 1/8 size in the DCT domain, the
//! smallest scale that still covers what is made from it; and its encoder for derivatives.

use super::*;

/// Most scans a progressive JPEG may have.
const MAX_SCANS: u32 = 500;

/// Encodes 4:2:0 JPEG; the ICC profile (if any) goes into APP2 segments afterwards.
pub(super) fn encode(
    img: &RgbImage,
    icc: Option<&[u8]>,
    quality: u8,
) -> Result<Derivative, ImagingError> {
    let fail = |e: &dyn std::fmt::Display| ImagingError::Corrupt(format!("encode: {e}"));
    let image = turbojpeg::Image {
        pixels: img.as_raw().as_slice(),
        width: img.width() as usize,
        pitch: img.width() as usize * 3,
        height: img.height() as usize,
        format: turbojpeg::PixelFormat::RGB,
    };
    let buf = turbojpeg::compress(image, quality as i32, turbojpeg::Subsamp::Sub2x2)
        .map_err(|e| fail(&e))?;
    Ok(Derivative {
        bytes: with_icc(buf.to_vec(), icc)?,
        width: img.width(),
        height: img.height(),
    })
}

/// Whether a YCbCr JPEG of this size can be decoded at a reduced scale for `fits`; the
/// scale, or `None` (decode at full size instead).
fn shrink_factor(w: u32, h: u32, fits: &dyn Fn(u32, u32) -> bool) -> Option<(u8, u8)> {
    // libjpeg-turbo rounds scaled sizes up.
    let scaled = |n: u8, d: u8, v: u32| (v as u64 * n as u64).div_ceil(d as u64) as u32;
    [(1u8, 8u8), (1, 4), (1, 2)]
        .into_iter()
        .find(|&(n, d)| fits(scaled(n, d, w), scaled(n, d, h)))
}

fn with_decompressor<T>(
    f: impl FnOnce(&mut turbojpeg::Decompressor) -> Result<T, ImagingError>,
) -> Result<T, ImagingError> {
    thread_local! {
        // One decompressor per thread: libjpeg-turbo's state and buffers are reused.
        static DECOMPRESSOR: std::cell::RefCell<Option<turbojpeg::Decompressor>> =
            const { std::cell::RefCell::new(None) };
    }
    DECOMPRESSOR.with_borrow_mut(|slot| {
        let dec = match slot {
            Some(d) => d,
            None => slot.insert(
                turbojpeg::Decompressor::new().map_err(|e| ImagingError::Corrupt(e.to_string()))?,
            ),
        };
        f(dec)
    })
}

/// One plane of samples, `stride` bytes a row.
struct Plane<'a> {
    data: &'a [u8],
    stride: u32,
    rows: u32,
}

/// An image as 8-bit Y, Cb and Cr planes, chroma at half size both ways (4:2:0; rounded up
/// for odd sizes), no padding.
pub(super) struct Yuv420 {
    y: Vec<u8>,
    u: Vec<u8>,
    v: Vec<u8>,
    pub(super) width: u32,
    pub(super) height: u32,
}

/// Resizes the part (0, 0, `crop`) of a plane (fractional) to exactly `width` × `height`.
fn resize_plane(
    src: &Plane,
    crop: (f64, f64),
    width: u32,
    height: u32,
) -> Result<Vec<u8>, ImagingError> {
    let fail = |e: &dyn std::fmt::Display| ImagingError::Corrupt(format!("resize: {e}"));
    let from =
        ImageRef::new(src.stride, src.rows, src.data, PixelType::U8).map_err(|e| fail(&e))?;
    let mut to = FirImage::new(width, height, PixelType::U8);
    let opts = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(lanczos3()))
        .crop(
            0.0,
            0.0,
            crop.0.min(src.stride as f64),
            crop.1.min(src.rows as f64),
        );
    thread_local! {
        static RESIZER: std::cell::RefCell<Resizer> = std::cell::RefCell::new(Resizer::new());
    }
    RESIZER
        .with_borrow_mut(|r| r.resize(&from, &mut to, &opts))
        .map_err(|e| fail(&e))?;
    Ok(to.into_vec())
}

/// Resizes Y, Cb, Cr planes to a 4:2:0 image of `width` × `height`. The source's luma is
/// `sw` × `sh` pixels (fractional sizes allowed) at the top left of `y`, its chroma
/// subsampled by `fh` across and `fv` down.
fn resize_planes(
    [y, u, v]: [&Plane; 3],
    (sw, sh): (f64, f64),
    (fh, fv): (f64, f64),
    width: u32,
    height: u32,
) -> Result<Yuv420, ImagingError> {
    let (cw, ch) = (width.div_ceil(2), height.div_ceil(2));
    // Output chroma sample j covers target luma [2j, 2j + 2), that is source luma
    // [2j·sw/width, …), that is source chroma [2j·sw/(width·fh), …).
    let crop = (
        cw as f64 * 2.0 * sw / (width as f64 * fh),
        ch as f64 * 2.0 * sh / (height as f64 * fv),
    );
    Ok(Yuv420 {
        y: resize_plane(y, (sw, sh), width, height)?,
        u: resize_plane(u, crop, cw, ch)?,
        v: resize_plane(v, crop, cw, ch)?,
        width,
        height,
    })
}

impl Yuv420 {
    /// A grey image (chroma 128) with these luma samples (tests).
    #[cfg(test)]
    pub(super) fn from_planes(y: Vec<u8>, width: u32, height: u32) -> Yuv420 {
        let c = (width.div_ceil(2) * height.div_ceil(2)) as usize;
        Yuv420 {
            y,
            u: vec![128; c],
            v: vec![128; c],
            width,
            height,
        }
    }

    #[cfg(test)]
    pub(super) fn luma(&self) -> &[u8] {
        &self.y
    }

    fn planes(&self) -> [Plane<'_>; 3] {
        let (cw, ch) = (self.width.div_ceil(2), self.height.div_ceil(2));
        [
            Plane {
                data: &self.y,
                stride: self.width,
                rows: self.height,
            },
            Plane {
                data: &self.u,
                stride: cw,
                rows: ch,
            },
            Plane {
                data: &self.v,
                stride: cw,
                rows: ch,
            },
        ]
    }

    /// This image resized to `width` × `height`.
    pub(super) fn resize(&self, width: u32, height: u32) -> Result<Yuv420, ImagingError> {
        let [y, u, v] = self.planes();
        let size = (self.width as f64, self.height as f64);
        resize_planes([&y, &u, &v], size, (2.0, 2.0), width, height)
    }

    /// This image turned upright per its EXIF orientation (1–8), each plane on its own.
    /// For an odd width or height the chroma of the last column or row (half a sample
    /// wide) moves with the sample, so after a flip it sits up to one pixel off.
    pub(super) fn orient(self, orientation: u8) -> Yuv420 {
        if !(2..=8).contains(&orientation) {
            return self;
        }
        let (cw, ch) = (self.width.div_ceil(2), self.height.div_ceil(2));
        let (width, height) = if orientation >= 5 {
            (self.height, self.width)
        } else {
            (self.width, self.height)
        };
        Yuv420 {
            y: orient_plane(&self.y, self.width, self.height, orientation),
            u: orient_plane(&self.u, cw, ch, orientation),
            v: orient_plane(&self.v, cw, ch, orientation),
            width,
            height,
        }
    }

    /// A 4:2:0 JPEG of the planes as they are (no colour conversion), with `icc`.
    pub(super) fn encode(
        &self,
        icc: Option<&[u8]>,
        quality: u8,
    ) -> Result<Derivative, ImagingError> {
        let (w, h) = (self.width as usize, self.height as usize);
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        // The encoder reads whole 2×2 blocks: luma padded by repeating the last column/row.
        let (pw, ph) = (cw * 2, ch * 2);
        let padded;
        let y = if (pw, ph) == (w, h) {
            &self.y[..]
        } else {
            let mut out = Vec::with_capacity(pw * ph);
            for row in self.y.chunks_exact(w) {
                out.extend_from_slice(row);
                out.resize(out.len() + pw - w, row[w - 1]);
            }
            let last = out.len() - pw;
            out.extend_from_within(last..);
            out.truncate(pw * ph);
            padded = out;
            &padded[..]
        };
        let image = turbojpeg::YuvPlanesImage {
            y_plane: y,
            u_plane: &self.u,
            v_plane: &self.v,
            width: w,
            height: h,
            y_stride: pw,
            u_stride: cw,
            v_stride: cw,
            subsamp: turbojpeg::Subsamp::Sub2x2,
        };
        let buf = turbojpeg::compress_yuv_planes(&image, quality as i32)
            .map_err(|e| ImagingError::Corrupt(format!("encode: {e}")))?;
        Ok(Derivative {
            bytes: with_icc(buf.to_vec(), icc)?,
            width: self.width,
            height: self.height,
        })
    }
}

/// A `w` × `h` plane turned per EXIF orientation `o` (2–8), as `image` does it.
fn orient_plane(src: &[u8], w: u32, h: u32, o: u8) -> Vec<u8> {
    let (w, h) = (w as usize, h as usize);
    let (ow, oh) = if o >= 5 { (h, w) } else { (w, h) };
    let mut out = Vec::with_capacity(ow * oh);
    for oy in 0..oh {
        match o {
            2 => out.extend(src[oy * w..][..w].iter().rev()),
            3 => out.extend(src[(h - 1 - oy) * w..][..w].iter().rev()),
            4 => out.extend_from_slice(&src[(h - 1 - oy) * w..][..w]),
            // Transpose: out(x, y) = src(y, x).
            5 => out.extend((0..ow).map(|ox| src[ox * w + oy])),
            // 90° clockwise: out(x, y) = src(y, h-1-x).
            6 => out.extend((0..ow).map(|ox| src[(h - 1 - ox) * w + oy])),
            // Transverse: out(x, y) = src(w-1-y, h-1-x).
            7 => out.extend((0..ow).map(|ox| src[(h - 1 - ox) * w + (w - 1 - oy)])),
            // 90° counter-clockwise: out(x, y) = src(w-1-y, x).
            _ => out.extend((0..ow).map(|ox| src[ox * w + (w - 1 - oy)])),
        }
    }
    out
}

/// What [`decode_resized_yuv`] knows of the image besides its pixels.
pub(super) struct Source {
    pub(super) full_width: u32,
    pub(super) full_height: u32,
    pub(super) icc: Option<Vec<u8>>,
    pub(super) path: DecodePath,
}

/// A YCbCr 4:2:0 JPEG decoded at reduced size (the smallest scale that `fits`) and resized
/// straight to `size(full_width, full_height)` in the stored frame, as Y, Cb and Cr planes:
/// no upsampling or colour conversion in the decoder, a third fewer samples to resize
/// (chroma is a quarter of the size), and the encoder gets planes it needs no conversion
/// for. Resizing commutes with the linear YCbCr → RGB conversion, so the pixels are those of
/// the RGB path within rounding. `None`: not such a JPEG, or it does not shrink on load
/// (the caller takes the RGB path; other subsamplings measured no faster this way).
pub(super) fn decode_resized_yuv(
    bytes: &[u8],
    limits: &Limits,
    fits: &dyn Fn(u32, u32) -> bool,
    size: &dyn Fn(u32, u32) -> (u32, u32),
) -> Result<Option<(Yuv420, Source)>, ImagingError> {
    let corrupt = |e: turbojpeg::Error| ImagingError::Corrupt(e.to_string());
    with_decompressor(|dec| {
        let Ok(header) = dec.read_header(bytes) else {
            return Ok(None);
        };
        let (w, h) = (header.width as u32, header.height as u32);
        check_dimensions(w, h, limits)?;
        if header.colorspace != turbojpeg::Colorspace::YCbCr
            || header.subsamp != turbojpeg::Subsamp::Sub2x2
            || header.is_lossless
        {
            return Ok(None);
        }
        let Some(factor) = shrink_factor(w, h, fits) else {
            return Ok(None);
        };
        let sf = turbojpeg::ScalingFactor::new(factor.0 as usize, factor.1 as usize);
        dec.set_scaling_factor(sf).map_err(corrupt)?;
        dec.set_scan_limit(MAX_SCANS).map_err(corrupt)?;
        let scaled = header.scaled(sf);
        let len = turbojpeg::yuv_pixels_len(scaled.width, 1, scaled.height, header.subsamp)
            .map_err(corrupt)?;
        // Within the decoders' allocation limit, like every other decode.
        if len as u64 > limits.max_alloc {
            return Err(ImagingError::Memory);
        }
        let mut yuv = turbojpeg::YuvImage {
            pixels: vec![0u8; len],
            width: scaled.width,
            align: 1,
            height: scaled.height,
            subsamp: header.subsamp,
        };
        dec.decompress_to_yuv(bytes, yuv.as_deref_mut())
            .map_err(corrupt)?;
        let ((yw, yh), (cw, ch)) = (yuv.y_size(), yuv.uv_size());
        let plane = |start: usize, stride: usize, rows: usize| Plane {
            data: &yuv.pixels[start..start + stride * rows],
            stride: stride as u32,
            rows: rows as u32,
        };
        let (y, u, v) = (
            plane(0, yw, yh),
            plane(yw * yh, cw, ch),
            plane(yw * yh + cw * ch, cw, ch),
        );
        let (tw, th) = size(w, h);
        let out = resize_planes(
            [&y, &u, &v],
            (scaled.width as f64, scaled.height as f64),
            (2.0, 2.0),
            tw,
            th,
        )?;
        Ok(Some((
            out,
            Source {
                full_width: w,
                full_height: h,
                icc: crate::strip::jpeg_icc(bytes),
                path: DecodePath::Shrunk {
                    num: factor.0,
                    denom: factor.1,
                },
            },
        )))
    })
}

/// The JPEG with `icc` (if any) in APP2 segments.
fn with_icc(jpeg: Vec<u8>, icc: Option<&[u8]>) -> Result<Vec<u8>, ImagingError> {
    let Some(icc) = icc else {
        return Ok(jpeg);
    };
    use img_parts::ImageICC;
    let mut jpeg = img_parts::jpeg::Jpeg::from_bytes(jpeg.into())
        .map_err(|e| ImagingError::Corrupt(format!("encode: {e}")))?;
    jpeg.set_icc_profile(Some(img_parts::Bytes::copy_from_slice(icc)));
    Ok(jpeg.encoder().bytes().to_vec())
}

pub(super) fn decode_shrunk(
    bytes: &[u8],
    limits: &Limits,
    fits: &dyn Fn(u32, u32) -> bool,
) -> Result<Option<Decoded>, ImagingError> {
    with_decompressor(|dec| decode_with(dec, bytes, limits, fits))
}

fn decode_with(
    dec: &mut turbojpeg::Decompressor,
    bytes: &[u8],
    limits: &Limits,
    fits: &dyn Fn(u32, u32) -> bool,
) -> Result<Option<Decoded>, ImagingError> {
    let Ok(header) = dec.read_header(bytes) else {
        return Ok(None);
    };
    let (w, h) = (header.width as u32, header.height as u32);
    check_dimensions(w, h, limits)?;
    if matches!(
        header.colorspace,
        turbojpeg::Colorspace::CMYK | turbojpeg::Colorspace::YCCK
    ) {
        return Ok(None);
    }
    let Some(factor) = shrink_factor(w, h, fits) else {
        return Ok(None);
    };
    let sf = turbojpeg::ScalingFactor::new(factor.0 as usize, factor.1 as usize);
    dec.set_scaling_factor(sf)
        .map_err(|e| ImagingError::Corrupt(e.to_string()))?;
    // A progressive JPEG with thousands of tiny scans costs minutes to decode (libjpeg-turbo's
    // advice: limit scans); real encoders write at most a few dozen.
    dec.set_scan_limit(MAX_SCANS)
        .map_err(|e| ImagingError::Corrupt(e.to_string()))?;
    let scaled = header.scaled(sf);
    let mut image = turbojpeg::Image {
        pixels: vec![0u8; scaled.width * scaled.height * 3],
        width: scaled.width,
        pitch: scaled.width * 3,
        height: scaled.height,
        format: turbojpeg::PixelFormat::RGB,
    };
    dec.decompress(bytes, image.as_deref_mut())
        .map_err(|e| ImagingError::Corrupt(e.to_string()))?;
    let rgb = RgbImage::from_raw(scaled.width as u32, scaled.height as u32, image.pixels)
        .ok_or_else(|| ImagingError::Corrupt("decoded buffer size".into()))?;
    // The ICC profile, for the derivatives.
    let icc = crate::strip::jpeg_icc(bytes);
    Ok(Some(Decoded {
        rgb,
        full_width: w,
        full_height: h,
        icc,
        path: DecodePath::Shrunk {
            num: factor.0,
            denom: factor.1,
        },
    }))
}
