//! The tenant transaction: one type that every query on regulated rows runs in. It carries the
//! tenant, the backend and one `now`, records audit events in itself ([`TenantTx::audit`]), proves
//! the caller's reach to an object ([`TenantTx::reach`]) and turns a refusal into "audit, commit,
//! return the error" ([`TenantTx::refuse`], [`TenantTx::fail`]).
//!
//! It dereferences to the connection, so queries take `&mut *tx` (or `&mut **tx` through a
//! `&mut TenantTx`) as they would a sqlx transaction.

use std::ops::{Deref, DerefMut};

use sqlx::{Any, AnyConnection, Transaction};
use tokio::sync::OwnedSemaphorePermit;

use crate::platform::audit::{self, Action, AuditEvent, Outcome};
use crate::platform::authz::{Basis, Caller, Permission, Scope, scope_of};
use crate::platform::db::Backend;
use crate::platform::error::{ApiError, ApiResult};
use crate::platform::ids::{ClinicId, LocationId, PatientId};

/// A transaction scoped to one tenant (on PostgreSQL, `app.clinic_id` is set for it).
pub struct TenantTx {
    /// `None` only after a refusal committed it; the handler returns the error at once.
    inner: Option<Transaction<'static, Any>>,
    clinic: ClinicId,
    backend: Backend,
    now: i64,
    /// What to do once the transaction has committed (tell a live room what the rows say).
    on_commit: Vec<Box<dyn FnOnce() + Send>>,
    /// SQLite: this process's writers' turn, given back when the transaction ends (declared
    /// after `inner`, so it is released after the transaction is).
    _turn: Option<OwnedSemaphorePermit>,
}

impl TenantTx {
    pub(in crate::platform) fn new(
        inner: Transaction<'static, Any>,
        turn: Option<OwnedSemaphorePermit>,
        clinic: ClinicId,
        backend: Backend,
        now: i64,
    ) -> Self {
        Self {
            _turn: turn,
            inner: Some(inner),
            clinic,
            backend,
            now,
            on_commit: Vec::new(),
        }
    }

    /// Runs `f` after this transaction commits, never if it rolls back: effects outside the
    /// database (a live consult room told it has ended) follow what was committed.
    pub fn on_commit(&mut self, f: impl FnOnce() + Send + 'static) {
        self.on_commit.push(Box::new(f));
    }

    /// The tenant this transaction is scoped to.
    pub fn clinic(&self) -> &ClinicId {
        &self.clinic
    }

    /// The one instant of this transaction (milliseconds since the epoch): every row it writes
    /// and every audit event it records carries it.
    pub fn now(&self) -> i64 {
        self.now
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Appends `event` to the tenant's audit chain in this transaction, at [`TenantTx::now`].
    pub async fn audit(&mut self, event: AuditEvent) -> sqlx::Result<i64> {
        let (backend, now) = (self.backend, self.now);
        audit::record(self, backend, now, event).await
    }

    pub async fn commit(mut self) -> sqlx::Result<()> {
        if let Some(tx) = self.inner.take() {
            tx.commit().await?;
        }
        for f in std::mem::take(&mut self.on_commit) {
            f();
        }
        Ok(())
    }

    pub async fn rollback(mut self) -> sqlx::Result<()> {
        match self.inner.take() {
            Some(tx) => tx.rollback().await,
            None => Ok(()),
        }
    }

    /// Commits what was recorded so far (audit events of a refused or failed request) and
    /// returns `err`.
    pub async fn fail<T>(self, err: ApiError) -> ApiResult<T> {
        self.commit().await?;
        Err(err)
    }

    /// Records `event` as denied, commits, and returns `err`.
    pub async fn refuse<T>(mut self, event: AuditEvent, err: ApiError) -> ApiResult<T> {
        self.audit(event.outcome(Outcome::Denied)).await?;
        self.fail(err).await
    }

    /// As [`TenantTx::reach`] for a route that staff and patients share: the first of `perms`
    /// that the caller's role holds decides (none held: refused like any other).
    pub async fn reach_any(
        &mut self,
        caller: &Caller,
        perms: &[Permission],
        target: Target<'_>,
    ) -> ApiResult<Reached> {
        let perm = perms
            .iter()
            .copied()
            .find(|p| scope_of(caller.role, *p).is_some())
            .unwrap_or(perms[0]);
        self.reach(caller, perm, target).await
    }

    /// The caller's own patient record, reached with `perm` (a patient's own routes). A user
    /// with no patient record gets 404.
    pub async fn reach_own(
        &mut self,
        caller: &Caller,
        perm: Permission,
    ) -> ApiResult<(PatientId, Reached)> {
        let own = caller
            .patient
            .clone()
            .ok_or_else(|| ApiError::not_found("patient record"))?;
        let target = Target::object("patient", own.as_str()).of_patient(own.as_str());
        let reached = self.reach(caller, perm, target).await?;
        Ok((own, reached))
    }

    /// Proves that `caller` may do `perm` on `target`, or refuses: the denial is recorded in
    /// this transaction's audit chain and committed, and the error returned (the transaction is
    /// spent; return the error). The answer says on what basis the caller reached it; build the
    /// access's audit event from it ([`Reached::event`]) so a break-glass access is always
    /// recorded as one, with its reason.
    pub async fn reach(
        &mut self,
        caller: &Caller,
        perm: Permission,
        target: Target<'_>,
    ) -> ApiResult<Reached> {
        match decide(caller, perm, &target) {
            Ok(basis) => Ok(Reached {
                caller: caller.clone(),
                basis,
                kind: target.kind,
                id: target.id.map(str::to_string),
                patient: target.patient.map(|p| p.to_string()),
            }),
            Err(err) => {
                let mut event = caller.event(Action::Access, target.kind);
                event.patient_id = target.patient.map(|p| p.to_string());
                event.resource_id = target.id.map(str::to_string);
                event.outcome = Outcome::Denied;
                self.audit(event).await?;
                if let Some(tx) = self.inner.take() {
                    tx.commit().await?;
                }
                self.on_commit.clear();
                Err(err)
            }
        }
    }
}

/// What a handler asks to act on: an object of `kind` (its id, if it has one yet) at a location,
/// belonging to a patient for patient records. A location alone (a list, a create) is a target
/// too.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    pub kind: &'static str,
    pub id: Option<&'a str>,
    pub location: Option<&'a LocationId>,
    pub patient: Option<&'a str>,
    /// A listing confined to the caller's own assigned locations (the query restricts itself).
    pub assigned_only: bool,
}

