//! Wound images through the API: uploads by staff and patients, signed URLs bound to a user and
//! expiring, views and exports audited, bad uploads refused with nothing stored, stored objects
//! sealed and free of metadata, retention and legal holds, and tiering.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use clinic_api::domains::images::Images;
use clinic_api::platform::authz::Role;
use clinic_api::platform::sessions::Stage;
use clinic_api::testkit::{Reply, TestApp, TestUser};
use futures_util::StreamExt;
use imaging::envelope::Context;
use imaging::store::{ObjectKey, Tier};
use imaging::testimages::{crc32, jpeg_rgb, phone_photo, png, quadrants};
use serde_json::{Value, json};

async fn upload(
    app: &TestApp,
    path: &str,
    cookie: &str,
    bytes: Vec<u8>,
    content_type: &str,
) -> Reply {
    let req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("cookie", cookie)
        .header("content-type", content_type)
        .body(Body::from(bytes))
        .unwrap();
    app.send(req).await
}

/// Fetches a signed URL; returns the status, content type and raw bytes.
async fn fetch(app: &TestApp, url: &str, cookie: &str) -> (StatusCode, String, Vec<u8>) {
    let req = Request::builder()
        .uri(url)
        .header("cookie", cookie)
        .body(Body::empty())
        .unwrap();
    let resp = tower::ServiceExt::oneshot(clinic_api::app::router(&app.state), req)
        .await
        .unwrap();
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, ct, bytes.to_vec())
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sql)
        .fetch_one(&app.admin.pool)
        .await
        .unwrap();
    n
}

/// Every file under the blob directory.
fn blob_files(app: &TestApp) -> Vec<std::path::PathBuf> {
    fn walk(d: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push(p);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&app.state.config.blob_dir(), &mut out);
    out
}

async fn audit_actions(app: &TestApp, resource: &str) -> Vec<(String, String)> {
    sqlx::query_as("SELECT action, COALESCE(detail, '') FROM audit_events WHERE resource_type = 'image' AND resource_id = $1 ORDER BY seq")
        .bind(resource)
        .fetch_all(&app.admin.pool)
        .await
        .unwrap()
}

struct Setup {
    app: TestApp,
    provider: TestUser,
    cookie: String,
    patient: String,
}

async fn setup(tweak: impl FnOnce(&mut clinic_api::platform::config::Config)) -> Setup {
    let app = TestApp::with_config(tweak).await;
    let provider = app.user(Role::Provider).await;
    let cookie = app.session(&provider, Stage::Full).await;
    let patient = app
        .patient_in(
            &app.clinic.clone(),
            &app.locations[0].clone(),
            "Robin",
            "Ellis",
        )
        .await
        .to_string();
    Setup {
        app,
        provider,
        cookie,
        patient,
    }
}

