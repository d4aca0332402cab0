//! Uploads cannot be starved (issue 16 point 7): slow trickles are cut off and hold nothing,
//! one user's uploads take a few slots at a time, waits for memory are bounded, an upload has a
//! deadline, each account a daily byte quota, and an admin can purge a patient's junk uploads
//! (audited, never under legal hold, never staff uploads).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use clinic_api::Config;
use clinic_api::domains::images::Images;
use clinic_api::platform::authz::Role;
use clinic_api::platform::sessions::Stage;
use clinic_api::testkit::{Reply, TestApp, TestUser};
use imaging::testimages::phone_photo;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: u64 = 1024 * 1024;

/// A patient with a portal account and their own record; returns the user and a session.
async fn portal_patient(app: &TestApp, n: usize) -> (TestUser, String, String) {
    let user = app.user(Role::Patient).await;
    let mut tx = app.state.tx(&app.clinic).await.unwrap();
    let patient = clinic_api::demo::insert_patient(
        &mut tx,
        &app.clinic,
        &app.locations[0],
        Some(&user.id),
        &format!("Pat{n}"),
        "Trickle",
        "1960-01-01",
        app.now(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let cookie = app.session(&user, Stage::Full).await;
    (user, cookie, patient.to_string())
}

fn upload_req(path: &str, cookie: &str, body: Body) -> Request<Body> {
    Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("cookie", cookie)
        .header("content-type", "image/jpeg")
        .body(body)
        .unwrap()
}

/// A patient's upload of their own.
async fn upload_own(app: &TestApp, cookie: &str, body: Body) -> Reply {
    app.send(upload_req("/api/v1/me/images", cookie, body))
        .await
}

/// A staff session, a patient and the patient's upload path, with the app configured by `tweak`.
async fn staff_setup(tweak: impl FnOnce(&mut Config)) -> (TestApp, String, String) {
    let app = TestApp::with_config(tweak).await;
    let ma = app.user(Role::MedicalAssistant).await;
    let cookie = app.session(&ma, Stage::Full).await;
    let patient = app
        .patient_in(&app.clinic, &app.locations[0], "Robin", "Ellis")
        .await;
    (app, cookie, format!("/api/v1/patients/{patient}/images"))
}

/// An upload body that sends the first 64 bytes of `photo` (enough to see a JPEG), then nothing.
fn stalled(photo: &[u8]) -> Body {
    let head = axum::body::Bytes::copy_from_slice(&photo[..64]);
    Body::from_stream(futures_util::StreamExt::chain(
        futures_util::stream::once(async move { Ok::<_, std::io::Error>(head) }),
        futures_util::stream::pending(),
    ))
}

/// Sends `req` to the app on a task of its own (for requests that do not end by themselves).
fn in_background(app: &TestApp, req: Request<Body>) -> tokio::task::JoinHandle<()> {
    let state = app.state.clone();
    tokio::spawn(async move {
        let _ = tower::ServiceExt::oneshot(clinic_api::app::router(&state), req).await;
    })
}

/// Files under the blob directory (three per stored image).
fn blob_count(app: &TestApp) -> usize {
    fn walk(d: &std::path::Path) -> usize {
        std::fs::read_dir(d).map_or(0, |rd| {
            rd.flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        walk(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
    }
    walk(&app.state.config.blob_dir())
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sql)
        .fetch_one(&app.admin.pool)
        .await
        .unwrap();
    n
}

/// Nine connections sending one byte every 25 s (three patients, three each), with room in
/// memory for exactly nine maximal uploads: other patients' uploads still go through at once,
/// and every trickle is cut off (408 `upload_too_slow`, or 429 while its user's slots are full)
/// with nothing stored and every reservation given back. Over real TCP connections to the
/// server. Before the fix the trickles held the whole memory cap and the other uploads waited
/// as long as they kept trickling.
#[tokio::test]
async fn slow_trickles_leave_other_patients_uploads_working() {
    let app = TestApp::with_config(|c: &mut Config| {
        c.imaging.limits.max_bytes = MIB;
        c.imaging.max_inflight_bytes = 9 * MIB;
        c.imaging.upload_idle_secs = 60;
        c.imaging.upload_rate_grace_secs = 2;
        c.imaging.upload_min_bytes_per_sec = 1024;
        c.imaging.uploads_per_user = 2;
    })
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(clinic_api::run(
        listener,
        app.state.clone(),
        std::future::pending(),
    ));
    let photo = phone_photo(160, 120, 1);
    let mut trickles = Vec::new();
    for n in 0..3 {
        let (_, cookie, _) = portal_patient(&app, n).await;
        for _ in 0..3 {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let head = format!(
                "POST /api/v1/me/images HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\n\
                 Content-Type: image/jpeg\r\nContent-Length: {MIB}\r\n\r\n"
            );
            s.write_all(head.as_bytes()).await.unwrap();
            s.write_all(&photo[..64]).await.unwrap();
            let (mut rd, mut wr) = s.into_split();
            let feeder = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(25)).await;
                    if wr.write_all(b"\0").await.is_err() {
                        break;
                    }
                }
            });
            trickles.push(tokio::spawn(async move {
                let mut answer = Vec::new();
                let mut buf = [0u8; 4096];
                // Longer than the others' bound below, so an uncut trickle outlasts it.
                let read = tokio::time::timeout(Duration::from_secs(40), async {
                    loop {
                        match rd.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => answer.extend_from_slice(&buf[..n]),
                        }
                        if answer.ends_with(b"}") {
                            break;
                        }
                    }
                })
                .await;
                feeder.abort();
                (read.is_ok(), String::from_utf8_lossy(&answer).into_owned())
            }));
        }
    }
    // Let the trickles take their reservations.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut others = Vec::new();
    for n in 10..13 {
        let (_, cookie, _) = portal_patient(&app, n).await;
        let req = client
            .post(format!("http://{addr}/api/v1/me/images"))
            .header("cookie", cookie)
            .header("content-type", "image/jpeg")
            .body(photo.clone());
        others.push(tokio::spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(15), req.send()).await;
            r.map(|r| r.map(|r| r.status()))
        }));
    }
    for o in others {
        let status = o
            .await
            .unwrap()
            .expect("another patient's upload is answered while the trickles go on")
            .unwrap();
        assert_eq!(status, reqwest::StatusCode::CREATED);
    }
    let waited = started.elapsed();
    let mut codes = std::collections::BTreeMap::new();
    for t in trickles {
        let (answered, text) = t.await.unwrap();
        assert!(answered, "a trickle is cut off: {text}");
        let code = if text.contains("upload_too_slow") {
            "upload_too_slow"
        } else if text.contains("too_many_uploads") {
            "too_many_uploads"
        } else {
            panic!("unexpected answer to a trickle: {text}")
        };
        assert!(
            text.starts_with("HTTP/1.1 408") || text.starts_with("HTTP/1.1 429"),
            "{text}"
        );
        *codes.entry(code).or_insert(0) += 1;
    }
    assert!(
        codes.get("upload_too_slow").copied().unwrap_or(0) >= 6,
        "{codes:?}"
    );
    assert_eq!(
        count(&app, "SELECT COUNT(*) FROM images").await,
        3,
        "the three other uploads are stored, no trickle is"
    );
    let images = Images::of(&app.state);
    assert_eq!(
        images.inflight_free_bytes(),
        9 * MIB,
        "every reservation is back"
    );
    println!("other uploads answered within {waited:?}; trickles: {codes:?}");
}

