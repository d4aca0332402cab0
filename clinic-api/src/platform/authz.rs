//! Authorization as one mechanism: the permission matrix (data, in this file only), the policy
//! every route must declare, and the middleware that enforces it before any handler runs.
//!
//! A route is added only through [`Routes::add`], which takes a [`Policy`]; so a route without a
//! decision cannot exist, and the route × role test walks [`Routes::specs`] to check each answer
//! against [`grants`]. Handlers never compare role names: they receive a [`Caller`] that has
//! already passed the route's check, and ask it for resource-level scope ([`Caller::check_location`]).

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{FromRequestParts, Request, State};
use axum::handler::Handler;
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter};
use serde::{Deserialize, Serialize};
use strum::VariantArray;

use crate::platform::audit::{self, Action, AuditEvent, Outcome};
use crate::platform::error::{ApiError, ErrorCode};
use crate::platform::http::ClientInfo;
use crate::platform::ids::{ClinicId, LocationId, PatientId, SessionId, UserId};
use crate::platform::openapi::{Content, DocumentedResponse, HandlerOutput, SchemaFn, Success};
use crate::platform::sessions::{self, Stage};
use crate::platform::state::AppState;

/// Every role a user can hold. Staff roles are all but `Patient` and `ReferringPartner`.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
#[derive(strum::IntoStaticStr, strum::EnumString, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum Role {
    Owner,
    ClinicAdmin,
    Provider,
    MedicalAssistant,
    FrontDesk,
    Consultant,
    Patient,
    ReferringPartner,
}

impl Role {
    pub const ALL: &'static [Role] = Role::VARIANTS;

    /// The stored and serialized name (snake_case, as serde writes it).
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(s: &str) -> Option<Role> {
        s.parse().ok()
    }

    pub fn is_staff(self) -> bool {
        !matches!(self, Role::Patient | Role::ReferringPartner)
    }

    /// Staff must enroll TOTP before doing anything else; so must referring partners, who see
    /// the records of the patients they refer. Patients may opt in.
    pub fn requires_mfa(self) -> bool {
        self != Role::Patient
    }

    /// Roles whose holders are listed as privileged in the access review.
    pub fn is_privileged(self) -> bool {
        matches!(self, Role::Owner | Role::ClinicAdmin)
    }
}

/// What a caller may do. Routes name exactly one permission (or none, see [`Access`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[derive(strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum Permission {
    /// Read patient demographics and the record index.
    PatientsRead,
    /// Register patients and change demographics.
    PatientsWrite,
    /// Read clinical documentation (notes, wounds, vitals).
    ClinicalRead,
    /// Write clinical documentation.
    ClinicalWrite,
    /// View wound images (previews and thumbnails).
    ImagesView,
    /// Download originals (an export: step-up and audited as export).
    ImagesExport,
    /// Prescribe (eRx); step-up at signing.
    Prescribe,
    /// Sign prescriptions for controlled substances (EPCS); step-up at signing.
    EpcsSign,
    /// Run video consults and admit patients.
    ConsultsRun,
    /// See schedules and appointments.
    ScheduleRead,
    /// Book, move and cancel appointments.
    ScheduleWrite,
    /// Set up scheduling: opening hours, rooms, appointment types, provider availability.
    ScheduleManage,
    /// A patient's own booking: see open slots of self-bookable types, hold, book and cancel.
    SelfSchedule,
    /// Book outside a provider's availability (an override the front desk may make).
    ScheduleOverride,
    /// Join a telemedicine appointment's video visit: its patient, or its provider.
    VisitsJoin,
    /// Read submitted intake forms.
    IntakeRead,
    /// Route and complete intake.
    IntakeWrite,
    /// Access a patient outside one's assigned locations, with a stated reason (break-glass).
    BreakGlass,
    /// See the practice's locations.
    LocationsRead,
    /// Create and change locations.
    LocationsManage,
    /// List users, their roles, locations and MFA enrollment state.
    UsersRead,
    /// Create, disable and unlock users, reset MFA, assign locations.
    UsersManage,
    /// Read and filter the audit log.
    AuditRead,
    /// Export the audit log (step-up; itself audited).
    AuditExport,
    /// Operational reports (counts, no PHI).
    ReportsRead,
    /// A patient's own record, appointments and photos.
    OwnRecordsRead,
    /// A patient's own intake forms and uploads.
    OwnRecordsWrite,
    /// A referring partner's referrals.
    ReferralsWrite,
    /// Legal holds on records and deletion after the retention period.
    RecordsRetention,
}