#[tokio::test]
async fn staff_upload_view_export_all_audited_and_stored_sealed_without_metadata() {
    let Setup {
        app,
        provider,
        cookie,
        patient,
    } = setup(|_| {}).await;
    let photo = phone_photo(300, 200, 6);
    let r = upload(
        &app,
        &format!("/api/v1/patients/{patient}/images"),
        &cookie,
        photo,
        "image/jpeg",
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(r.body["format"], "jpeg");
    assert_eq!(
        (r.body["width"].as_i64(), r.body["height"].as_i64()),
        (Some(200), Some(300)),
        "upright size"
    );
    assert_eq!(r.body["orientation"], 6);
    assert_eq!(r.body["captured_at"], "2026-11-20T14:03:09-05:00");
    assert_eq!(r.body["original_tier"], "hot");
    assert!(
        !r.text.contains("Robin"),
        "no PHI from the photo's metadata comes back"
    );

    // Listed with signed URLs; the thumbnail and preview are upright JPEGs.
    let list = app
        .call(
            Method::GET,
            &format!("/api/v1/patients/{patient}/images"),
            Some(&cookie),
            None,
        )
        .await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    let item = &list.body[0];
    let thumb_url = item["thumbnail_url"].as_str().unwrap();
    assert!(thumb_url.starts_with("/api/v1/image-files/"), "{thumb_url}");
    assert!(!thumb_url.contains(&patient), "URLs carry no patient id");
    let (status, ct, thumb) = fetch(&app, thumb_url, &cookie).await;
    assert_eq!((status, ct.as_str()), (StatusCode::OK, "image/jpeg"));
    let img = image::load_from_memory(&thumb).unwrap().into_rgb8();
    assert_eq!(
        img.dimensions(),
        (171, 256),
        "upright, 256 px on the long side"
    );
    let (status, _, preview) = fetch(&app, item["preview_url"].as_str().unwrap(), &cookie).await;
    assert_eq!(status, StatusCode::OK);
    let preview = image::load_from_memory(&preview).unwrap().into_rgb8();
    assert_eq!(
        preview.dimensions(),
        (200, 300),
        "upright; smaller than 1280, so full size"
    );

    // Export: step-up first (the test session's MFA check is fresh), then the original.
    let exp = app
        .call(
            Method::POST,
            &format!("/api/v1/images/{id}/export"),
            Some(&cookie),
            None,
        )
        .await;
    assert_eq!(exp.status, StatusCode::OK, "{}", exp.text);
    let (status, ct, original) = fetch(&app, exp.body["url"].as_str().unwrap(), &cookie).await;
    assert_eq!((status, ct.as_str()), (StatusCode::OK, "image/jpeg"));
    // Its one EXIF tag is the orientation (so viewers show it upright): the block is the
    // 26-byte minimal one, and no GPS, XMP or comment survives.
    let minimal = imaging::strip::orientation_tiff(6);
    assert!(original.windows(minimal.len()).any(|w| w == minimal));
    assert_eq!(original.windows(4).filter(|w| *w == b"Exif").count(), 1);
    for needle in [&b"GPS"[..], b"xmpmeta", b"Robin"] {
        assert!(
            !original.windows(needle.len()).any(|w| w == needle),
            "the original holds {needle:?}"
        );
    }
    // Its pixels are those of the upload, as shot.
    let shot = image::load_from_memory(&jpeg_rgb(&quadrants(300, 200), 90))
        .unwrap()
        .into_rgb8();
    assert_eq!(
        image::load_from_memory(&original)
            .unwrap()
            .into_rgb8()
            .as_raw(),
        shot.as_raw()
    );

    // Export after the step-up window: refused until the user steps up again.
    app.clock.advance_secs(6 * 60);
    let stale = app
        .call(
            Method::POST,
            &format!("/api/v1/images/{id}/export"),
            Some(&cookie),
            None,
        )
        .await;
    assert_eq!(
        (stale.status, stale.code()),
        (StatusCode::FORBIDDEN, "step_up_required")
    );

    // Audited: the upload, the list view, both views and the export.
    let actions = audit_actions(&app, &id).await;
    let want = [
        ("create", "upload by staff"),
        ("view", "list"),
        ("view", "thumbnail"),
        ("view", "preview"),
        ("export", "original"),
    ];
    for (a, d) in want {
        assert!(
            actions.iter().any(|(x, y)| x == a && y == d),
            "audit has {a}/{d}: {actions:?}"
        );
    }

    // Everything stored is sealed: no JPEG marker or metadata in the files, and each opens only
    // under its own context, to bytes without GPS.
    let files = blob_files(&app);
    assert_eq!(files.len(), 3, "{files:?}");
    let keys: (String, String, String) =
        sqlx::query_as("SELECT original_key, preview_key, thumbnail_key FROM images WHERE id = $1")
            .bind(&id)
            .fetch_one(&app.admin.pool)
            .await
            .unwrap();
    for (variant, key) in [
        ("original", &keys.0),
        ("preview", &keys.1),
        ("thumbnail", &keys.2),
    ] {
        let path = files
            .iter()
            .find(|p| p.file_name().unwrap() == key.as_str())
            .expect("object file");
        assert!(
            path.to_str().unwrap().contains(app.clinic.as_str()),
            "one tree per tenant"
        );
        let sealed = std::fs::read(path).unwrap();
        assert!(sealed.starts_with(b"CIE1"));
        assert!(
            !sealed.windows(3).any(|w| w == [0xff, 0xd8, 0xff]),
            "{variant} is not plaintext"
        );
        let ctx = Context::new(app.clinic.as_str(), &id, variant);
        let plain = Images::of(&app.state)
            .keys
            .open(&ctx, &sealed)
            .await
            .unwrap();
        for needle in [&b"GPS"[..], b"xmpmeta"] {
            assert!(
                !plain.windows(needle.len()).any(|w| w == needle),
                "{variant} holds {needle:?}"
            );
        }
        // Only the original carries EXIF: its orientation, alone.
        let exif = plain.windows(4).filter(|w| *w == b"Exif").count();
        assert_eq!(
            exif,
            (variant == "original") as usize,
            "{variant}: EXIF blocks"
        );
        let wrong = Context::new(
            app.clinic.as_str(),
            &id,
            if variant == "original" {
                "preview"
            } else {
                "original"
            },
        );
        assert!(
            Images::of(&app.state)
                .keys
                .open(&wrong, &sealed)
                .await
                .is_err()
        );
        assert!(ObjectKey::parse(key).is_some());
    }
    let _ = provider;
}

#[tokio::test]
async fn bad_uploads_get_clear_errors_and_store_nothing() {
    let Setup {
        app,
        cookie,
        patient,
        ..
    } = setup(|c| c.imaging.limits.max_bytes = 200_000).await;
    let path = format!("/api/v1/patients/{patient}/images");
    let good = jpeg_rgb(&quadrants(64, 48), 90);
    let sof = good.windows(2).position(|w| w == [0xff, 0xc0]).unwrap();
    let mut huge = good.clone();
    huge[sof + 5..sof + 7].copy_from_slice(&64250u16.to_be_bytes());
    huge[sof + 7..sof + 9].copy_from_slice(&64250u16.to_be_bytes());
    let mut corrupt = good.clone();
    corrupt[sof + 2] = 0xff;
    corrupt[sof + 3] = 0xff;
    let mut bomb = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&20000u32.to_be_bytes());
    ihdr.extend_from_slice(&20000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    bomb.extend_from_slice(&13u32.to_be_bytes());
    bomb.extend_from_slice(&ihdr);
    bomb.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    let idat = b"IDAT\x78\xda\xed\xc1\x01\x0d\x00\x00\x00\xc2\xa0";
    bomb.extend_from_slice(&((idat.len() - 4) as u32).to_be_bytes());
    bomb.extend_from_slice(idat);
    bomb.extend_from_slice(&crc32(idat).to_be_bytes());
    bomb.extend_from_slice(&[0, 0, 0, 0]);
    bomb.extend_from_slice(b"IEND");
    bomb.extend_from_slice(&crc32(b"IEND").to_be_bytes());
    let mut oversize = jpeg_rgb(&quadrants(64, 48), 90);
    oversize.resize(250_000, 0);
    let cases: Vec<(&str, Vec<u8>, &str, StatusCode, &str)> = vec![
        (
            "empty body",
            vec![],
            "image/jpeg",
            StatusCode::BAD_REQUEST,
            "empty_upload",
        ),
        (
            "truncated JPEG",
            good[..good.len() / 2].to_vec(),
            "image/jpeg",
            StatusCode::UNPROCESSABLE_ENTITY,
            "image_corrupt",
        ),
        (
            "corrupt header",
            corrupt,
            "image/jpeg",
            StatusCode::UNPROCESSABLE_ENTITY,
            "image_corrupt",
        ),
        (
            "64250×64250 header",
            huge,
            "image/jpeg",
            StatusCode::UNPROCESSABLE_ENTITY,
            "image_too_large",
        ),
        (
            "PNG bomb",
            bomb,
            "image/png",
            StatusCode::UNPROCESSABLE_ENTITY,
            "image_too_large",
        ),
        (
            "PDF called photo.jpg",
            b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj <<>>".to_vec(),
            "image/jpeg",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_image_type",
        ),
        (
            "HTML called photo.png",
            b"<!doctype html><script>alert(1)</script>".to_vec(),
            "image/png",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_image_type",
        ),
        (
            "HEIC",
            b"\0\0\0\x18ftypheic\0\0\0\0mif1heic____".to_vec(),
            "image/heic",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "heic_not_supported",
        ),
        (
            "over the size limit",
            oversize,
            "image/jpeg",
            StatusCode::PAYLOAD_TOO_LARGE,
            "upload_too_large",
        ),
    ];
    for (what, bytes, ct, status, code) in cases {
        let r = upload(&app, &path, &cookie, bytes, ct).await;
        assert_eq!((r.status, r.code()), (status, code), "{what}: {}", r.text);
        assert_eq!(
            r.headers["content-type"], "application/problem+json",
            "{what}"
        );
        assert!(
            r.body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{what}: a clear detail"
        );
    }
    assert_eq!(
        count(&app, "SELECT COUNT(*) FROM images").await,
        0,
        "no rows"
    );
    assert!(
        blob_files(&app).is_empty(),
        "no objects: {:?}",
        blob_files(&app)
    );

    // Valid but unusual: a 16-bit PNG and a CMYK JPEG are accepted.
    let img16: image::ImageBuffer<image::Rgb<u16>, Vec<u16>> =
        image::ImageBuffer::from_pixel(40, 30, image::Rgb([65535, 32896, 0]));
    let r = upload(
        &app,
        &path,
        &cookie,
        png(&image::DynamicImage::ImageRgb16(img16)),
        "image/png",
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "16-bit PNG: {}", r.text);
    let cmyk: Vec<u8> = (0..40 * 30).flat_map(|_| [0u8, 255, 255, 0]).collect();
    let mut jpeg = Vec::new();
    jpeg_encoder::Encoder::new(&mut jpeg, 95)
        .encode(&cmyk, 40, 30, jpeg_encoder::ColorType::Cmyk)
        .unwrap();
    let r = upload(&app, &path, &cookie, jpeg, "image/jpeg").await;
    assert_eq!(r.status, StatusCode::CREATED, "CMYK JPEG: {}", r.text);
    let (_, _, thumb) = fetch(&app, r.body["thumbnail_url"].as_str().unwrap(), &cookie).await;
    let px = *image::load_from_memory(&thumb)
        .unwrap()
        .into_rgb8()
        .get_pixel(20, 15);
    assert!(
        px[0] > 200 && px[1] < 60 && px[2] < 60,
        "CMYK red comes out red: {px:?}"
    );
}

#[tokio::test]
async fn a_failed_store_or_database_write_leaves_nothing_behind() {
    let Setup {
        app,
        cookie,
        patient,
        ..
    } = setup(|_| {}).await;
    let path = format!("/api/v1/patients/{patient}/images");
    // The tenant's directory is unusable (a file where the directory should be).
    let tenant_dir = app.state.config.blob_dir().join(app.clinic.as_str());
    std::fs::write(&tenant_dir, b"not a directory").unwrap();
    let r = upload(&app, &path, &cookie, phone_photo(64, 48, 1), "image/jpeg").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable"),
        "{}",
        r.text
    );
    assert_eq!(count(&app, "SELECT COUNT(*) FROM images").await, 0);
    std::fs::remove_file(&tenant_dir).unwrap();

    // The database refuses the row after the objects were stored: they are removed again.
    sqlx::query("CREATE TRIGGER refuse_images BEFORE INSERT ON images BEGIN SELECT RAISE(ABORT, 'refused'); END")
        .execute(&app.admin.pool)
        .await
        .ok();
    if app.backend() == clinic_api::platform::db::Backend::Postgres {
        sqlx::query("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$")
            .execute(&app.admin.pool)
            .await
            .unwrap();
        sqlx::query("CREATE TRIGGER refuse_images BEFORE INSERT ON images FOR EACH ROW EXECUTE FUNCTION refuse()")
            .execute(&app.admin.pool)
            .await
            .unwrap();
    }
    let r = upload(&app, &path, &cookie, phone_photo(64, 48, 1), "image/jpeg").await;
    assert!(r.status.is_server_error(), "{}", r.text);
    assert_eq!(count(&app, "SELECT COUNT(*) FROM images").await, 0);
    assert!(
        blob_files(&app).is_empty(),
        "stored objects were removed: {:?}",
        blob_files(&app)
    );
}

