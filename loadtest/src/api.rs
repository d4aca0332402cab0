//! The API side of a clinic morning: staff sign-in (with TOTP enrollment, as a new staff member
//! does), consult set-up (create, links, join codes → tokens, end), front-desk intake and
//! bookings, and wound-photo uploads. Every call is timed under its route template and counted
//! as an error when it does not give the expected status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::metrics::Metrics;

/// A signed-in staff member.
#[derive(Clone)]
pub struct Staff {
    pub base: String,
    pub client: reqwest::Client,
    pub metrics: Arc<Metrics>,
}

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .cookie_store(true)
        .timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(64)
        .build()?)
}

fn totp_now(secret_b32: &str) -> anyhow::Result<String> {
    let secret = totp_rs::Secret::Encoded(secret_b32.to_string())
        .to_bytes()
        .map_err(|e| anyhow::anyhow!("TOTP secret: {e:?}"))?;
    let t = totp_rs::TOTP::new_unchecked(totp_rs::Algorithm::SHA1, 6, 1, 30, secret);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    Ok(t.generate(now))
}

impl Staff {
    /// Signs in to clinic `demo`, enrolling TOTP if the account has not.
    pub async fn sign_in(
        base: &str,
        username: &str,
        password: &str,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Staff> {
        let client = client()?;
        let r: Value = client
            .post(format!("{base}/api/v1/auth/login"))
            .json(&json!({ "clinic": "demo", "username": username, "password": password }))
            .send()
            .await?
            .json()
            .await?;
        match r["stage"].as_str() {
            Some("full") => {}
            Some("enroll_only") => {
                let enroll: Value = client
                    .post(format!("{base}/api/v1/auth/mfa/enroll"))
                    .send()
                    .await?
                    .json()
                    .await?;
                let secret = enroll["secret"].as_str().context("enrollment secret")?;
                let confirm = client
                    .post(format!("{base}/api/v1/auth/mfa/enroll/confirm"))
                    .json(&json!({ "code": totp_now(secret)? }))
                    .send()
                    .await?;
                if !confirm.status().is_success() {
                    bail!("{username}: TOTP enrollment refused ({})", confirm.status());
                }
            }
            _ => bail!(
                "{username}: sign-in answered {} (an account that already enrolled MFA cannot be used: start a fresh demo server)",
                r["code"].as_str().or(r["stage"].as_str()).unwrap_or("?")
            ),
        }
        Ok(Staff {
            base: base.to_string(),
            client,
            metrics,
        })
    }

    /// One timed call; `want` is the success status. Returns the JSON body on success.
    pub async fn call(
        &self,
        endpoint: &'static str,
        req: reqwest::RequestBuilder,
        want: u16,
    ) -> Option<Value> {
        self.call_expecting(endpoint, req, &[want])
            .await
            .map(|(_, body)| body)
    }

    /// One timed call where any of `wanted` is an expected outcome; any other status counts as
    /// an error. Returns the status and JSON body of an expected outcome.
    pub async fn call_expecting(
        &self,
        endpoint: &'static str,
        req: reqwest::RequestBuilder,
        wanted: &[u16],
    ) -> Option<(u16, Value)> {
        let t = Instant::now();
        let r = req.send().await;
        let body = match r {
            Ok(r) => {
                let status = r.status().as_u16();
                let body = r.json::<Value>().await.unwrap_or(Value::Null);
                if wanted.contains(&status) {
                    Some((status, body))
                } else {
                    let kind = if status >= 500 { "api_5xx" } else { "api_4xx" };
                    tracing::warn!(endpoint, status, code = %body["code"], "unexpected status");
                    self.metrics.error(&format!("{kind} {endpoint}"));
                    None
                }
            }
            Err(e) => {
                tracing::warn!(endpoint, error = %e, "request failed");
                self.metrics.error(&format!("api_transport {endpoint}"));
                None
            }
        };
        self.metrics.api(endpoint, t.elapsed().as_micros() as u64);
        body
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(format!("{}{path}", self.base))
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(format!("{}{path}", self.base))
    }
}

/// What the workload needs to know about the demo practice.
#[derive(Clone, Debug)]
pub struct Practice {
    pub location: String,
    pub provider: String,
    pub tele_type: String,
    pub patients: Vec<String>,
}

impl Practice {
    /// The provider's own location and id, the telemedicine type, the patients.
    pub async fn discover(desk: &Staff, provider: &Staff) -> anyhow::Result<Practice> {
        let me = provider
            .call(
                "GET /api/v1/auth/session",
                provider.get("/api/v1/auth/session"),
                200,
            )
            .await
            .context("the provider's session")?;
        let provider_id = me["user_id"].as_str().context("provider id")?.to_string();
        let location = me["locations"][0]
            .as_str()
            .context("the provider's location")?
            .to_string();
        let types = desk
            .call(
                "GET /api/v1/appointment-types",
                desk.get("/api/v1/appointment-types"),
                200,
            )
            .await
            .context("appointment types")?;
        let tele = types
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["modality"] == "telemedicine")
            .context("a telemedicine appointment type")?;
        let tele_type = tele["id"].as_str().context("type id")?.to_string();
        let patients = desk
            .call("GET /api/v1/patients", desk.get("/api/v1/patients"), 200)
            .await
            .context("patients")?;
        let patients: Vec<String> = patients
            .as_array()
            .into_iter()
            .flatten()
            // The medical assistant uploading photos works at the provider's location.
            .filter(|p| p["location_id"] == location.as_str())
            .filter_map(|p| p["id"].as_str().map(String::from))
            .collect();
        anyhow::ensure!(!patients.is_empty(), "the demo practice has no patients");
        Ok(Practice {
            location,
            provider: provider_id,
            tele_type,
            patients,
        })
    }
}

