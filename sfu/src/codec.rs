//! Just enough of the video payload formats for forwarding: is this packet the start of a
//! keyframe, and (VP8) where are the PictureID and TL0PICIDX fields so a layer switch can keep
//! them continuous. Every parser takes untrusted bytes and answers `None` for anything short or
//! odd; none of them can panic.

/// The parts of a VP8 payload descriptor (RFC 7741 §4.2) the forwarder uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vp8Descriptor {
    /// Start of a VP8 partition (S bit) and partition index 0.
    pub start_of_frame: bool,
    /// PictureID value, its offset in the payload and whether it is the 15-bit form.
    pub picture_id: Option<(u16, usize, bool)>,
    /// TL0PICIDX value and its offset.
    pub tl0picidx: Option<(u8, usize)>,
    /// Length of the descriptor; the VP8 payload header follows.
    pub len: usize,
    /// A key frame starts in this packet.
    pub keyframe: bool,
}

/// Parses a VP8 RTP payload's descriptor.
pub fn vp8(payload: &[u8]) -> Option<Vp8Descriptor> {
    let b0 = *payload.first()?;
    let extended = b0 & 0x80 != 0;
    let start = b0 & 0x10 != 0 && b0 & 0x07 == 0;
    let mut i = 1;
    let (mut picture_id, mut tl0picidx) = (None, None);
    if extended {
        let b1 = *payload.get(1)?;
        i = 2;
        let (has_i, has_l, has_t, has_k) = (
            b1 & 0x80 != 0,
            b1 & 0x40 != 0,
            b1 & 0x20 != 0,
            b1 & 0x10 != 0,
        );
        if has_i {
            let p0 = *payload.get(i)?;
            if p0 & 0x80 != 0 {
                let p1 = *payload.get(i + 1)?;
                picture_id = Some(((((p0 & 0x7f) as u16) << 8) | p1 as u16, i, true));
                i += 2;
            } else {
                picture_id = Some(((p0 & 0x7f) as u16, i, false));
                i += 1;
            }
        }
        if has_l {
            tl0picidx = Some((*payload.get(i)?, i));
            i += 1;
        }
        if has_t || has_k {
            payload.get(i)?;
            i += 1;
        }
    }
    // VP8 payload header (RFC 6386 §9.1): P bit 0 means a key frame.
    let keyframe = start && payload.get(i).is_some_and(|h| h & 0x01 == 0);
    Some(Vp8Descriptor {
        start_of_frame: start,
        picture_id,
        tl0picidx,
        len: i,
        keyframe,
    })
}

/// Writes a new PictureID (keeping the field's width) and TL0PICIDX into a payload whose
/// descriptor is `d`.
pub fn vp8_rewrite(payload: &mut [u8], d: &Vp8Descriptor, picture_id: u16, tl0picidx: u8) {
    if let Some((_, at, wide)) = d.picture_id {
        if wide && at + 1 < payload.len() {
            payload[at] = 0x80 | ((picture_id >> 8) as u8 & 0x7f);
            payload[at + 1] = picture_id as u8;
        } else if !wide && at < payload.len() {
            payload[at] = picture_id as u8 & 0x7f;
        }
    }
    if let Some((_, at)) = d.tl0picidx
        && at < payload.len()
    {
        payload[at] = tl0picidx;
    }
}

/// Whether an H.264 RTP payload (RFC 6184) carries the start of an IDR picture (or its SPS).
pub fn h264_keyframe(payload: &[u8]) -> bool {
    let Some(&b0) = payload.first() else {
        return false;
    };
    let is_key = |nal_type: u8| nal_type == 5 || nal_type == 7;
    match b0 & 0x1f {
        // STAP-A: a list of (u16 size, NAL unit).
        24 => {
            let mut i = 1;
            while i + 2 < payload.len() {
                let size = u16::from_be_bytes([payload[i], payload[i + 1]]) as usize;
                if size == 0 {
                    return false;
                }
                if payload.get(i + 2).is_some_and(|n| is_key(n & 0x1f)) {
                    return true;
                }
                i += 2 + size;
            }
            false
        }
        // FU-A: the start fragment names the NAL type.
        28 => payload
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && is_key(fu & 0x1f)),
        t => is_key(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_descriptor_forms() {
        // X=1 S=1, I=1 L=1 T=1, 15-bit PictureID 0x1234, TL0PICIDX 9, TID byte, then a key frame header.
        let p = [0x90, 0xe0, 0x92, 0x34, 9, 0x20, 0x00, 0xaa];
        let d = vp8(&p).unwrap();
        assert_eq!(d.picture_id, Some((0x1234, 2, true)));
        assert_eq!(d.tl0picidx, Some((9, 4)));
        assert_eq!(d.len, 6);
        assert!(d.start_of_frame && d.keyframe);
        // 7-bit PictureID, interframe (P bit set).
        let p = [0x90, 0x80, 0x05, 0x01];
        let d = vp8(&p).unwrap();
        assert_eq!(d.picture_id, Some((5, 2, false)));
        assert!(!d.keyframe);
        // No extension, not a start.
        let d = vp8(&[0x00, 0x00]).unwrap();
        assert!(!d.start_of_frame && !d.keyframe && d.picture_id.is_none());
    }

    #[test]
    fn vp8_rewrite_keeps_width() {
        let mut p = [0x90, 0xc0, 0x92, 0x34, 9, 0x00];
        let d = vp8(&p).unwrap();
        vp8_rewrite(&mut p, &d, 0x7ffe, 200);
        let again = vp8(&p).unwrap();
        assert_eq!(again.picture_id, Some((0x7ffe, 2, true)));
        assert_eq!(again.tl0picidx, Some((200, 4)));
    }

    #[test]
    fn truncated_and_hostile_payloads_are_none_not_panics() {
        for p in [
            &[][..],
            &[0x80],
            &[0x80, 0x80],
            &[0x80, 0x80, 0x80],
            &[0x80, 0x40],
            &[0x80, 0x20],
        ] {
            assert!(vp8(p).is_none(), "{p:?}");
        }
        for p in [
            &[][..],
            &[24],
            &[24, 0, 0],
            &[24, 0xff, 0xff, 0x65],
            &[28],
            &[28, 0x85],
        ] {
            let _ = h264_keyframe(p);
        }
    }

    #[test]
    fn h264_keyframes() {
        assert!(h264_keyframe(&[0x65, 0x88]));
        assert!(h264_keyframe(&[0x67, 0x42]));
        assert!(!h264_keyframe(&[0x41, 0x9a]));
        assert!(h264_keyframe(&[0x7c, 0x85, 0x00]), "FU-A start of an IDR");
        assert!(!h264_keyframe(&[0x7c, 0x05, 0x00]), "FU-A middle");
        assert!(
            h264_keyframe(&[0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x01, 0x68]),
            "STAP-A with SPS"
        );
    }
}