impl Permission {
    pub const ALL: &'static [Permission] = Permission::VARIANTS;

    /// The name in the matrix, OpenAPI and the audit log (snake_case, as serde writes it).
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// How far a granted permission reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Everything of the caller's tenant.
    Tenant,
    /// Only resources at the locations the staff member is assigned to.
    AssignedLocations,
    /// Only the caller's own records.
    Own,
}

use Permission as P;
use Scope::{AssignedLocations as Loc, Own, Tenant};

/// THE permission matrix: role → (permission, scope). Nothing else decides who may do what.
pub fn grants(role: Role) -> &'static [(Permission, Scope)] {
    match role {
        Role::Owner => &[
            (P::ReportsRead, Tenant),
            (P::LocationsRead, Tenant),
            (P::UsersRead, Tenant),
            // The owner creates the accounts an administrator may not (see `assignable`).
            (P::UsersManage, Tenant),
            (P::AuditRead, Tenant),
            (P::AuditExport, Tenant),
            (P::RecordsRetention, Tenant),
        ],
        Role::ClinicAdmin => &[
            (P::LocationsRead, Tenant),
            (P::LocationsManage, Tenant),
            (P::UsersRead, Tenant),
            (P::UsersManage, Tenant),
            (P::AuditRead, Tenant),
            (P::AuditExport, Tenant),
            (P::ReportsRead, Tenant),
            (P::ScheduleRead, Tenant),
            (P::ScheduleManage, Tenant),
            (P::RecordsRetention, Tenant),
        ],
        Role::Provider => &[
            (P::PatientsRead, Loc),
            (P::PatientsWrite, Loc),
            (P::ClinicalRead, Loc),
            (P::ClinicalWrite, Loc),
            (P::ImagesView, Loc),
            (P::ImagesExport, Loc),
            (P::Prescribe, Loc),
            (P::EpcsSign, Loc),
            (P::ConsultsRun, Loc),
            (P::VisitsJoin, Loc),
            (P::ScheduleRead, Loc),
            (P::ScheduleWrite, Loc),
            (P::ScheduleOverride, Loc),
            (P::IntakeRead, Loc),
            (P::BreakGlass, Tenant),
            (P::LocationsRead, Tenant),
        ],
        Role::MedicalAssistant => &[
            (P::PatientsRead, Loc),
            (P::PatientsWrite, Loc),
            (P::ClinicalRead, Loc),
            (P::ClinicalWrite, Loc),
            (P::ImagesView, Loc),
            (P::ScheduleRead, Loc),
            (P::ScheduleWrite, Loc),
            (P::ScheduleOverride, Loc),
            (P::IntakeRead, Loc),
            (P::IntakeWrite, Loc),
            (P::LocationsRead, Tenant),
        ],
        Role::FrontDesk => &[
            (P::PatientsRead, Loc),
            (P::PatientsWrite, Loc),
            (P::ScheduleRead, Loc),
            (P::ScheduleWrite, Loc),
            (P::ScheduleOverride, Loc),
            (P::IntakeRead, Loc),
            (P::IntakeWrite, Loc),
            (P::LocationsRead, Tenant),
        ],
        Role::Consultant => &[
            (P::PatientsRead, Loc),
            (P::ClinicalRead, Loc),
            (P::ImagesView, Loc),
            (P::LocationsRead, Tenant),
        ],
        Role::Patient => &[
            (P::OwnRecordsRead, Own),
            (P::OwnRecordsWrite, Own),
            (P::SelfSchedule, Own),
            (P::VisitsJoin, Own),
        ],
        Role::ReferringPartner => &[(P::ReferralsWrite, Own)],
    }
}

