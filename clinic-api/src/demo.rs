//! The demo practice seeded by `clinic serve --demo`: two locations in different time zones, one
//! user of each staff role, two patients with portal accounts. Logins are printed once, at seeding.

use serde::Serialize;

use crate::domains::identity::users::NewUser;
use crate::platform::authz::Role;
use crate::platform::ids::{ClinicId, LocationId, PatientId, UserId};
use crate::platform::state::AppState;
use crate::{
    domains::identity::passwords, domains::identity::users, domains::tenancy::clinics,
    domains::tenancy::locations,
};

pub const SLUG: &str = "demo";

#[derive(Clone, Debug, Serialize)]
pub struct DemoLogin {
    pub username: String,
    pub password: String,
    pub role: Role,
    pub display_name: String,
}

#[derive(Debug)]
pub struct Demo {
    pub clinic_id: ClinicId,
    pub locations: Vec<LocationId>,
    pub logins: Vec<DemoLogin>,
}

/// Seeds the demo practice unless it exists (then `None`: its logins were printed before).
pub async fn seed(state: &AppState) -> anyhow::Result<Option<Demo>> {
    if state.db.clinic_id_by_slug(SLUG).await?.is_some() {
        return Ok(None);
    }
    let now = state.clock.now_ms();
    let clinic = clinics::create(&state.db, SLUG, "Hartwell Family Podiatry", now).await?;
    let mut tx = state.tx(&clinic).await?;
    let main_st = locations::create(
        &mut tx,
        &clinic,
        "Main Street (Columbus)",
        "America/New_York",
        now,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let lakeside = locations::create(
        &mut tx,
        &clinic,
        "Lakeside (Chicago)",
        "America/Chicago",
        now,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let both = [main_st.clone(), lakeside.clone()];
    let people: [(&str, &str, Role, &[LocationId]); 9] = [
        ("owner", "Margaret Hartwell", Role::Owner, &both),
        ("admin", "Dana Okafor", Role::ClinicAdmin, &both),
        (
            "dr.hartwell",
            "Dr. James Hartwell",
            Role::Provider,
            std::slice::from_ref(&main_st),
        ),
        (
            "dr.nguyen",
            "Dr. Linh Nguyen",
            Role::Provider,
            std::slice::from_ref(&lakeside),
        ),
        (
            "ma.rivera",
            "Sam Rivera",
            Role::MedicalAssistant,
            std::slice::from_ref(&main_st),
        ),
        ("frontdesk", "Pat Kowalski", Role::FrontDesk, &both),
        ("patient.ellis", "Robin Ellis", Role::Patient, &[]),
        ("patient.moreau", "Alex Moreau", Role::Patient, &[]),
        (
            "partner.lee",
            "Westside Wound Care (referrals)",
            Role::ReferringPartner,
            &[],
        ),
    ];
    let mut logins = Vec::new();
    let mut patient_users = Vec::new();
    for (username, display_name, role, locs) in people {
        let password = passwords::generate(|b| state.keys.random(b));
        let hashed = passwords::NewHash::of(&password, std::time::Duration::from_secs(60))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let id = users::create(
            &mut tx,
            &clinic,
            now,
            &NewUser {
                username,
                display_name,
                role,
                password: &hashed,
                locations: locs,
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        if role == Role::Patient {
            patient_users.push(id.clone());
        }
        logins.push(DemoLogin {
            username: username.into(),
            password,
            role,
            display_name: display_name.into(),
        });
    }
    let patients: [(&str, &str, &str, &LocationId); 2] = [
        ("Robin", "Ellis", "1958-03-14", &main_st),
        ("Alex", "Moreau", "1971-11-02", &lakeside),
    ];
    for ((given, family, birth, loc), user) in patients.into_iter().zip(patient_users.iter()) {
        insert_patient(&mut tx, &clinic, loc, Some(user), given, family, birth, now).await?;
    }
    seed_scheduling(&mut tx, &clinic, &main_st, &lakeside, now)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tx.commit().await?;
    Ok(Some(Demo {
        clinic_id: clinic,
        locations: both.to_vec(),
        logins,
    }))
}

/// Appointment types, rooms and provider availability. Telemedicine hours are all day, every
/// day, so the demo can be tried at any hour; in-person care follows the opening hours.
async fn seed_scheduling(
    tx: &mut crate::platform::db::TenantTx,
    clinic: &ClinicId,
    main_st: &LocationId,
    lakeside: &LocationId,
    now: i64,
) -> crate::platform::error::ApiResult<()> {
    use crate::domains::scheduling::{
        CreateBlock, CreateType, FollowupRule, insert_block, insert_type,
    };
    let roles = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    insert_type(
        tx,
        clinic,
        &CreateType {
            name: "Telemedicine wound check".into(),
            duration_min: 20,
            buffer_min: 5,
            modality: "telemedicine".into(),
            needs_room: false,
            bookable_by: roles(&["front_desk", "provider", "medical_assistant", "patient"]),
            followups: vec![FollowupRule {
                after_days: 3,
                kind: "photo_prompt".into(),
            }],
        },
        now,
    )
    .await?;
    insert_type(
        tx,
        clinic,
        &CreateType {
            name: "Diabetic foot exam".into(),
            duration_min: 30,
            buffer_min: 10,
            modality: "in_person".into(),
            needs_room: true,
            bookable_by: roles(&["front_desk", "provider", "medical_assistant", "patient"]),
            followups: vec![],
        },
        now,
    )
    .await?;
    insert_type(
        tx,
        clinic,
        &CreateType {
            name: "Minor procedure".into(),
            duration_min: 60,
            buffer_min: 15,
            modality: "in_person".into(),
            needs_room: true,
            bookable_by: roles(&["front_desk", "provider"]),
            followups: [(3, "checkin"), (7, "photo_prompt"), (14, "checkin")]
                .into_iter()
                .map(|(after_days, kind)| FollowupRule {
                    after_days,
                    kind: kind.into(),
                })
                .collect(),
        },
        now,
    )
    .await?;
    for loc in [main_st, lakeside] {
        for room in ["Room 1", "Room 2"] {
            sqlx::query("INSERT INTO rooms (id, clinic_id, location_id, name, created_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(uuid::Uuid::new_v4().to_string())
                .bind(clinic.as_str())
                .bind(loc.as_str())
                .bind(room)
                .bind(now)
                .execute(&mut **tx)
                .await?;
        }
    }
    let providers: Vec<(String, String)> = sqlx::query_as(
        "SELECT u.id, ul.location_id FROM users u JOIN user_locations ul ON ul.user_id = u.id WHERE u.clinic_id = $1 AND u.role = 'provider'",
    )
    .bind(clinic.as_str())
    .fetch_all(&mut **tx)
    .await?;
    for (provider, location) in providers {
        for weekday in 1..=7 {
            let blocks: &[(&str, &str, &str)] = if weekday <= 5 {
                &[
                    ("08:00", "17:00", "in_person"),
                    ("00:00", "24:00", "telemedicine"),
                ]
            } else {
                &[("00:00", "24:00", "telemedicine")]
            };
            for (start, end, modality) in blocks {
                insert_block(
                    tx,
                    clinic,
                    &CreateBlock {
                        provider_id: UserId::from_trusted(provider.clone()),
                        location_id: LocationId::from_trusted(location.clone()),
                        weekday,
                        start: start.to_string(),
                        end: end.to_string(),
                        modality: modality.to_string(),
                    },
                    now,
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// Inserts a patient row (seeding and tests; the API has its own audited path).
#[allow(clippy::too_many_arguments)]
pub async fn insert_patient(
    tx: &mut crate::platform::db::TenantTx,
    clinic: &ClinicId,
    location: &LocationId,
    user: Option<&UserId>,
    given: &str,
    family: &str,
    birth: &str,
    now: i64,
) -> anyhow::Result<PatientId> {
    let id = PatientId::new();
    sqlx::query(
        "INSERT INTO patients (id, clinic_id, location_id, user_id, given_name, family_name, birth_date, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(id.as_str())
    .bind(clinic.as_str())
    .bind(location.as_str())
    .bind(user.map(|u| u.to_string()))
    .bind(given)
    .bind(family)
    .bind(birth)
    .bind(now)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(id)
}

/// The text printed once at seeding.
pub fn print_logins(demo: &Demo) -> String {
    let mut out =
        String::from("demo practice seeded: clinic \"demo\" (Hartwell Family Podiatry)\n");
    out.push_str(
        "these logins are shown once; staff enroll an authenticator app at first sign-in\n\n",
    );
    out.push_str(&format!(
        "{:<16} {:<20} {:<22} {}\n",
        "username", "role", "password", "name"
    ));
    for l in &demo.logins {
        out.push_str(&format!(
            "{:<16} {:<20} {:<22} {}\n",
            l.username,
            l.role.as_str(),
            l.password,
            l.display_name
        ));
    }
    out
}
