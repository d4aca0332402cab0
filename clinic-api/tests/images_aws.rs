//! The production imaging back ends against real servers: S3 (an S3-compatible server such as
//! s3s-fs, at TEST_S3_URL) and AWS KMS (the moto emulator, at TEST_MOTO_URL, whose S3 also keeps
//! storage classes for tiering). `.ci/run` starts both; without them these tests say SKIPPED.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use clinic_api::domains::images::Images;
use clinic_api::platform::authz::Role;
use clinic_api::platform::config::{KeyProviderKind, StoreKind};
use clinic_api::platform::sessions::Stage;
use clinic_api::testkit::{TestApp, say_uncaptured};
use imaging::aws::{AwsSettings, kms_client, s3_client};
use imaging::envelope::Context;
use imaging::keys::{CacheLimits, KeyProvider, KmsKeys};
use imaging::store::{BlobStore, ObjectKey, S3Store, Tier};
use imaging::testimages::phone_photo;

fn service(var: &str, test: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            say_uncaptured(&format!(
                "SKIPPED {test}: needs {var} (an S3-compatible server / the moto emulator; .ci/run starts them)\n"
            ));
            None
        }
    }
}

/// Credentials for the test servers (moto accepts any; s3s-fs is started with these).
fn settings(url: &str) -> AwsSettings {
    AwsSettings {
        endpoint: Some(url.to_string()),
        region: Some("us-east-1".into()),
        access_key_id: Some(
            std::env::var("TEST_S3_ACCESS_KEY").unwrap_or_else(|_| "clinic-test".into()),
        ),
        secret_access_key: Some(
            std::env::var("TEST_S3_SECRET_KEY").unwrap_or_else(|_| "clinic-test-secret".into()),
        ),
    }
}

async fn new_kms_key(url: &str) -> String {
    let kms = kms_client(&settings(url)).await;
    let key = kms
        .create_key()
        .description("clinic test key")
        .send()
        .await
        .expect("CreateKey");
    key.key_metadata().unwrap().key_id().to_string()
}