/// Whether giving an account a role needs a fresh MFA check on top of being allowed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Assign {
    Allowed,
    StepUp,
}

/// THE role-assignment matrix: the roles an account holding `role` (and `users_manage`) may give
/// an account it creates or changes. Whoever creates an account can deliver its enrollment link
/// to themselves, so a role can only hand out roles that do not exceed its own reach: running
/// the practice (owner, clinic_admin) and prescribing (provider) are the owner's to give, after a
/// fresh MFA check. Nothing else decides it (`Caller::may_assign`).
pub fn assignable(role: Role) -> &'static [(Role, Assign)] {
    use Assign::{Allowed, StepUp};
    match role {
        Role::Owner => &[
            (Role::Owner, StepUp),
            (Role::ClinicAdmin, StepUp),
            (Role::Provider, StepUp),
            (Role::MedicalAssistant, Allowed),
            (Role::FrontDesk, Allowed),
            (Role::Consultant, Allowed),
            (Role::Patient, Allowed),
            (Role::ReferringPartner, Allowed),
        ],
        Role::ClinicAdmin => &[
            (Role::MedicalAssistant, Allowed),
            (Role::FrontDesk, Allowed),
            (Role::Consultant, Allowed),
            (Role::Patient, Allowed),
            (Role::ReferringPartner, Allowed),
        ],
        Role::Provider
        | Role::MedicalAssistant
        | Role::FrontDesk
        | Role::Consultant
        | Role::Patient
        | Role::ReferringPartner => &[],
    }
}

/// Whether `role` may give an account `target`, and on what condition.
pub fn assign_rule(role: Role, target: Role) -> Option<Assign> {
    assignable(role)
        .iter()
        .find(|(r, _)| *r == target)
        .map(|(_, a)| *a)
}

/// The scope of `perm` for `role`, if granted at all.
pub fn scope_of(role: Role, perm: Permission) -> Option<Scope> {
    grants(role)
        .iter()
        .find(|(p, _)| *p == perm)
        .map(|(_, s)| *s)
}

/// Who may reach a route at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No session needed (health, login, the OpenAPI document).
    Public,
    /// Any session, even one that still owes its MFA step or enrollment.
    PendingMfa,
    /// A fully authenticated session, any role.
    Authenticated,
    /// A fully authenticated session whose role is granted this permission.
    Perm(Permission),
}

/// A route's decision: who may reach it, and whether it is sensitive (needs a recent MFA check).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub access: Access,
    pub step_up: bool,
    /// Reachable by a session whose user must change a password someone else set (the password
    /// change itself); every other signed-in route refuses such a session.
    pub password_change: bool,
}

impl Policy {
    pub const PUBLIC: Policy = Policy {
        access: Access::Public,
        step_up: false,
        password_change: false,
    };
    pub const PENDING_MFA: Policy = Policy {
        access: Access::PendingMfa,
        step_up: false,
        password_change: false,
    };
    pub const AUTHENTICATED: Policy = Policy {
        access: Access::Authenticated,
        step_up: false,
        password_change: false,
    };
    /// The password change: any full session, including one that must change its password.
    pub const PASSWORD_CHANGE: Policy = Policy {
        access: Access::Authenticated,
        step_up: false,
        password_change: true,
    };
    pub const fn perm(p: Permission) -> Policy {
        Policy {
            access: Access::Perm(p),
            step_up: false,
            password_change: false,
        }
    }
    /// A sensitive route: the permission plus an MFA check within the step-up window.
    pub const fn sensitive(p: Permission) -> Policy {
        Policy {
            access: Access::Perm(p),
            step_up: true,
            password_change: false,
        }
    }