#[tokio::test]
async fn signed_urls_are_bound_to_their_user_and_expire() {
    let Setup {
        app,
        cookie,
        patient,
        ..
    } = setup(|_| {}).await;
    let r = upload(
        &app,
        &format!("/api/v1/patients/{patient}/images"),
        &cookie,
        phone_photo(64, 48, 1),
        "image/jpeg",
    )
    .await;
    let url = r.body["thumbnail_url"].as_str().unwrap().to_string();
    assert_eq!(fetch(&app, &url, &cookie).await.0, StatusCode::OK);

    // Another provider of the same location holds a session but not this URL.
    let other = app.user(Role::Provider).await;
    let other_cookie = app.session(&other, Stage::Full).await;
    assert_eq!(
        fetch(&app, &url, &other_cookie).await.0,
        StatusCode::NOT_FOUND
    );
    // A forged or altered token.
    let mut forged = url.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(fetch(&app, &forged, &cookie).await.0, StatusCode::NOT_FOUND);
    // Staff without image permission cannot list; patients of other records cannot either.
    let desk = app.user(Role::FrontDesk).await;
    let desk_cookie = app.session(&desk, Stage::Full).await;
    let denied = app
        .call(
            Method::GET,
            &format!("/api/v1/patients/{patient}/images"),
            Some(&desk_cookie),
            None,
        )
        .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    // Another tenant's provider cannot reach the patient at all.
    let (clinic_b, locs_b) = app.add_clinic("beta").await;
    let outsider = app.user_in(&clinic_b, Role::Provider, &locs_b).await;
    let outsider_cookie = app.session(&outsider, Stage::Full).await;
    let r = app
        .call(
            Method::GET,
            &format!("/api/v1/patients/{patient}/images"),
            Some(&outsider_cookie),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        fetch(&app, &url, &outsider_cookie).await.0,
        StatusCode::NOT_FOUND
    );
    // Expired.
    app.clock.advance_secs(301);
    let fresh = app
        .session(&app.user(Role::Provider).await, Stage::Full)
        .await;
    let _ = fresh;
    let (status, _, body) = fetch(&app, &url, &cookie).await;
    assert_eq!(
        status,
        StatusCode::GONE,
        "{}",
        String::from_utf8_lossy(&body)
    );
}