async fn new_bucket(url: &str) -> String {
    let s3 = s3_client(&settings(url), true).await;
    let bucket = format!(
        "clinic-test-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("CreateBucket");
    bucket
}

#[tokio::test]
async fn kms_wraps_a_fresh_data_key_per_object_and_caches_unwrapped_keys() {
    let Some(url) = service("TEST_MOTO_URL", "kms_wraps_a_fresh_data_key_per_object") else {
        return;
    };
    let key_id = new_kms_key(&url).await;
    let kms = KmsKeys::new(
        kms_client(&settings(&url)).await,
        &key_id,
        CacheLimits {
            entries: 2,
            ttl: std::time::Duration::from_secs(60),
        },
    );
    let keys = KeyProvider::Kms(kms);
    let ctx = Context::new("tenant-1", "image-1", "original");
    let a = keys.seal(&ctx, b"wound photo bytes").await.unwrap();
    let b = keys.seal(&ctx, b"wound photo bytes").await.unwrap();
    let (ha, _) = imaging::envelope::Header::parse(&a).unwrap();
    let (hb, _) = imaging::envelope::Header::parse(&b).unwrap();
    assert_ne!(
        ha.wrapped_key, hb.wrapped_key,
        "a fresh data key per object"
    );
    assert!(ha.key_id.contains(&key_id), "{} names {key_id}", ha.key_id);
    let KeyProvider::Kms(k) = &keys else {
        unreachable!()
    };
    let calls = k.calls();
    assert_eq!(keys.open(&ctx, &a).await.unwrap(), b"wound photo bytes");
    assert_eq!(k.calls(), calls, "the data key came from the cache");

    // A new provider (empty cache) asks KMS, which checks the encryption context.
    let cold = KmsKeys::new(
        kms_client(&settings(&url)).await,
        &key_id,
        CacheLimits::default(),
    );
    let cold = KeyProvider::Kms(cold);
    assert_eq!(cold.open(&ctx, &b).await.unwrap(), b"wound photo bytes");
    let KeyProvider::Kms(ck) = &cold else {
        unreachable!()
    };
    assert_eq!(ck.calls(), 1, "one Decrypt");
    let fresh = KeyProvider::Kms(KmsKeys::new(
        kms_client(&settings(&url)).await,
        &key_id,
        CacheLimits::default(),
    ));
    let other = Context::new("tenant-2", "image-1", "original");
    assert!(
        fresh.open(&other, &b).await.is_err(),
        "KMS refuses another tenant's context"
    );
    // The cache is bounded.
    for i in 0..5 {
        keys.seal(&Context::new("t", &format!("i{i}"), "thumbnail"), b"x")
            .await
            .unwrap();
    }
    assert!(k.cached() <= 2, "{} cached", k.cached());
}

#[tokio::test]
async fn s3_store_keeps_whole_sealed_objects_per_tenant_prefix() {
    let Some(url) = service("TEST_S3_URL", "s3_store_keeps_whole_sealed_objects") else {
        return;
    };
    let bucket = new_bucket(&url).await;
    let store = BlobStore::S3(S3Store::new(
        s3_client(&settings(&url), true).await,
        &bucket,
        "images/",
        None,
        false,
    ));
    let key = ObjectKey::random();
    store
        .put("tenant-a", &key, b"CIE1 sealed".to_vec(), Tier::Hot)
        .await
        .unwrap();
    assert_eq!(
        store.get("tenant-a", &key, Tier::Hot).await.unwrap(),
        b"CIE1 sealed"
    );
    assert_eq!(store.list("tenant-a").await.unwrap(), vec![key.clone()]);
    assert!(
        store.list("tenant-b").await.unwrap().is_empty(),
        "one prefix per tenant"
    );
    assert!(matches!(
        store.get("tenant-b", &key, Tier::Hot).await,
        Err(imaging::ImagingError::NotFound)
    ));
    // The object's name is the random key under the tenant's prefix, nothing else.
    let s3 = s3_client(&settings(&url), true).await;
    let listed = s3.list_objects_v2().bucket(&bucket).send().await.unwrap();
    let names: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(names, vec![format!("images/tenant-a/{}", key.as_str())]);
    store.delete("tenant-a", &key).await.unwrap();
    assert!(matches!(
        store.get("tenant-a", &key, Tier::Hot).await,
        Err(imaging::ImagingError::NotFound)
    ));
}

#[tokio::test]
async fn s3_tiers_are_storage_classes() {
    let Some(url) = service("TEST_MOTO_URL", "s3_tiers_are_storage_classes") else {
        return;
    };
    let bucket = new_bucket(&url).await;
    // With SSE-KMS on top of our own envelope encryption.
    let sse_key = new_kms_key(&url).await;
    let store = BlobStore::S3(S3Store::new(
        s3_client(&settings(&url), true).await,
        &bucket,
        "",
        Some(sse_key.clone()),
        true,
    ));
    let key = ObjectKey::random();
    store
        .put("t", &key, b"sealed original".to_vec(), Tier::Hot)
        .await
        .unwrap();
    assert_eq!(store.tier_of("t", &key).await.unwrap(), Tier::Hot);
    store
        .set_tier("t", &key, Tier::Hot, Tier::Warm)
        .await
        .unwrap();
    assert_eq!(store.tier_of("t", &key).await.unwrap(), Tier::Warm);
    store
        .set_tier("t", &key, Tier::Warm, Tier::Cold)
        .await
        .unwrap();
    assert_eq!(store.tier_of("t", &key).await.unwrap(), Tier::Cold);
    assert_eq!(
        store.get("t", &key, Tier::Cold).await.unwrap(),
        b"sealed original"
    );
    let head = s3_client(&settings(&url), true)
        .await
        .head_object()
        .bucket(&bucket)
        .key(format!("t/{}", key.as_str()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.server_side_encryption().map(|e| e.as_str()),
        Some("aws:kms")
    );
    assert!(
        head.ssekms_key_id().is_some_and(|k| k.contains(&sse_key)),
        "{:?}",
        head.ssekms_key_id()
    );
}

#[tokio::test]
async fn uploads_go_to_s3_sealed_under_kms_data_keys() {
    let (Some(s3_url), Some(moto_url)) = (
        service("TEST_S3_URL", "uploads_go_to_s3_sealed_under_kms_data_keys"),
        service(
            "TEST_MOTO_URL",
            "uploads_go_to_s3_sealed_under_kms_data_keys",
        ),
    ) else {
        return;
    };
    let bucket = new_bucket(&s3_url).await;
    let key_id = new_kms_key(&moto_url).await;
    let creds = settings(&s3_url);
    let app = TestApp::with_config(|c| {
        c.imaging.store = StoreKind::S3;
        c.imaging.s3.endpoint = Some(s3_url.clone());
        c.imaging.s3.region = creds.region.clone();
        c.imaging.s3.access_key_id = creds.access_key_id.clone();
        c.imaging.s3.secret_access_key = creds.secret_access_key.clone();
        c.imaging.s3.bucket = bucket.clone();
        c.imaging.s3.force_path_style = true;
        c.imaging.s3.storage_classes = false;
        c.imaging.keys = KeyProviderKind::Kms;
        c.imaging.kms.endpoint = Some(moto_url.clone());
        c.imaging.kms.region = Some("us-east-1".into());
        c.imaging.kms.access_key_id = Some("clinic-test".into());
        c.imaging.kms.secret_access_key = Some("clinic-test-secret".into());
        c.imaging.kms.key_id = key_id.clone();
    })
    .await;
    let provider = app.user(Role::Provider).await;
    let cookie = app.session(&provider, Stage::Full).await;
    let patient = app
        .patient_in(
            &app.clinic.clone(),
            &app.locations[0].clone(),
            "Robin",
            "Ellis",
        )
        .await;
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("/api/v1/patients/{patient}/images"))
        .header("cookie", &cookie)
        .body(Body::from(phone_photo(400, 300, 3)))
        .unwrap();
    let r = app.send(req).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.body["id"].as_str().unwrap();
    let req = Request::builder()
        .uri(r.body["thumbnail_url"].as_str().unwrap())
        .header("cookie", &cookie)
        .body(Body::empty())
        .unwrap();
    let resp = tower::ServiceExt::oneshot(clinic_api::app::router(&app.state), req)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let thumb = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    assert_eq!(
        image::load_from_memory(&thumb)
            .unwrap()
            .into_rgb8()
            .dimensions(),
        (256, 192)
    );

    // Three objects under the tenant's prefix, each sealed (a KMS-wrapped data key in its header)
    // and free of the photo's metadata once opened.
    let keys = Images::of(&app.state)
        .store
        .list(app.clinic.as_str())
        .await
        .unwrap();
    assert_eq!(keys.len(), 3);
    let row: (String, String, String, String) = sqlx::query_as(
        "SELECT original_key, preview_key, thumbnail_key, key_provider FROM images WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&app.admin.pool)
    .await
    .unwrap();
    assert_eq!(row.3, "kms");
    for (variant, key) in [
        ("original", &row.0),
        ("preview", &row.1),
        ("thumbnail", &row.2),
    ] {
        let key = ObjectKey::parse(key).unwrap();
        let sealed = Images::of(&app.state)
            .store
            .get(app.clinic.as_str(), &key, Tier::Hot)
            .await
            .unwrap();
        let (header, _) = imaging::envelope::Header::parse(&sealed).unwrap();
        assert!(header.key_id.contains(&key_id));
        let plain = Images::of(&app.state)
            .keys
            .open(&Context::new(app.clinic.as_str(), id, variant), &sealed)
            .await
            .unwrap();
        assert!(!plain.windows(3).any(|w| w == b"GPS"), "{variant}");
    }
}
