//! The fuzz suite's harness: one function per target. libFuzzer drives them from
//! `fuzz/libfuzzer` (nightly, `.ci/fuzz.sh`); on stable, `tests/replay.rs` feeds them every input
//! kept under `fuzz/seeds/<target>/` and `fuzz/regressions/<target>/` (each crash found is kept
//! there, so it stays fixed).
//!
//! Each function takes any bytes and must return normally: a panic (in the harness or in the
//! code under test, on any thread) is the failure. Where the code has a contract beyond "does
//! not panic", the harness asserts it too: an API answer is never a 5xx, an accepted TOTP code is
//! the one the secret generates, a processed image's derivatives fit their sizes.

use std::sync::OnceLock;
use std::time::Instant;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use clinic_api::domains::identity::mfa;
use clinic_api::platform::authz::Role;
use clinic_api::platform::sessions::Stage;
use clinic_api::testkit::{TestApp, TestUser};
use signaling::protocol::{self, ClientMsg, Device};
use signaling::room::{Input, Joiner, Room, RoomConfig};
use signaling::token::{Claims, ConsultRole};

/// A target: any bytes in, a panic on failure.
pub type Target = fn(&[u8]);

/// The targets, by name (the libFuzzer binaries and the seed and regression folders).
pub const TARGETS: &[(&str, Target)] = &[
    ("signaling_frame", signaling_frame),
    ("sdp_offer", sdp_offer),
    ("image_upload", image_upload),
    ("api_bodies", api_bodies),
    ("mfa_codes", mfa_codes),
];

/// What a target sets up once before its first input (libFuzzer's `init`), so that no input's
/// time includes starting a media worker or a test tenant.
pub fn init(target: &str) {
    match target {
        "sdp_offer" => {
            sfu();
        }
        "api_bodies" => {
            api();
        }
        _ => {}
    }
}

fn joiner(participant: &str, role: ConsultRole) -> Joiner {
    Joiner {
        claims: Claims {
            clinic: "c".into(),
            consult: "k".into(),
            participant: participant.into(),
            role,
            display: participant.into(),
            iat: 0,
            exp: i64::MAX,
        },
        device: Device {
            user_agent: Some("fuzz".into()),
            client_hints: Default::default(),
        },
        resume_token: format!("resume-{participant}"),
    }
}

/// A signaling frame: the protocol's parser, then (whatever it accepts) a room with an admitted
/// provider, a waiting patient and an unknown connection each sending it; every answer encodes.
pub fn signaling_frame(data: &[u8]) {
    let Ok(frame) = std::str::from_utf8(data) else {
        return;
    };
    let msg = match protocol::parse(frame) {
        Ok(msg) => msg,
        Err(e) => {
            let _ = protocol::encode(&e.to_msg(false));
            return;
        }
    };
    let t = Instant::now();
    let mut room = Room::new("k", RoomConfig::default(), t);
    for (conn, p, role) in [
        (1, "dr", ConsultRole::Provider),
        (2, "pat", ConsultRole::Patient),
    ] {
        room.handle(
            t,
            Input::Join {
                conn,
                joiner: joiner(p, role),
            },
        );
    }
    for conn in [2, 1, 3] {
        let out = room.handle(
            t,
            Input::Msg {
                conn,
                msg: msg.clone(),
            },
        );
        for (_, m) in &out.send {
            let _ = protocol::encode(m);
        }
    }
    room.handle(t + std::time::Duration::from_secs(3600), Input::Tick);
}

/// The SFU's media worker (one, started on first use) and a runtime to call it from.
fn sfu() -> &'static (tokio::runtime::Runtime, sfu::SfuHandle) {
    static SFU: OnceLock<(tokio::runtime::Runtime, sfu::SfuHandle)> = OnceLock::new();
    SFU.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let handle = rt.block_on(async {
            tokio::spawn(async move { while rx.recv().await.is_some() {} });
            sfu::SfuHandle::start("127.0.0.1:0".parse().unwrap(), None, tx).expect("the worker")
        });
        // The worker isolates each peer's str0m calls (`catch_unwind`: the peer is dropped, the
        // others go on), so a panic on its thread is handled, not a crash; libFuzzer's hook
        // would abort on it all the same. Anywhere else a panic aborts, as libFuzzer's would.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("sfu-"))
            {
                return;
            }
            previous(info);
            std::process::abort();
        }));
        (rt, handle)
    })
}

/// An SDP offer as a participant sends it: through the protocol's check, then into the SFU's
/// worker, which answers or refuses it (`InvalidSdp`) and must go on working.
pub fn sdp_offer(data: &[u8]) {
    let Ok(sdp) = std::str::from_utf8(data) else {
        return;
    };
    let frame = serde_json::json!({ "type": "offer", "sdp": sdp }).to_string();
    let Ok(ClientMsg::Offer { sdp }) = protocol::parse(&frame) else {
        return;
    };
    let (rt, sfu) = sfu();
    rt.block_on(async {
        let r = sfu.offer("fuzz", "peer", sdp).await;
        assert!(
            !matches!(r, Err(sfu::SfuError::Stopped)),
            "the media worker stopped"
        );
        sfu.drop_participant("peer");
    });
}

