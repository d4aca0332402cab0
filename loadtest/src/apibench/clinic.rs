//! The clinic API as a target: a demo practice set up the way a practice is (the admin creates
//! medical assistants' accounts, each sets a password through their one-time link and enrolls an
//! authenticator), patients registered, photos uploaded, then the mix run by those staff.
//!
//! Every staff member's client has its own loopback address (127.0.0.x), as staff at their own
//! workstations would: the server's per-address sign-in limit then sees what it would see in a
//! practice, not one address for everyone.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::drive::{Outcome, Recorder};
use super::mix::Op;

/// A signed-in staff member's browser.
pub struct Worker {
    client: reqwest::Client,
    /// Thumbnail URLs issued to this user, and when.
    thumbs: Mutex<(Option<Instant>, Vec<String>)>,
}

/// An account that signs in during the run (password, then TOTP), at most once per 30 s step.
struct Signer {
    username: String,
    password: String,
    secret: String,
    addr: IpAddr,
    /// The last TOTP step it used (the server refuses a step not newer than the last).
    last_step: i64,
}

pub struct ClinicTarget {
    base: String,
    workers: Vec<Worker>,
    admin: reqwest::Client,
    signers: Mutex<VecDeque<Signer>>,
    location: String,
    provider: String,
    tele_type: String,
    patients: Vec<String>,
    photo_patients: Vec<String>,
    days: Vec<String>,
    slots: Mutex<Vec<String>>,
    booked: Mutex<VecDeque<String>>,
    checked_in: Mutex<VecDeque<String>>,
    registered: AtomicU64,
}

/// The setup's sizes.
pub struct Setup {
    pub workers: usize,
    pub signers: usize,
    pub patients: usize,
    pub photo_patients: usize,
}

/// A client whose connections leave from `addr` (its own loopback address), keeping its cookies.
pub(super) fn client_at(addr: IpAddr) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .cookie_store(true)
        .local_address(addr)
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .build()?)
}

/// The address of the `n`th client of block `block` (127.<block>.x.y).
pub fn loopback(block: u8, n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        block,
        (n / 250) as u8,
        (n % 250 + 2) as u8,
    ))
}

fn step_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64 / 30)
}

fn totp_at(secret_b32: &str, step: i64) -> anyhow::Result<String> {
    let secret = totp_rs::Secret::Encoded(secret_b32.to_string())
        .to_bytes()
        .map_err(|e| anyhow::anyhow!("TOTP secret: {e:?}"))?;
    let t = totp_rs::TOTP::new_unchecked(totp_rs::Algorithm::SHA1, 6, 1, 30, secret);
    Ok(t.generate(step.max(0) as u64 * 30))
}

async fn expect(r: reqwest::RequestBuilder, want: u16, what: &str) -> anyhow::Result<Value> {
    let r = r.send().await.with_context(|| what.to_string())?;
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    if status != want {
        bail!("{what}: {status} {}", body["code"]);
    }
    Ok(body)
}

/// Signs a demo login in, enrolling TOTP at its first sign-in. Returns its client and secret.
async fn first_sign_in(
    base: &str,
    client: &reqwest::Client,
    username: &str,
    password: &str,
) -> anyhow::Result<String> {
    let r = expect(
        client
            .post(format!("{base}/api/v1/auth/login"))
            .json(&json!({ "clinic": "demo", "username": username, "password": password })),
        200,
        "sign-in",
    )
    .await?;
    if r["stage"] != "enroll_only" {
        bail!(
            "{username}: stage {} (start from a fresh demo server)",
            r["stage"]
        );
    }
    let enroll = expect(
        client.post(format!("{base}/api/v1/auth/mfa/enroll")),
        200,
        "MFA enrollment",
    )
    .await?;
    let secret = enroll["secret"]
        .as_str()
        .context("enrollment secret")?
        .to_string();
    expect(
        client
            .post(format!("{base}/api/v1/auth/mfa/enroll/confirm"))
            .json(&json!({ "code": totp_at(&secret, step_now())? })),
        200,
        "MFA confirmation",
    )
    .await?;
    Ok(secret)
}