    /// Whether `role` passes this policy (given a full session and a fresh MFA check).
    pub fn allows(&self, role: Role) -> bool {
        match self.access {
            Access::Public | Access::PendingMfa | Access::Authenticated => true,
            Access::Perm(p) => scope_of(role, p).is_some(),
        }
    }
}

/// One route's description, from which the OpenAPI document and the route × role test are made.
#[derive(Clone)]
pub struct RouteSpec {
    pub method: Method,
    pub path: &'static str,
    pub policy: Policy,
    pub summary: &'static str,
    pub tag: &'static str,
    pub request_body: Option<SchemaFn>,
    /// Media types of a body that is not JSON (uploads), read as raw bytes.
    pub request_bytes: Option<&'static [&'static str]>,
    pub query: Option<SchemaFn>,
    /// The route streams its request or response (or upgrades): the edge neither buffers its
    /// body nor applies the request timeout; the route has its own limits.
    pub streaming: bool,
    /// Success answers: inferred from the handler's return type, then completed by the route
    /// (`.status(..)`, `.responds(..)`) where the type cannot say.
    pub responses: Vec<Success>,
}

/// A domain's routes, each with its policy.
pub struct Routes {
    tag: &'static str,
    entries: Vec<(RouteSpec, MethodRouter<AppState>)>,
}

impl Routes {
    pub fn new(tag: &'static str) -> Self {
        Self {
            tag,
            entries: Vec::new(),
        }
    }

    /// Adds a route. The policy is required: there is no other way to add a route. Its success
    /// answers for the OpenAPI document come from the handler's return type.
    pub fn add<H, T>(
        mut self,
        method: Method,
        path: &'static str,
        policy: Policy,
        summary: &'static str,
        handler: H,
    ) -> Self
    where
        H: Handler<T, AppState> + HandlerOutput<T>,
        <H as HandlerOutput<T>>::Output: DocumentedResponse,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).expect("standard method");
        let spec = RouteSpec {
            method,
            path,
            policy,
            summary,
            tag: self.tag,
            request_body: None,
            request_bytes: None,
            query: None,
            streaming: false,
            responses: <H as HandlerOutput<T>>::Output::successes(),
        };
        self.entries
            .push((spec, axum::routing::on(filter, handler)));
        self
    }

    /// Declares the JSON request body of the route added last (for the OpenAPI document).
    pub fn body<B: schemars::JsonSchema>(mut self) -> Self {
        if let Some((spec, _)) = self.entries.last_mut() {
            spec.request_body = Some(|g| g.subschema_for::<B>());
        }
        self
    }

    /// Declares a raw (not JSON) request body of the route added last, in any of `media`.
    pub fn bytes_body(mut self, media: &'static [&'static str]) -> Self {
        if let Some((spec, _)) = self.entries.last_mut() {
            spec.request_bytes = Some(media);
        }
        self
    }

    /// Declares the query parameters of the route added last.
    pub fn query<Q: schemars::JsonSchema>(mut self) -> Self {
        if let Some((spec, _)) = self.entries.last_mut() {
            spec.query = Some(|g| g.root_schema_for::<Q>());
        }
        self
    }

    /// Marks the route added last as streaming (see [`RouteSpec::streaming`]).
    pub fn streaming(mut self) -> Self {
        if let Some((spec, _)) = self.entries.last_mut() {
            spec.streaming = true;
        }
        self
    }

    /// Names the success status of the route added last, for a handler that picks it at run time
    /// (it returns a `StatusCode`, alone or with a body).
    pub fn status(mut self, status: StatusCode) -> Self {
        if let Some((spec, _)) = self.entries.last_mut() {
            for s in spec.responses.iter_mut().filter(|s| s.status.is_none()) {
                s.status = Some(status);
            }
        }
        self
    }

    /// Declares an answer of the route added last that its return type cannot tell: for handlers
    /// returning a plain `Response` (cookies, replays, bytes), or a second success status.
    pub fn responds(mut self, status: StatusCode, content: Content) -> Self {
        if let Some((spec, _)) = self.entries.last_mut() {
            spec.responses.push(Success::new(status, content));
        }
        self
    }

    pub fn merge(mut self, other: Routes) -> Self {
        self.entries.extend(other.entries);
        self
    }

    pub fn specs(&self) -> Vec<RouteSpec> {
        self.entries.iter().map(|(s, _)| s.clone()).collect()
    }

    /// The router, with each route wrapped in the authorization middleware for its policy.
    pub fn into_router(self, state: AppState) -> Router<AppState> {
        let mut by_path: BTreeMap<&'static str, MethodRouter<AppState>> = BTreeMap::new();
        for (spec, method_router) in self.entries {
            let guarded = method_router.route_layer(axum::middleware::from_fn_with_state(
                (state.clone(), spec.policy),
                authorize,
            ));
            let merged = match by_path.remove(spec.path) {
                Some(existing) => existing.merge(guarded),
                None => guarded,
            };
            by_path.insert(spec.path, merged);
        }
        by_path
            .into_iter()
            .fold(Router::new(), |router, (path, mr)| router.route(path, mr))
    }
}