/// One user's burst takes `uploads_per_user` slots at a time and the rest waits its turn,
/// holding no memory: all of it is stored. A user whose slots stay full past
/// `upload_wait_secs` gets 429 `too_many_uploads`; another user is not held up meanwhile.
#[tokio::test]
async fn one_users_uploads_take_turns_and_a_full_turn_is_refused_in_time() {
    let (app, cookie, path) = staff_setup(|c: &mut Config| {
        c.imaging.uploads_per_user = 2;
        c.imaging.upload_wait_secs = 1;
        c.imaging.upload_idle_secs = 60;
        c.imaging.upload_min_bytes_per_sec = 0;
    })
    .await;
    let photo = phone_photo(120, 90, 1);

    // A burst of six from one user: all stored, two at a time.
    let burst = (0..6).map(|_| app.send(upload_req(&path, &cookie, Body::from(photo.clone()))));
    for r in futures_util::future::join_all(burst).await {
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }

    // Two stalled uploads fill the user's slots: a third is refused after the wait.
    let hold = [
        in_background(&app, upload_req(&path, &cookie, stalled(&photo))),
        in_background(&app, upload_req(&path, &cookie, stalled(&photo))),
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let r = app
        .send(upload_req(&path, &cookie, Body::from(photo.clone())))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::TOO_MANY_REQUESTS, "too_many_uploads"),
        "{}",
        r.text
    );
    assert!(r.headers.get("retry-after").is_some());
    assert!(t.elapsed() < Duration::from_secs(10));
    // Another user meanwhile.
    let other = app.user(Role::Provider).await;
    let other_cookie = app.session(&other, Stage::Full).await;
    let r = app
        .send(upload_req(&path, &other_cookie, Body::from(photo.clone())))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    for h in hold {
        h.abort();
    }
}