/// A new medical assistant at `location`, created by the admin, enrolled and signed in.
async fn new_staff(
    base: &str,
    admin: &reqwest::Client,
    location: &str,
    username: &str,
    addr: IpAddr,
) -> anyhow::Result<(reqwest::Client, String, String)> {
    let created = expect(
        admin.post(format!("{base}/api/v1/users")).json(&json!({
            "username": username,
            "display_name": format!("Bench {username}"),
            "role": "medical_assistant",
            "location_ids": [location],
        })),
        200,
        "account creation",
    )
    .await?;
    let url = created["enrollment"]["url"]
        .as_str()
        .context("account creation answered no enrollment link")?;
    let token = url.split_once('#').context("link token")?.1;
    let password = format!("bench-{username}-correct-horse-battery");
    let client = client_at(addr)?;
    expect(
        client
            .post(format!("{base}/api/v1/auth/enroll"))
            .json(&json!({ "token": token, "password": password })),
        200,
        "enrollment",
    )
    .await?;
    let secret = first_sign_in(base, &client, username, &password).await?;
    Ok((client, password, secret))
}

impl ClinicTarget {
    /// Sets the demo practice up for the mix (about 0.3 s of argon2 per account: the password,
    /// the sign-in and ten recovery codes).
    pub async fn setup(
        server: &crate::server::DemoServer,
        photo: bytes::Bytes,
        size: &Setup,
    ) -> anyhow::Result<ClinicTarget> {
        let base = server.base.clone();
        let login = server.login("admin")?;
        let admin = client_at(loopback(0, 0))?;
        first_sign_in(&base, &admin, &login.username, &login.password).await?;
        let prov_login = server.login("dr.hartwell")?;
        let prov = client_at(loopback(0, 1))?;
        first_sign_in(&base, &prov, &prov_login.username, &prov_login.password).await?;
        let me = expect(
            prov.get(format!("{base}/api/v1/auth/session")),
            200,
            "session",
        )
        .await?;
        let provider = me["user_id"].as_str().context("provider id")?.to_string();
        let location = me["locations"][0]
            .as_str()
            .context("provider location")?
            .to_string();
        let types = expect(
            prov.get(format!("{base}/api/v1/appointment-types")),
            200,
            "types",
        )
        .await?;
        let tele_type = types
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["modality"] == "telemedicine")
            .and_then(|t| t["id"].as_str())
            .context("a telemedicine type")?
            .to_string();