/// The authenticated caller of a route, placed in the request by [`authorize`].
#[derive(Clone, Debug)]
pub struct Caller {
    pub user_id: UserId,
    pub clinic_id: ClinicId,
    pub role: Role,
    pub session_id: SessionId,
    pub stage: Stage,
    pub mfa_at: Option<i64>,
    /// The user's password was set by someone else (an operator's reset): until they change it,
    /// the session reaches only routes whose policy is [`Policy::PASSWORD_CHANGE`].
    pub must_change_password: bool,
    /// Locations the staff member is assigned to (covering grants included).
    pub locations: Vec<LocationId>,
    /// For a patient's session, their own patient record (what `own` grants reach).
    pub patient: Option<PatientId>,
    pub client: ClientInfo,
}

/// On what basis a resource-level check let the caller through; recorded in the audit event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Basis {
    Tenant,
    AssignedLocation,
    Own,
    /// Emergency access outside the caller's scope, with the stated reason.
    BreakGlass(String),
}

impl Caller {
    /// Checks that `perm` reaches a resource at `location`: tenant-wide grants always do; location
    /// grants only for assigned locations, or with a break-glass reason for roles that may.
    pub(in crate::platform) fn check_location(
        &self,
        perm: Permission,
        location: &LocationId,
    ) -> Result<Basis, ApiError> {
        match scope_of(self.role, perm) {
            Some(Scope::Tenant) => Ok(Basis::Tenant),
            Some(Scope::AssignedLocations) if self.locations.contains(location) => {
                Ok(Basis::AssignedLocation)
            }
            Some(Scope::AssignedLocations) => match (
                &self.client.break_glass_reason,
                scope_of(self.role, P::BreakGlass),
            ) {
                (Some(reason), Some(_)) => Ok(Basis::BreakGlass(reason.clone())),
                _ => Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    ErrorCode::LocationNotAssigned,
                    "this record belongs to a location you are not assigned to",
                )),
            },
            Some(Scope::Own) | None => Err(ApiError::forbidden("not permitted")),
        }
    }

    /// Whether the caller's role holds `perm` at all (for choices inside a route the caller
    /// already reached, such as an availability override; reaching an object is
    /// `TenantTx::reach`).
    pub fn may(&self, perm: Permission) -> bool {
        scope_of(self.role, perm).is_some()
    }

    /// Whether the caller may give an account `target` (create it with that role, or change it
    /// to that role), from [`assignable`]: refused with `role_not_assignable`, or
    /// `step_up_required` when the role needs a fresh MFA check and the caller's is stale.
    pub fn may_assign(&self, state: &AppState, target: Role) -> Result<(), ApiError> {
        match assign_rule(self.role, target) {
            None => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::RoleNotAssignable,
                format!(
                    "your role may not give an account the role {}",
                    target.as_str()
                ),
            )),
            Some(Assign::StepUp) => require_step_up(state, self),
            Some(Assign::Allowed) => Ok(()),
        }
    }

    /// An audit event by this caller, with its session, client and purpose filled in.
    pub fn event(&self, action: Action, resource_type: &'static str) -> AuditEvent {
        let mut e = AuditEvent::new(self.clinic_id.clone(), action, resource_type);
        e.actor_id = Some(self.user_id.to_string());
        e.actor_role = Some(self.role.as_str().to_string());
        e.session_id = Some(self.session_id.to_string());
        e.ip = self.client.ip.clone();
        e.user_agent = self.client.user_agent.clone();
        e.purpose = Some(self.client.purpose.clone());
        e
    }

    /// As [`Caller::event`], for a resource reached on `basis` (break-glass sets purpose and reason).
    pub(in crate::platform) fn event_on(
        &self,
        action: Action,
        resource_type: &'static str,
        basis: &Basis,
    ) -> AuditEvent {
        let mut e = self.event(action, resource_type);
        if let Basis::BreakGlass(reason) = basis {
            e.purpose = Some("break_glass".into());
            e.reason = Some(reason.clone());
        }
        e
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            // Only reachable if a handler on a public route asks for a Caller: a programming error.
            tracing::error!("caller requested on a route without authentication");
            ApiError::internal()
        })
    }
}