/// A consult and the join tokens of its provider and patient.
pub struct ConsultTokens {
    pub id: String,
    pub provider: String,
    pub patient: String,
}

/// Creates a consult as `provider` and turns two join links into tokens.
pub async fn open_consult(provider: &Staff, location: &str) -> Option<ConsultTokens> {
    let c = provider
        .call(
            "POST /api/v1/consults",
            provider
                .post("/api/v1/consults")
                .json(&json!({ "location_id": location })),
            200,
        )
        .await?;
    let id = c["id"].as_str()?.to_string();
    let provider_token = join_token(provider, &id, "provider").await?;
    let patient = join_token(provider, &id, "patient").await?;
    Some(ConsultTokens {
        id,
        provider: provider_token,
        patient,
    })
}

/// A one-time join link for `role`, exchanged for its token as the joining device does.
pub async fn join_token(provider: &Staff, consult: &str, role: &str) -> Option<String> {
    let link = provider
        .call(
            "POST /api/v1/consults/{id}/links",
            provider
                .post(&format!("/api/v1/consults/{consult}/links"))
                .json(&json!({ "role": role, "display_name": format!("load {role}") })),
            200,
        )
        .await?;
    let code = link["url"].as_str()?.split_once('#')?.1.to_string();
    // The join exchange is public: no session, as a patient's phone does it.
    let joined = provider
        .call(
            "POST /api/v1/consults/join",
            reqwest::Client::new()
                .post(format!("{}/api/v1/consults/join", provider.base))
                .json(&json!({ "code": code })),
            200,
        )
        .await?;
    Some(joined["token"].as_str()?.to_string())
}

pub async fn end_consult(provider: &Staff, id: &str) {
    provider
        .call(
            "POST /api/v1/consults/{id}/end",
            provider.post(&format!("/api/v1/consults/{id}/end")),
            200,
        )
        .await;
}

/// Front-desk intake: a new (synthetic) patient registered, then read back.
pub async fn intake(desk: &Staff, location: &str, n: u64) -> Option<String> {
    let p = desk
        .call(
            "POST /api/v1/patients",
            desk.post("/api/v1/patients").json(&json!({
                "location_id": location,
                "given_name": format!("Load{n}"),
                "family_name": "Synthetic",
                "birth_date": format!("19{:02}-0{}-1{}", 40 + n % 60, 1 + n % 9, n % 10),
            })),
            200,
        )
        .await?;
    let id = p["id"].as_str()?.to_string();
    desk.call(
        "GET /api/v1/patients/{id}",
        desk.get(&format!("/api/v1/patients/{id}")),
        200,
    )
    .await?;
    Some(id)
}

/// Front-desk booking: the provider's open telemedicine slots over the next two weeks, one
/// of them booked for `patient`. A slot taken since it was listed (409) is not an error.
pub async fn book(desk: &Staff, practice: &Practice, patient: &str, n: u64) -> bool {
    let Some(slots) = desk
        .call(
            "GET /api/v1/slots",
            desk.get(&format!(
                "/api/v1/slots?location_id={}&type_id={}&provider_id={}&days=14",
                practice.location, practice.tele_type, practice.provider
            )),
            200,
        )
        .await
    else {
        return false;
    };
    let slots = slots.as_array().cloned().unwrap_or_default();
    if slots.is_empty() {
        desk.metrics.error("no_open_slots");
        return false;
    }
    // Spread bookings over the list so concurrent bookers rarely race for one slot.
    let slot = &slots[(n as usize * 7919) % slots.len()];
    let booked = desk
        .call_expecting(
            "POST /api/v1/appointments",
            desk.post("/api/v1/appointments").json(&json!({
                "type_id": practice.tele_type,
                "location_id": practice.location,
                "provider_id": practice.provider,
                "patient_id": patient,
                "start": slot["start"],
            })),
            &[201, 409],
        )
        .await;
    matches!(booked, Some((201, _)))
}

/// A wound photo uploaded by a medical assistant; upload-to-stored is request sent → 201.
pub async fn upload(ma: &Staff, patient: &str, photo: bytes::Bytes) -> bool {
    let t = Instant::now();
    let ok = ma
        .call(
            "POST /api/v1/patients/{id}/images",
            ma.post(&format!("/api/v1/patients/{patient}/images"))
                .header("content-type", "image/jpeg")
                .body(photo),
            201,
        )
        .await
        .is_some();
    if ok {
        ma.metrics.upload(t.elapsed().as_micros() as u64);
    } else {
        ma.metrics.error("upload_failed");
    }
    ok
}
