//! Tenants: a clinic (practice) is created by an operator, never through the tenant API.

use crate::platform::db::Db;
use crate::platform::ids::ClinicId;

/// Creates a clinic with its slug (used at sign-in) and name.
pub async fn create(db: &Db, slug: &str, name: &str, now: i64) -> anyhow::Result<ClinicId> {
    anyhow::ensure!(
        (2..=40).contains(&slug.len())
            && slug
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
        "a clinic slug is 2 to 40 characters: lowercase letters, digits and -"
    );
    anyhow::ensure!(!name.trim().is_empty(), "a clinic needs a name");
    anyhow::ensure!(
        db.clinic_id_by_slug(slug).await?.is_none(),
        "a clinic with slug {slug} already exists"
    );
    let id = ClinicId::new();
    let mut tx = db.tenant_tx(&id, now).await?;
    sqlx::query("INSERT INTO clinics (id, slug, name, created_at) VALUES ($1, $2, $3, $4)")
        .bind(id.as_str())
        .bind(slug)
        .bind(name.trim())
        .bind(now)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(id)
}