/// With the memory cap taken by a stalled upload, another waits at most `upload_wait_secs`,
/// then gets 503 `upload_busy` with Retry-After (before: it waited as long as the stall).
#[tokio::test]
async fn a_wait_for_upload_memory_is_bounded() {
    let (app, cookie, path) = staff_setup(|c: &mut Config| {
        c.imaging.limits.max_bytes = MIB;
        c.imaging.max_inflight_bytes = MIB;
        c.imaging.upload_wait_secs = 1;
        c.imaging.upload_idle_secs = 60;
        c.imaging.upload_min_bytes_per_sec = 0;
    })
    .await;
    let photo = phone_photo(120, 90, 1);
    let hold = in_background(&app, upload_req(&path, &cookie, stalled(&photo)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(Images::of(&app.state).inflight_free_bytes(), 0);
    let other = app.user(Role::Provider).await;
    let other_cookie = app.session(&other, Stage::Full).await;
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        app.send(upload_req(&path, &other_cookie, Body::from(photo.clone()))),
    )
    .await
    .expect("the wait is bounded");
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "upload_busy"),
        "{}",
        r.text
    );
    assert!(r.headers.get("retry-after").is_some());
    hold.abort();
}

/// An upload that keeps sending, above the minimum rate, but past the deadline gets 408
/// `upload_too_slow`; nothing is stored and its reservation is back.
#[tokio::test]
async fn an_upload_past_its_deadline_is_cut_off() {
    let (app, cookie, path) = staff_setup(|c: &mut Config| {
        c.imaging.upload_deadline_secs = 2;
        c.imaging.upload_min_bytes_per_sec = 0;
    })
    .await;
    let photo = phone_photo(400, 300, 1);
    // 256 bytes every 100 ms: never idle, never past the size limit, past the deadline at 2 s.
    let chunks: Vec<Vec<u8>> = photo.chunks(256).map(<[u8]>::to_vec).collect();
    assert!(chunks.len() > 30, "{} chunks", chunks.len());
    let body = Body::from_stream(futures_util::stream::unfold(
        chunks.into_iter(),
        |mut it| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            it.next()
                .map(|c| (Ok::<_, std::io::Error>(axum::body::Bytes::from(c)), it))
        },
    ));
    let r = tokio::time::timeout(
        Duration::from_secs(15),
        app.send(upload_req(&path, &cookie, body)),
    )
    .await
    .expect("answered");
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::REQUEST_TIMEOUT, "upload_too_slow"),
        "{}",
        r.text
    );
    assert_eq!(count(&app, "SELECT COUNT(*) FROM images").await, 0);
    let images = Images::of(&app.state);
    assert_eq!(
        images.inflight_free_bytes(),
        app.state.config.imaging.max_inflight_bytes
    );
}

/// A patient's uploads over 24 hours are capped: the one that would pass the quota is refused
/// with 429 `upload_quota` (a declared length before any byte is read; a chunked body as it
/// passes), and the quota frees up as the day moves on.
#[tokio::test]
async fn a_patient_account_has_a_daily_upload_quota() {
    let photo = phone_photo(200, 150, 1);
    // The quota counts stored originals (the upload with its metadata stripped): room for two.
    let stored = imaging::process(&photo, &imaging::Limits::default())
        .unwrap()
        .original
        .len() as u64;
    // Before reading, the declared length counts (an upload is never smaller than what is stored):
    // two stored, plus the third's upload, is one byte too many.
    let app = TestApp::with_config(|c: &mut Config| {
        c.imaging.patient_daily_upload_bytes = 2 * stored + photo.len() as u64 - 1;
    })
    .await;
    let (user, cookie, _) = portal_patient(&app, 0).await;
    for _ in 0..2 {
        let r = upload_own(&app, &cookie, Body::from(photo.clone())).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    let r = upload_own(&app, &cookie, Body::from(photo.clone())).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::TOO_MANY_REQUESTS, "upload_quota"),
        "{}",
        r.text
    );
    assert!(r.body["limit_bytes"].as_u64().is_some(), "{}", r.text);
    // Chunked (no length): refused as the bytes pass the quota.
    let chunks: Vec<Vec<u8>> = photo.chunks(4096).map(<[u8]>::to_vec).collect();
    let body = Body::from_stream(futures_util::stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, std::io::Error>(axum::body::Bytes::from(c))),
    ));
    let r = upload_own(&app, &cookie, body).await;
    assert_eq!(r.code(), "upload_quota", "{}", r.text);
    assert_eq!(count(&app, "SELECT COUNT(*) FROM images").await, 2);
    // A day later the patient may upload again.
    app.clock.advance_secs(24 * 3600 + 1);
    let cookie = app.session(&user, Stage::Full).await;
    let r = upload_own(&app, &cookie, Body::from(photo.clone())).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
}