/// An upload's bytes: the sniffer, the metadata stripper (with the EXIF and HEIC readers) and
/// the whole pipeline under tight limits. What is accepted is an image again, upright and
/// within its sizes.
pub fn image_upload(data: &[u8]) {
    let limits = imaging::Limits {
        max_bytes: 8 << 20,
        max_pixels: 4_000_000,
        max_side: 4096,
        max_alloc: 64 << 20,
    };
    let _ = imaging::strip::read_exif(data);
    let _ = imaging::bmff::blank_metadata(data);
    if let Ok(format) = imaging::sniff(data) {
        let _ = imaging::strip::strip(format, data);
    }
    if let Ok(p) = imaging::process(data, &limits) {
        assert!(p.width > 0 && p.height > 0);
        assert!(u64::from(p.width) * u64::from(p.height) <= limits.max_pixels);
        let side = |d: &imaging::pipeline::Derivative| d.width.max(d.height);
        assert!(side(&p.thumbnail) <= imaging::pipeline::THUMBNAIL_SIDE);
        assert!(side(&p.preview) <= imaging::pipeline::PREVIEW_SIDE);
        assert_eq!(
            imaging::sniff(&p.original).ok(),
            Some(p.format),
            "the stored original is still its format"
        );
    }
}

/// A TOTP code and a recovery code as typed: `mfa::check` accepts exactly the secret's code for
/// the current step or its neighbours, once; recovery-code normalizing is idempotent.
pub fn mfa_codes(data: &[u8]) {
    if data.len() < 20 {
        return;
    }
    let (secret, rest) = data.split_at(20);
    let typed = String::from_utf8_lossy(rest);
    let now_ms: i64 = 1_790_000_000_000;
    if let Ok(step) = mfa::check(secret, &typed, now_ms, None) {
        assert!((now_ms / 1000 / 30 - step).abs() <= 1);
        assert_eq!(typed.trim(), mfa::code_at(secret, step * 30));
        assert_eq!(
            mfa::check(secret, &typed, now_ms, Some(step)),
            Err(mfa::CodeError::Replayed)
        );
    }
    let once = mfa::normalize_recovery(&typed);
    assert_eq!(mfa::normalize_recovery(&once), once);
    assert!(once.bytes().all(|b| b.is_ascii_alphanumeric()));
}

/// The app the API target talks to: a fresh test tenant (SQLite under a temporary directory),
/// with its users, a patient and an image, and a runtime.
struct Api {
    rt: tokio::runtime::Runtime,
    app: TestApp,
    users: Vec<TestUser>,
    /// Ids put into paths: a patient, a location, a user, an image (real ones, so handlers get
    /// past their lookups to the bodies' checks).
    patient: String,
    location: String,
    user: String,
    image: String,
    /// Routes that take a JSON body, and the others (whose bodies must be refused or ignored).
    routes: Vec<(Method, &'static str)>,
}

fn api() -> &'static Api {
    static API: OnceLock<Api> = OnceLock::new();
    API.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let (app, users, patient, user, image) = rt.block_on(async {
            let app = TestApp::new().await;
            let mut users = Vec::new();
            for &role in Role::ALL {
                users.push(app.user(role).await);
            }
            let patient = app
                .patient_in(&app.clinic, &app.locations[0], "Fuzz", "Patient")
                .await;
            let other = app.user(Role::FrontDesk).await;
            let provider = users
                .iter()
                .find(|u| u.role == Role::Provider)
                .expect("a provider")
                .clone();
            let cookie = app.session(&provider, Stage::Full).await;
            let req = Request::builder()
                .method(Method::POST)
                .uri(format!("/api/v1/patients/{patient}/images"))
                .header("cookie", cookie)
                .header("content-type", "image/jpeg")
                .body(Body::from(imaging::testimages::phone_photo(64, 48, 6)))
                .unwrap();
            let r = app.send(req).await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
            let image = r.body["id"].as_str().unwrap().to_string();
            (app, users, patient.to_string(), other.id.to_string(), image)
        });
        let routes = clinic_api::app::all_routes()
            .specs()
            .into_iter()
            .filter(|s| s.request_bytes.is_none() && s.path != "/metrics")
            .filter(|s| {
                matches!(
                    s.method,
                    Method::POST | Method::PUT | Method::PATCH | Method::DELETE
                )
            })
            .map(|s| (s.method.clone(), s.path))
            .collect();
        let location = app.locations[0].to_string();
        Api {
            rt,
            app,
            users,
            patient,
            location,
            user,
            image,
            routes,
        }
    })
}

/// A route's path with real ids in its parameters (a made-up one where none fits).
fn concrete(api: &Api, path: &str) -> String {
    let id = if path.starts_with("/api/v1/patients/") {
        &api.patient
    } else if path.starts_with("/api/v1/locations/") {
        &api.location
    } else if path.starts_with("/api/v1/users/") {
        &api.user
    } else if path.starts_with("/api/v1/images/") {
        &api.image
    } else {
        "00000000-0000-4000-8000-000000000000"
    };
    path.split('/')
        .map(|seg| if seg.starts_with('{') { id } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

/// A JSON body to one of the API's routes: the first byte picks the route, the second the
/// caller (each role signed in, one owing MFA, none), the rest is the body. Whatever it is, the
/// answer is never a 5xx.
pub fn api_bodies(data: &[u8]) {
    let [route, who, body @ ..] = data else {
        return;
    };
    let api = api();
    let (method, path) = &api.routes[usize::from(*route) % api.routes.len()];
    let uri = concrete(api, path);
    let who = usize::from(*who) % (api.users.len() * 2 + 1);
    api.rt.block_on(async {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(&uri)
            .header("content-type", "application/json");
        if let Some(user) = api.users.get(who / 2) {
            // Even: fully signed in; odd: the password accepted, the MFA code still owed.
            let stage = if who.is_multiple_of(2) {
                Stage::Full
            } else {
                Stage::MfaPending
            };
            req = req.header("cookie", api.app.session(user, stage).await);
        }
        let r = api
            .app
            .send(req.body(Body::from(body.to_vec())).unwrap())
            .await;
        assert!(
            !r.status.is_server_error(),
            "{method} {path}: {} {}",
            r.status,
            r.text
        );
    });
}
