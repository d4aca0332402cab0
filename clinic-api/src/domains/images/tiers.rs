//! The tiering job: originals move between hot, warm and cold as they age, and objects no row
//! points to are swept.

use super::*;

/// What a tiering pass did.
#[derive(Debug, Default, Serialize)]
pub struct TierReport {
    /// (from, to) → originals moved.
    pub moved: BTreeMap<String, u64>,
    pub failed: u64,
    pub examined: u64,
    /// Objects no image refers to (left by a crash between storing and recording an upload, or
    /// by a failed removal), older than the grace period, removed.
    pub orphans_removed: u64,
}

/// Applies the tier policy to every tenant's originals: moves those whose age calls for a
/// colder tier, then records the new tier. Thumbnails and previews stay hot.
pub async fn apply_tiers(db: &Db, images: &Images, now: i64) -> anyhow::Result<TierReport> {
    let mut report = TierReport::default();
    for clinic in db.clinic_ids().await? {
        let mut tx = db.tenant_tx(&clinic, now).await?;
        let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
            "SELECT id, original_key, original_tier, created_at FROM images \
             WHERE clinic_id = $1 AND deleted_at IS NULL AND original_tier <> 'cold'",
        )
        .bind(clinic.as_str())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        for (id, key, tier, created) in rows {
            report.examined += 1;
            let (Some(from), Some(key)) = (Tier::parse(&tier), ObjectKey::parse(&key)) else {
                report.failed += 1;
                continue;
            };
            let to = images.policy.tier_for(created, now);
            if to <= from {
                continue;
            }
            if let Err(e) = images.store.set_tier(clinic.as_str(), &key, from, to).await {
                tracing::warn!(error = %e, "tier move failed");
                report.failed += 1;
                continue;
            }
            let mut tx = db.tenant_tx(&clinic, now).await?;
            sqlx::query(
                "UPDATE images SET original_tier = $1, tier_changed_at = $2 WHERE id = $3 AND clinic_id = $4",
            )
            .bind(to.as_str())
            .bind(now)
            .bind(&id)
            .bind(clinic.as_str())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            *report
                .moved
                .entry(format!("{}->{}", from.as_str(), to.as_str()))
                .or_default() += 1;
        }
        report.orphans_removed += sweep_orphans(db, images, &clinic, now).await?;
    }
    Ok(report)
}

/// Removes a tenant's objects that no live image refers to and that are older than the grace
/// period (younger ones may belong to an upload still being recorded).
pub(super) async fn sweep_orphans(
    db: &Db,
    images: &Images,
    clinic: &ClinicId,
    now: i64,
) -> anyhow::Result<u64> {
    let listed = images.store.list_modified(clinic.as_str()).await?;
    if listed.is_empty() {
        return Ok(0);
    }
    let mut tx = db.tenant_tx(clinic, now).await?;
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT original_key, preview_key, thumbnail_key FROM images \
         WHERE clinic_id = $1 AND deleted_at IS NULL",
    )
    .bind(clinic.as_str())
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let live: std::collections::HashSet<String> =
        rows.into_iter().flat_map(|(a, b, c)| [a, b, c]).collect();
    let cutoff = std::time::SystemTime::now() - images.orphan_grace;
    let mut removed = 0;
    for (key, modified) in listed {
        if !live.contains(key.as_str()) && modified <= cutoff {
            images.store.delete(clinic.as_str(), &key).await?;
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::warn!(removed, "removed objects no image refers to");
    }
    Ok(removed)
}