impl<'a> Target<'a> {
    /// An object of `kind` with `id`.
    pub fn object(kind: &'static str, id: &'a str) -> Self {
        Self {
            kind,
            id: Some(id),
            location: None,
            patient: None,
            assigned_only: false,
        }
    }

    /// A listing of `kind` across the caller's reach: the whole tenant for tenant-wide grants,
    /// else only the caller's assigned locations (which the listing's query must apply).
    pub fn listing(kind: &'static str) -> Self {
        Self {
            kind,
            id: None,
            location: None,
            patient: None,
            assigned_only: true,
        }
    }

    /// Something of `kind` at `location` with no id yet (a list or a create).
    pub fn at(kind: &'static str, location: &'a LocationId) -> Self {
        Self {
            kind,
            id: None,
            location: Some(location),
            patient: None,
            assigned_only: false,
        }
    }

    /// The object's location.
    pub fn located(mut self, location: &'a LocationId) -> Self {
        self.location = Some(location);
        self
    }

    /// The patient the object belongs to (a patient caller reaches only their own).
    pub fn of_patient(mut self, patient: &'a str) -> Self {
        self.patient = Some(patient);
        self
    }
}

/// A proven reach: who, on what basis, to what. Audit events of the access are built from it.
#[derive(Clone, Debug)]
pub struct Reached {
    caller: Caller,
    pub basis: Basis,
    kind: &'static str,
    id: Option<String>,
    patient: Option<String>,
}

impl Reached {
    /// The audit event of `action` on the reached object: actor, session, client, object,
    /// patient, and purpose `break_glass` with its reason when that is the basis.
    pub fn event(&self, action: Action) -> AuditEvent {
        let mut e = self.caller.event_on(action, self.kind, &self.basis);
        e.resource_id.clone_from(&self.id);
        e.patient_id.clone_from(&self.patient);
        e
    }

    /// As [`Reached::event`] for another kind of resource reached through this one (the images
    /// of a reached patient).
    pub fn event_for(&self, action: Action, kind: &'static str) -> AuditEvent {
        let mut e = self.caller.event_on(action, kind, &self.basis);
        e.patient_id.clone_from(&self.patient);
        e
    }

    pub fn is_break_glass(&self) -> bool {
        matches!(self.basis, Basis::BreakGlass(_))
    }
}

/// The decision alone (no I/O): tenant-wide grants reach everything of the tenant; location
/// grants reach assigned locations, or others with a break-glass reason for roles that may;
/// `own` grants reach only the caller's own patient record.
pub fn decide(caller: &Caller, perm: Permission, target: &Target<'_>) -> ApiResult<Basis> {
    match scope_of(caller.role, perm) {
        Some(Scope::Tenant) => Ok(Basis::Tenant),
        Some(Scope::AssignedLocations) => match target.location {
            Some(location) => caller.check_location(perm, location),
            None if target.assigned_only => Ok(Basis::AssignedLocation),
            // A location-scoped grant on an object with no location: nothing proves it.
            None => Err(ApiError::forbidden("not permitted")),
        },
        Some(Scope::Own) => {
            let own = caller.patient.as_ref().map(PatientId::as_str);
            match (own, target.patient) {
                (Some(own), Some(patient)) if own == patient => Ok(Basis::Own),
                // Another patient's record does not exist for a patient.
                _ => Err(ApiError::not_found(target.kind)),
            }
        }
        None => Err(ApiError::forbidden("not permitted")),
    }
}

impl Deref for TenantTx {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        self.inner
            .as_deref()
            .expect("tenant transaction used after a refusal committed it")
    }
}

impl DerefMut for TenantTx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        self.inner
            .as_deref_mut()
            .expect("tenant transaction used after a refusal committed it")
    }
}