/// The middleware: authenticates the session (when the policy needs one), enforces stage,
/// permission and step-up, records denials in the audit log, then hands a [`Caller`] on.
async fn authorize(
    State((state, policy)): State<(AppState, Policy)>,
    mut req: Request,
    next: Next,
) -> Response {
    if policy.access == Access::Public {
        return next.run(req).await;
    }
    let client = ClientInfo::from_parts(req.headers(), req.extensions());
    let caller = match sessions::authenticate(&state, req.headers(), client).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = check(&state, &policy, &caller) {
        if e.status == StatusCode::FORBIDDEN {
            let mut event = caller.event(Action::Access, "route");
            event.outcome = Outcome::Denied;
            event.detail = Some(format!("{} {}", req.method(), matched_path(&req)));
            if let Err(err) = audit::record_now(&state, event).await {
                tracing::error!(error = %err, "could not audit a denied request");
            }
        }
        return e.into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

fn matched_path(req: &Request) -> String {
    req.extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default()
}

/// The policy decision for an authenticated caller.
pub fn check(state: &AppState, policy: &Policy, caller: &Caller) -> Result<(), ApiError> {
    match policy.access {
        Access::Public | Access::PendingMfa => return Ok(()),
        Access::Authenticated | Access::Perm(_) => match caller.stage {
            Stage::Full => {}
            Stage::MfaPending => {
                return Err(ApiError::unauthorized(
                    ErrorCode::MfaRequired,
                    "complete the MFA check first",
                ));
            }
            Stage::EnrollOnly => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    ErrorCode::MfaEnrollmentRequired,
                    "enroll an authenticator app before doing anything else",
                ));
            }
        },
    }
    if caller.must_change_password && !policy.password_change {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::PasswordChangeRequired,
            "choose a new password first: POST /api/v1/auth/password",
        ));
    }
    if let Access::Perm(p) = policy.access
        && scope_of(caller.role, p).is_none()
    {
        return Err(ApiError::forbidden(format!(
            "your role may not {}",
            p.as_str().replace('_', " ")
        )));
    }
    if policy.step_up {
        require_step_up(state, caller)?;
    }
    Ok(())
}

/// Refuses unless the caller's last MFA check is within the step-up window. 403, not 401: the
/// session is valid (pages sign out on 401), it only needs `POST /api/v1/auth/step-up`.
fn require_step_up(state: &AppState, caller: &Caller) -> Result<(), ApiError> {
    let now = state.clock.now_ms();
    let window = state.config.sessions.step_up_window_secs * 1000;
    if caller.mfa_at.is_some_and(|t| now - t <= window) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::StepUpRequired,
            "this action needs a fresh MFA check: POST /api/v1/auth/step-up",
        ))
    }
}