        // Accounts, a few at a time (the server checks as many passwords at once as it has
        // cores; more in flight would only queue).
        let total = size.workers + size.signers;
        let mut made = Vec::with_capacity(total);
        let mut pending = futures_util::stream::FuturesOrdered::new();
        use futures_util::StreamExt;
        for i in 0..total {
            let (base, admin, location) = (base.clone(), admin.clone(), location.clone());
            let addr = if i < size.workers {
                loopback(0, 10 + i)
            } else {
                loopback(3, i - size.workers)
            };
            pending.push_back(async move {
                let name = format!("bench.ma{i:03}");
                new_staff(&base, &admin, &location, &name, addr)
                    .await
                    .map(|(c, p, s)| (name, addr, c, p, s))
            });
            if pending.len() >= 4
                && let Some(r) = pending.next().await
            {
                made.push(r?);
            }
        }
        while let Some(r) = pending.next().await {
            made.push(r?);
        }
        let mut workers = Vec::new();
        let mut signers = VecDeque::new();
        let confirmed_step = step_now();
        for (i, (username, addr, client, password, secret)) in made.into_iter().enumerate() {
            if i < size.workers {
                workers.push(Worker {
                    client,
                    thumbs: Mutex::new((None, Vec::new())),
                });
            } else {
                signers.push_back(Signer {
                    username,
                    password,
                    secret,
                    addr,
                    // The confirmation used this step or the one before.
                    last_step: confirmed_step,
                });
            }
        }
        let desk = &workers[0].client;
        let mut patients = Vec::new();
        for n in 0..size.patients {
            let p = expect(
                desk.post(format!("{base}/api/v1/patients")).json(&json!({
                    "location_id": location,
                    "given_name": format!("Bench{n}"),
                    "family_name": "Synthetic",
                    "birth_date": format!("19{:02}-0{}-1{}", 40 + n % 60, 1 + n % 9, n % 10),
                })),
                200,
                "patient registration",
            )
            .await?;
            patients.push(p["id"].as_str().context("patient id")?.to_string());
        }
        let photo_patients: Vec<String> =
            patients.iter().take(size.photo_patients).cloned().collect();
        for p in &photo_patients {
            for _ in 0..3 {
                expect(
                    desk.post(format!("{base}/api/v1/patients/{p}/images"))
                        .header("content-type", "image/jpeg")
                        .body(photo.clone()),
                    201,
                    "photo upload",
                )
                .await?;
            }
        }
        let today = chrono::Utc::now().date_naive();
        let days = (1..=8)
            .map(|d| {
                (today + chrono::Days::new(d))
                    .format("%Y-%m-%d")
                    .to_string()
            })
            .collect();
        Ok(ClinicTarget {
            base,
            workers,
            admin,
            signers: Mutex::new(signers),
            location,
            provider,
            tele_type,
            patients,
            photo_patients,
            days,
            slots: Mutex::new(Vec::new()),
            booked: Mutex::new(VecDeque::new()),
            checked_in: Mutex::new(VecDeque::new()),
            registered: AtomicU64::new(0),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn pop<T>(q: &Mutex<VecDeque<T>>, back: bool) -> Option<T> {
        let mut q = q.lock().unwrap_or_else(|e| e.into_inner());
        if back { q.pop_back() } else { q.pop_front() }
    }

    fn push<T>(q: &Mutex<VecDeque<T>>, v: T) {
        q.lock().unwrap_or_else(|e| e.into_inner()).push_back(v);
    }

    pub async fn run(&self, op: Op, pick: u64, due: Instant, rec: &Recorder) {
        let w = &self.workers[(pick % self.workers.len() as u64) as usize];
        let r = (pick >> 16) as usize;
        let patient = &self.patients[r % self.patients.len()];
        match op {
            Op::SignIn => {
                let now = step_now();
                let signer = {
                    let mut q = self.signers.lock().unwrap_or_else(|e| e.into_inner());
                    match q.front() {
                        Some(s) if s.last_step < now => q.pop_front(),
                        _ => None,
                    }
                };
                let Some(mut s) = signer else {
                    rec.substitute(op);
                    return Box::pin(self.run(Op::Session, pick, due, rec)).await;
                };
                let Ok(client) = client_at(s.addr) else {
                    Self::push(&self.signers, s);
                    return;
                };
                let signed = send(
                    rec,
                    "POST /api/v1/auth/login",
                    client.post(self.url("/api/v1/auth/login")).json(&json!({
                        "clinic": "demo", "username": s.username, "password": s.password,
                    })),
                    due,
                    200,
                    &[429],
                )
                .await;
                if let (Some((200, _)), Ok(code)) = (signed, totp_at(&s.secret, now)) {
                    let t = Instant::now();
                    send(
                        rec,
                        "POST /api/v1/auth/mfa/verify",
                        client
                            .post(self.url("/api/v1/auth/mfa/verify"))
                            .json(&json!({ "code": code })),
                        t,
                        200,
                        &[],
                    )
                    .await;
                    s.last_step = now;
                }
                Self::push(&self.signers, s);
            }
            Op::Session => {
                send(
                    rec,
                    "GET /api/v1/auth/session",
                    w.client.get(self.url("/api/v1/auth/session")),
                    due,
                    200,
                    &[],
                )
                .await;
            }
            Op::PatientRead => {
                send(
                    rec,
                    "GET /api/v1/patients/{id}",
                    w.client
                        .get(self.url(&format!("/api/v1/patients/{patient}"))),
                    due,
                    200,
                    &[],
                )
                .await;
            }
            Op::PatientList => {
                send(
                    rec,
                    "GET /api/v1/patients",
                    w.client.get(self.url(&format!(
                        "/api/v1/patients?location_id={}&limit=50",
                        self.location
                    ))),
                    due,
                    200,
                    &[],
                )
                .await;
            }
            Op::Intake => {
                let n = self.registered.fetch_add(1, Ordering::Relaxed);
                send(
                    rec,
                    "POST /api/v1/patients",
                    w.client.post(self.url("/api/v1/patients")).json(&json!({
                        "location_id": self.location,
                        "given_name": format!("Walkin{n}"),
                        "family_name": "Synthetic",
                        "birth_date": format!("19{:02}-0{}-2{}", 40 + n % 60, 1 + n % 9, n % 8),
                    })),
                    due,
                    200,
                    &[],
                )
                .await;
            }
            Op::ScheduleDay => {
                // `days` holds one date more than is viewed: the last day's end.
                let i = r % (self.days.len() - 1);
                let (day, to) = (&self.days[i], &self.days[i + 1]);
                send(
                    rec,
                    "GET /api/v1/appointments",
                    w.client.get(self.url(&format!(
                        "/api/v1/appointments?location_id={}&from={day}&to={to}",
                        self.location
                    ))),
                    due,
                    200,
                    &[],
                )
                .await;
            }
            Op::Slots => {
                let got = send(
                    rec,
                    "GET /api/v1/slots",
                    w.client.get(self.url(&format!(
                        "/api/v1/slots?location_id={}&type_id={}&provider_id={}&days=7",
                        self.location, self.tele_type, self.provider
                    ))),
                    due,
                    200,
                    &[],
                )
                .await;
                if let Some((_, body)) = got {
                    let starts: Vec<String> = body
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|s| s["start"].as_str().map(String::from))
                        .collect();
                    *self.slots.lock().unwrap_or_else(|e| e.into_inner()) = starts;
                }
            }
            Op::Book => {
                let slot = {
                    let mut s = self.slots.lock().unwrap_or_else(|e| e.into_inner());
                    (!s.is_empty()).then(|| {
                        let i = r % s.len();
                        s.swap_remove(i)
                    })
                };
                let Some(start) = slot else {
                    rec.substitute(op);
                    return Box::pin(self.run(Op::Slots, pick, due, rec)).await;
                };
                let booked = send(
                    rec,
                    "POST /api/v1/appointments",
                    w.client
                        .post(self.url("/api/v1/appointments"))
                        .json(&json!({
                            "type_id": self.tele_type,
                            "location_id": self.location,
                            "provider_id": self.provider,
                            "patient_id": patient,
                            "start": start,
                        })),
                    due,
                    201,
                    // The slot was taken since it was listed, or the patient is busy then.
                    &[409],
                )
                .await;
                if let Some((201, body)) = booked
                    && let Some(id) = body["id"].as_str()
                {
                    Self::push(&self.booked, id.to_string());
                }
            }
            Op::CheckIn | Op::Cancel => {
                let Some(id) = Self::pop(&self.booked, op == Op::Cancel) else {
                    rec.substitute(op);
                    let stand_in = if op == Op::Cancel {
                        Op::ScheduleDay
                    } else {
                        Op::Book
                    };
                    return Box::pin(self.run(stand_in, pick, due, rec)).await;
                };
                let (route, path) = if op == Op::Cancel {
                    (
                        "POST /api/v1/appointments/{id}/cancel",
                        format!("/api/v1/appointments/{id}/cancel"),
                    )
                } else {
                    (
                        "POST /api/v1/appointments/{id}/check-in",
                        format!("/api/v1/appointments/{id}/check-in"),
                    )
                };
                let done = send(rec, route, w.client.post(self.url(&path)), due, 200, &[]).await;
                if op == Op::CheckIn && done.is_some() {
                    Self::push(&self.checked_in, id);
                }
            }
            Op::Complete => {
                let Some(id) = Self::pop(&self.checked_in, false) else {
                    rec.substitute(op);
                    return Box::pin(self.run(Op::CheckIn, pick, due, rec)).await;
                };
                send(
                    rec,
                    "POST /api/v1/appointments/{id}/complete",
                    w.client
                        .post(self.url(&format!("/api/v1/appointments/{id}/complete"))),
                    due,
                    200,
                    &[],
                )
                .await;
            }
            Op::ImageList => {
                let p = &self.photo_patients[r % self.photo_patients.len()];
                let got = send(
                    rec,
                    "GET /api/v1/patients/{id}/images",
                    w.client
                        .get(self.url(&format!("/api/v1/patients/{p}/images"))),
                    due,
                    200,
                    &[],
                )
                .await;
                if let Some((_, body)) = got {
                    let urls: Vec<String> = body
                        .as_array()
                        .or_else(|| body["images"].as_array())
                        .into_iter()
                        .flatten()
                        .filter_map(|i| i["thumbnail_url"].as_str().map(String::from))
                        .collect();
                    if !urls.is_empty() {
                        *w.thumbs.lock().unwrap_or_else(|e| e.into_inner()) =
                            (Some(Instant::now()), urls);
                    }
                }
            }
            Op::ImageFetch => {
                let url = {
                    let t = w.thumbs.lock().unwrap_or_else(|e| e.into_inner());
                    match &t.0 {
                        // Signed URLs live for minutes; a page lists again well before that.
                        Some(at) if at.elapsed() < Duration::from_secs(60) && !t.1.is_empty() => {
                            Some(t.1[r % t.1.len()].clone())
                        }
                        _ => None,
                    }
                };
                let Some(url) = url else {
                    rec.substitute(op);
                    return Box::pin(self.run(Op::ImageList, pick, due, rec)).await;
                };
                send(
                    rec,
                    "GET /api/v1/image-files/{token}",
                    w.client.get(self.url(&url)),
                    due,
                    200,
                    &[],
                )
                .await;
            }
            Op::AuditRead => {
                send(
                    rec,
                    "GET /api/v1/audit",
                    self.admin.get(self.url("/api/v1/audit?limit=50")),
                    due,
                    200,
                    &[],
                )
                .await;
            }
        }
    }

    /// The sign-in flood: `n` clients, each from its own address, each keeping one bad sign-in
    /// (an unknown username, a wrong password) in flight until `stop`. Returns the answers by
    /// status.
    pub async fn flood(
        &self,
        n: usize,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> std::collections::BTreeMap<u16, u64> {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let (url, mut stop) = (self.url("/api/v1/auth/login"), stop.clone());
            let Ok(client) = client_at(loopback(9, i)) else {
                continue;
            };
            set.spawn(async move {
                let mut seen = std::collections::BTreeMap::<u16, u64>::new();
                let mut k = 0u64;
                while !*stop.borrow() {
                    k += 1;
                    let attempt = client.post(&url).json(&json!({
                        "clinic": "demo",
                        "username": format!("intruder{i}x{k}"),
                        "password": "guessing-at-passwords",
                    }));
                    tokio::select! {
                        r = attempt.send() => {
                            let status = r.map_or(0, |r| r.status().as_u16());
                            *seen.entry(status).or_default() += 1;
                        }
                        _ = stop.changed() => break,
                    }
                }
                seen
            });
        }
        let mut all = std::collections::BTreeMap::new();
        while let Some(r) = set.join_next().await {
            for (k, v) in r.unwrap_or_default() {
                *all.entry(k).or_default() += v;
            }
        }
        all
    }
}

/// Sends one request (clinic or ceiling) and records it under `route`, timed from `since`.
pub(super) async fn send(
    rec: &Recorder,
    route: &'static str,
    req: reqwest::RequestBuilder,
    since: Instant,
    want: u16,
    tolerated: &[u16],
) -> Option<(u16, Value)> {
    match req.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let json = r
                .headers()
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"application/"));
            let bytes = r.bytes().await.unwrap_or_default();
            let outcome = Outcome::of(status, want, tolerated);
            let body: Value = if json {
                serde_json::from_slice(&bytes).unwrap_or(Value::Null)
            } else {
                Value::Null
            };
            rec.record(
                route,
                since.elapsed(),
                outcome,
                &format!("{status} {}", body["code"]),
            );
            matches!(outcome, Outcome::Ok | Outcome::Expected).then_some((status, body))
        }
        Err(e) => {
            rec.record(route, since.elapsed(), Outcome::Transport, &e.to_string());
            None
        }
    }
}