#[tokio::test]
async fn patients_upload_and_see_only_their_own_photos() {
    let app = TestApp::new().await;
    let me = app.user(Role::Patient).await;
    let mut tx = app.state.tx(&app.clinic).await.unwrap();
    clinic_api::demo::insert_patient(
        &mut tx,
        &app.clinic,
        &app.locations[0],
        Some(&me.id),
        "Robin",
        "Ellis",
        "1960-01-01",
        app.now(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let cookie = app.session(&me, Stage::Full).await;
    let r = upload(
        &app,
        "/api/v1/me/images",
        &cookie,
        phone_photo(120, 80, 8),
        "image/jpeg",
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["source"], "patient");
    let mine = app
        .call(Method::GET, "/api/v1/me/images", Some(&cookie), None)
        .await;
    assert_eq!(mine.body.as_array().map(Vec::len), Some(1), "{}", mine.text);
    let (status, _, thumb) = fetch(
        &app,
        mine.body[0]["thumbnail_url"].as_str().unwrap(),
        &cookie,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        image::load_from_memory(&thumb)
            .unwrap()
            .into_rgb8()
            .dimensions(),
        (80, 120)
    );

    // Another patient sees none of it, and cannot reach staff routes.
    let other = app.user(Role::Patient).await;
    let mut tx = app.state.tx(&app.clinic).await.unwrap();
    clinic_api::demo::insert_patient(
        &mut tx,
        &app.clinic,
        &app.locations[0],
        Some(&other.id),
        "Alex",
        "Moreau",
        "1970-01-01",
        app.now(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let other_cookie = app.session(&other, Stage::Full).await;
    let theirs = app
        .call(Method::GET, "/api/v1/me/images", Some(&other_cookie), None)
        .await;
    assert_eq!(theirs.body, json!([]));
    assert_eq!(
        fetch(
            &app,
            mine.body[0]["thumbnail_url"].as_str().unwrap(),
            &other_cookie
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    let patient_id = r.body["patient_id"].as_str().unwrap();
    let staff_route = app
        .call(
            Method::GET,
            &format!("/api/v1/patients/{patient_id}/images"),
            Some(&other_cookie),
            None,
        )
        .await;
    assert_eq!(staff_route.status, StatusCode::FORBIDDEN);
    // A patient cannot export an original.
    let id = r.body["id"].as_str().unwrap();
    let exp = app
        .call(
            Method::POST,
            &format!("/api/v1/images/{id}/export"),
            Some(&cookie),
            None,
        )
        .await;
    assert_eq!(exp.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn retention_and_legal_holds_refuse_deletion_then_tiers_move_originals() {
    let Setup {
        app,
        cookie,
        patient,
        ..
    } = setup(|c| {
        c.imaging.orphan_grace_secs = 0;
        c.imaging.tiers.warm_after_days = 30;
        c.imaging.tiers.cold_after_days = 90;
        c.imaging.tiers.min_retention_days = 365;
    })
    .await;
    let r = upload(
        &app,
        &format!("/api/v1/patients/{patient}/images"),
        &cookie,
        phone_photo(64, 48, 1),
        "image/jpeg",
    )
    .await;
    let id = r.body["id"].as_str().unwrap().to_string();
    let owner = app.user(Role::Owner).await;
    let owner_cookie = app.session(&owner, Stage::Full).await;

    let hold = app
        .call(
            Method::PUT,
            &format!("/api/v1/images/{id}/legal-hold"),
            Some(&owner_cookie),
            Some(json!({ "hold": true })),
        )
        .await;
    assert_eq!(
        (hold.status, &hold.body["legal_hold"]),
        (StatusCode::OK, &Value::Bool(true)),
        "{}",
        hold.text
    );
    let del = app
        .call(
            Method::DELETE,
            &format!("/api/v1/images/{id}"),
            Some(&owner_cookie),
            None,
        )
        .await;
    assert_eq!(
        (del.status, del.code()),
        (StatusCode::CONFLICT, "legal_hold")
    );
    // A provider may not place or lift holds.
    let denied = app
        .call(
            Method::PUT,
            &format!("/api/v1/images/{id}/legal-hold"),
            Some(&cookie),
            Some(json!({ "hold": false })),
        )
        .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    app.call(
        Method::PUT,
        &format!("/api/v1/images/{id}/legal-hold"),
        Some(&owner_cookie),
        Some(json!({ "hold": false })),
    )
    .await;
    let del = app
        .call(
            Method::DELETE,
            &format!("/api/v1/images/{id}"),
            Some(&owner_cookie),
            None,
        )
        .await;
    assert_eq!(
        (del.status, del.code()),
        (StatusCode::CONFLICT, "retention_period"),
        "{}",
        del.text
    );

    // Tiering: at 31 days the original goes warm, at 91 cold; derivatives stay hot.
    let keys: (String, String) =
        sqlx::query_as("SELECT original_key, thumbnail_key FROM images WHERE id = $1")
            .bind(&id)
            .fetch_one(&app.admin.pool)
            .await
            .unwrap();
    let (orig, thumb) = (
        ObjectKey::parse(&keys.0).unwrap(),
        ObjectKey::parse(&keys.1).unwrap(),
    );
    let tenant = app.clinic.as_str();
    // An object no image refers to (as a crash between storing and recording leaves) is swept;
    // the image's own objects stay.
    let orphan = ObjectKey::random();
    Images::of(&app.state)
        .store
        .put(tenant, &orphan, b"CIE1 orphan".to_vec(), Tier::Hot)
        .await
        .unwrap();
    let day = 86_400;
    app.clock.advance_secs(31 * day);
    let report =
        clinic_api::domains::images::apply_tiers(&app.state.db, Images::of(&app.state), app.now())
            .await
            .unwrap();
    assert_eq!(report.moved.get("hot->warm"), Some(&1), "{report:?}");
    assert_eq!(report.orphans_removed, 1, "{report:?}");
    assert_eq!(
        blob_files(&app).len(),
        3,
        "the image's three objects remain"
    );
    assert_eq!(
        Images::of(&app.state)
            .store
            .tier_of(tenant, &orig)
            .await
            .unwrap(),
        Tier::Warm
    );
    assert_eq!(
        Images::of(&app.state)
            .store
            .tier_of(tenant, &thumb)
            .await
            .unwrap(),
        Tier::Hot
    );
    let again =
        clinic_api::domains::images::apply_tiers(&app.state.db, Images::of(&app.state), app.now())
            .await
            .unwrap();
    assert!(
        again.moved.is_empty(),
        "a second pass moves nothing: {again:?}"
    );
    app.clock.advance_secs(60 * day);
    let report =
        clinic_api::domains::images::apply_tiers(&app.state.db, Images::of(&app.state), app.now())
            .await
            .unwrap();
    assert_eq!(report.moved.get("warm->cold"), Some(&1), "{report:?}");
    assert_eq!(
        Images::of(&app.state)
            .store
            .tier_of(tenant, &orig)
            .await
            .unwrap(),
        Tier::Cold
    );
    // The original is still served from its tier.
    let cookie = app
        .session(&app.user(Role::Provider).await, Stage::Full)
        .await;
    let exp = app
        .call(
            Method::POST,
            &format!("/api/v1/images/{id}/export"),
            Some(&cookie),
            None,
        )
        .await;
    assert_eq!(
        fetch(&app, exp.body["url"].as_str().unwrap(), &cookie)
            .await
            .0,
        StatusCode::OK
    );

    // After the retention period (and with no hold) deletion removes the objects.
    app.clock.advance_secs(300 * day);
    let owner_cookie = app.session(&owner, Stage::Full).await;
    let del = app
        .call(
            Method::DELETE,
            &format!("/api/v1/images/{id}"),
            Some(&owner_cookie),
            None,
        )
        .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT, "{}", del.text);
    assert!(blob_files(&app).is_empty());
    let cookie = app
        .session(&app.user(Role::Provider).await, Stage::Full)
        .await;
    let list = app
        .call(
            Method::GET,
            &format!("/api/v1/patients/{patient}/images"),
            Some(&cookie),
            None,
        )
        .await;
    assert_eq!(list.body, json!([]));
    let actions = audit_actions(&app, &id).await;
    assert!(
        actions
            .iter()
            .any(|(a, d)| a == "modify" && d == "legal_hold_placed")
    );
    assert!(actions.iter().any(|(a, _)| a == "delete"));
}

/// A burst larger than `imaging.max_inflight_bytes` waits instead of failing: with room for one
/// maximal upload only, uploads that declare no length each reserve the maximum, so they are
/// taken in one at a time, and every one is stored. The reservation is given back afterwards,
/// and a cap that cannot hold one maximal upload is refused at start-up.
#[tokio::test]
async fn an_upload_burst_past_the_memory_cap_waits_its_turn_and_all_are_stored() {
    const MIB: u64 = 1024 * 1024;
    let s = setup(|c| {
        c.imaging.limits.max_bytes = MIB;
        c.imaging.max_inflight_bytes = MIB;
        c.imaging.max_parallel = 1;
    })
    .await;
    let photo = jpeg_rgb(&imaging::testimages::photo_like(640, 480), 85);
    assert_eq!(Images::of(&s.app.state).inflight_free_bytes(), MIB);
    let path = format!("/api/v1/patients/{}/images", s.patient);
    let uploads = (0..6).map(|_| upload(&s.app, &path, &s.cookie, photo.clone(), "image/jpeg"));
    // Watch the reservations while the burst runs: the whole cap is taken at some point.
    let done = std::sync::atomic::AtomicBool::new(false);
    let burst = async {
        let r = futures_util::future::join_all(uploads).await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        r
    };
    let watch = async {
        let mut least = u64::MAX;
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            least = least.min(Images::of(&s.app.state).inflight_free_bytes());
            tokio::task::yield_now().await;
        }
        least
    };
    let (replies, least_free) = tokio::join!(burst, watch);
    assert_eq!(
        least_free, 0,
        "an upload without a length reserves the maximum"
    );
    for r in &replies {
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    assert_eq!(
        count(&s.app, "SELECT COUNT(*) FROM images").await,
        6,
        "every upload of the burst is stored"
    );
    assert_eq!(
        Images::of(&s.app.state).inflight_free_bytes(),
        MIB,
        "reservations are given back"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut config = clinic_api::Config {
        data_dir: dir.path().to_path_buf(),
        ..clinic_api::Config::default()
    };
    config.imaging.max_inflight_bytes = config.imaging.limits.max_bytes - 1;
    let err = clinic_api::app::open(config)
        .await
        .err()
        .expect("a cap below one upload is refused");
    assert!(format!("{err:#}").contains("max_inflight_bytes"), "{err:#}");
}

/// An upload that starts, then stops sending, is refused with 408 after `upload_idle_secs`: its
/// reservation is given back and nothing is stored, so a stalled client cannot hold the cap.
#[tokio::test]
async fn a_stalled_upload_times_out_and_gives_its_reservation_back() {
    let s = setup(|c| c.imaging.upload_idle_secs = 1).await;
    let photo = jpeg_rgb(&quadrants(400, 300), 85);
    let head = axum::body::Bytes::copy_from_slice(&photo[..4096]);
    let cap = s.app.state.config.imaging.max_inflight_bytes;
    // The first 4 KiB (enough to see a JPEG), then silence.
    let stalled = futures_util::stream::once(async move { Ok::<_, std::io::Error>(head) })
        .chain(futures_util::stream::pending());
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("/api/v1/patients/{}/images", s.patient))
        .header("cookie", &s.cookie)
        .header("content-type", "image/jpeg")
        .body(Body::from_stream(stalled))
        .unwrap();
    // (Bounded here, so a missing server-side timeout fails the test instead of hanging it.)
    let r = tokio::time::timeout(std::time::Duration::from_secs(20), s.app.send(req))
        .await
        .expect("the server gives up on a stalled upload");
    assert_eq!(r.status, StatusCode::REQUEST_TIMEOUT, "{}", r.text);
    assert_eq!(r.code(), "upload_stalled");
    assert_eq!(count(&s.app, "SELECT COUNT(*) FROM images").await, 0);
    assert!(blob_files(&s.app).is_empty(), "nothing stored");
    assert_eq!(Images::of(&s.app.state).inflight_free_bytes(), cap);
}

/// A legal hold placed while a deletion is under way wins. The hold's transaction has written
/// (not committed) when the deletion starts: on PostgreSQL the deletion reads the row without the
/// hold, passes the checks, and its UPDATE waits on the row lock; when the hold commits, the
/// UPDATE's own `legal_hold_at IS NULL` turns it into nothing, and the answer is 409 with the
/// image and its objects kept (before the fix the held image was deleted). On SQLite the
/// deletion's write transaction waits for the hold's and then sees it.
#[tokio::test]
async fn a_legal_hold_placed_during_a_deletion_wins() {
    let Setup {
        app,
        cookie,
        patient,
        ..
    } = setup(|c| c.imaging.tiers.min_retention_days = 0).await;
    let r = upload(
        &app,
        &format!("/api/v1/patients/{patient}/images"),
        &cookie,
        phone_photo(64, 48, 1),
        "image/jpeg",
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_string();
    let owner = app.user(Role::Owner).await;
    let owner_cookie = app.session(&owner, Stage::Full).await;
    let postgres = app.backend() == clinic_api::platform::db::Backend::Postgres;

    // The hold, written in a transaction left open.
    let mut hold = app.admin.pool.acquire().await.unwrap();
    let begin = if postgres { "BEGIN" } else { "BEGIN IMMEDIATE" };
    sqlx::query(begin).execute(&mut *hold).await.unwrap();
    sqlx::query("UPDATE images SET legal_hold_at = $1, legal_hold_by = $2 WHERE id = $3")
        .bind(app.now())
        .bind(owner.id.as_str())
        .bind(&id)
        .execute(&mut *hold)
        .await
        .unwrap();

    let path = format!("/api/v1/images/{id}");
    let deletion = app.call(Method::DELETE, &path, Some(&owner_cookie), None);
    let commit_when_waiting = async {
        if postgres {
            // Until the deletion's UPDATE waits on the hold's row lock.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let (waiting,): (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                     AND datname = current_database() AND query LIKE 'UPDATE images SET deleted_at%'",
                )
                .fetch_one(&app.admin.pool)
                .await
                .unwrap();
                if waiting > 0 {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the deletion's UPDATE never waited on the hold"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        } else {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
        sqlx::query("COMMIT").execute(&mut *hold).await.unwrap();
    };
    let (del, ()) = tokio::join!(deletion, commit_when_waiting);
    assert_eq!(
        (del.status, del.code()),
        (StatusCode::CONFLICT, "legal_hold"),
        "{}",
        del.text
    );
    assert_eq!(
        count(
            &app,
            &format!("SELECT COUNT(*) FROM images WHERE id = '{id}' AND deleted_at IS NULL")
        )
        .await,
        1,
        "the held image is kept"
    );
    assert_eq!(blob_files(&app).len(), 3, "its objects are kept");
}