/// The matrix as Markdown (docs/permissions.md is this output; a test keeps them equal).
pub fn matrix_markdown(routes: &[RouteSpec]) -> String {
    let mut out = String::from(
        "# Permission matrix\n\nGenerated by `clinic permissions` from `clinic-api/src/authz.rs`; \
         a test fails when this file differs. `tenant`: the whole practice; `locations`: only the \
         locations the user is assigned to; `own`: only the user's own records.\n\n| permission |",
    );
    for &role in Role::ALL {
        out.push_str(&format!(" {} |", role.as_str()));
    }
    out.push_str("\n|---|");
    for _ in Role::ALL {
        out.push_str("---|");
    }
    out.push('\n');
    for &perm in Permission::ALL {
        out.push_str(&format!("| {} |", perm.as_str()));
        for &role in Role::ALL {
            let cell = match scope_of(role, perm) {
                Some(Scope::Tenant) => "tenant",
                Some(Scope::AssignedLocations) => "locations",
                Some(Scope::Own) => "own",
                None => "",
            };
            out.push_str(&format!(" {cell} |"));
        }
        out.push('\n');
    }
    out.push_str(
        "\n## Roles each role may give\n\nCreating an account with a role (or changing an \
         account to it) needs `users_manage` and this table; `step-up`: only after a fresh MFA \
         check.\n\n| role | may give |\n|---|---|\n",
    );
    for &role in Role::ALL {
        let cells: Vec<String> = assignable(role)
            .iter()
            .map(|(r, a)| match a {
                Assign::Allowed => r.as_str().to_string(),
                Assign::StepUp => format!("{} (step-up)", r.as_str()),
            })
            .collect();
        out.push_str(&format!("| {} | {} |\n", role.as_str(), cells.join(", ")));
    }
    out.push_str("\n## Routes\n\n| method | path | needs | step-up |\n|---|---|---|---|\n");
    let mut routes: Vec<&RouteSpec> = routes.iter().collect();
    routes.sort_by(|a, b| (a.path, a.method.as_str()).cmp(&(b.path, b.method.as_str())));
    for r in routes {
        let needs = match r.policy.access {
            Access::Public => "public".to_string(),
            Access::PendingMfa => "any session (MFA may be pending)".to_string(),
            Access::Authenticated => "signed in".to_string(),
            Access::Perm(p) => format!("`{}`", p.as_str()),
        };
        let step = if r.policy.step_up { "yes" } else { "" };
        out.push_str(&format!(
            "| {} | `{}` | {} | {} |\n",
            r.method, r.path, needs, step
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip() {
        for &r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn matrix_follows_the_practice() {
        // Front desk: scheduling and intake, never clinical notes or prescribing.
        assert!(scope_of(Role::FrontDesk, P::ScheduleWrite).is_some());
        assert!(scope_of(Role::FrontDesk, P::ClinicalRead).is_none());
        assert!(scope_of(Role::FrontDesk, P::Prescribe).is_none());
        // Medical assistant: clinical workflows but no prescribing.
        assert!(scope_of(Role::MedicalAssistant, P::ClinicalWrite).is_some());
        assert!(scope_of(Role::MedicalAssistant, P::Prescribe).is_none());
        // Provider: full records at assigned locations.
        assert_eq!(
            scope_of(Role::Provider, P::ClinicalRead),
            Some(Scope::AssignedLocations)
        );
        // Owner: operational reporting, not charts.
        assert!(scope_of(Role::Owner, P::ReportsRead).is_some());
        assert!(scope_of(Role::Owner, P::PatientsRead).is_none());
        // Patients: only their own records.
        for (_, scope) in grants(Role::Patient) {
            assert_eq!(*scope, Scope::Own);
        }
        // Every permission is named once in the list.
        let mut all = Permission::ALL.to_vec();
        all.dedup();
        assert_eq!(all.len(), Permission::ALL.len());
        assert!(Permission::ALL.iter().all(|p| p.as_str() != "unknown"));
    }
}