/// An owner purges a patient's junk uploads (step-up, with a reason): named ones or the last
/// hours', each audited with the reason, objects removed; images under legal hold and staff
/// uploads are kept and said so; other roles are refused.
#[tokio::test]
async fn junk_uploads_are_purged_by_an_authorized_audited_action() {
    let app = TestApp::new().await;
    let (_, pat_cookie, patient) = portal_patient(&app, 0).await;
    let mut own = Vec::new();
    for _ in 0..3 {
        let r = upload_own(&app, &pat_cookie, Body::from(phone_photo(80, 60, 1))).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        own.push(r.body["id"].as_str().unwrap().to_string());
    }
    let provider = app.user(Role::Provider).await;
    let provider_cookie = app.session(&provider, Stage::Full).await;
    let r = app
        .send(upload_req(
            &format!("/api/v1/patients/{patient}/images"),
            &provider_cookie,
            Body::from(phone_photo(80, 60, 1)),
        ))
        .await;
    let staff_image = r.body["id"].as_str().unwrap().to_string();
    let owner = app.user(Role::Owner).await;
    let owner_cookie = app.session(&owner, Stage::Full).await;
    let hold = app
        .call(
            Method::PUT,
            &format!("/api/v1/images/{}/legal-hold", own[2]),
            Some(&owner_cookie),
            Some(json!({ "hold": true })),
        )
        .await;
    assert_eq!(hold.status, StatusCode::OK, "{}", hold.text);
    let path = format!("/api/v1/patients/{patient}/images/purge");

    // Not for a provider (nor the patient).
    let r = app
        .call(
            Method::POST,
            &path,
            Some(&provider_cookie),
            Some(json!({ "reason": "junk", "within_hours": 24 })),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    // A reason and exactly one selector.
    for bad in [
        json!({ "reason": "", "within_hours": 24 }),
        json!({ "reason": "junk" }),
        json!({ "reason": "junk", "within_hours": 24, "image_ids": [own[0]] }),
        json!({ "reason": "junk", "within_hours": 0 }),
    ] {
        let r = app
            .call(Method::POST, &path, Some(&owner_cookie), Some(bad.clone()))
            .await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {}",
            r.text
        );
    }

    let r = app
        .call(
            Method::POST,
            &path,
            Some(&owner_cookie),
            Some(json!({ "reason": "not wound photos", "image_ids": [own[0], staff_image, own[2], "nope"] })),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["purged"], json!([own[0]]), "{}", r.text);
    let kept: std::collections::BTreeMap<String, String> = r.body["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["id"].as_str().unwrap().into(),
                k["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(kept[&staff_image], "staff_upload");
    assert_eq!(kept[&own[2]], "legal_hold");
    assert_eq!(kept["nope"], "not_found");

    // The last day's: own[1] (own[0] is gone, own[2] is held, the staff upload is not the patient's).
    let r = app
        .call(
            Method::POST,
            &path,
            Some(&owner_cookie),
            Some(json!({ "reason": "flood from a shared phone", "within_hours": 24 })),
        )
        .await;
    assert_eq!(r.body["purged"], json!([own[1]]), "{}", r.text);
    assert_eq!(
        count(&app, "SELECT COUNT(*) FROM images WHERE deleted_at IS NULL").await,
        2,
        "the held image and the staff upload remain"
    );
    let (audited,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM audit_events WHERE resource_type = 'image' AND action = 'delete' \
         AND detail LIKE 'purged as junk: %' AND actor_id = $1 AND patient_id = $2",
    )
    .bind(owner.id.as_str())
    .bind(&patient)
    .fetch_one(&app.admin.pool)
    .await
    .unwrap();
    assert_eq!(audited, 2);
    // The purged images are gone from the patient's own list (the held one and the staff
    // upload remain).
    let mine = app
        .call(Method::GET, "/api/v1/me/images", Some(&pat_cookie), None)
        .await;
    let ids: Vec<&str> = mine
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{}", mine.text);
    assert!(!ids.contains(&own[0].as_str()) && !ids.contains(&own[1].as_str()));
    assert!(
        blob_count(&app) == 2 * 3,
        "the purged images' objects are removed"
    );
}
