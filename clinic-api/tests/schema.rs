//! Schema drift: the two migration sets build the same tables and columns, and every PostgreSQL
//! tenant table is under forced row-level security with a tenant policy. Everything compared is
//! read from the catalogs of freshly migrated databases (sqlite_master and pragma_table_info;
//! information_schema, pg_class and pg_policies), never from a list kept by hand, so a new
//! migration on one side only, or a new table without its policy, fails here.
//!
//! The PostgreSQL parts need `TEST_DATABASE_URL` (a role that may create databases and roles, as
//! `.ci/run` gives); without it they print SKIPPED.

use std::collections::BTreeMap;

use clinic_api::domains::identity::users::NewUser;
use clinic_api::platform::audit::{self, Action, AuditEvent};
use clinic_api::platform::authz::Role;
use clinic_api::platform::db::Db;
use clinic_api::platform::keys::KeyRing;
use clinic_api::testkit::{postgres_url_or_skip, with_database};
use clinic_api::{
    domains::identity::access_review, domains::identity::users, domains::tenancy::clinics,
    domains::tenancy::locations,
};
use sqlx::{PgPool, SqlitePool};

/// One column as both backends can describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Column {
    /// The type as the catalog spells it (for messages).
    declared: String,
    /// The comparable class (see [`sqlite_class`] and [`postgres_class`]); `None` is a type the
    /// shared SQL does not use, reported as drift.
    class: Option<&'static str>,
    nullable: bool,
    primary_key: bool,
}

/// Table name → column name → column.
type Schema = BTreeMap<String, BTreeMap<String, Column>>;

/// The mapping between the two type systems. A SQLite column has an affinity derived from its
/// declared type by the rules of <https://www.sqlite.org/datatype3.html> §3.1 (first match):
/// "INT" → integer, "CHAR"/"CLOB"/"TEXT" → text, "BLOB" or none → blob, "REAL"/"FLOA"/"DOUB" →
/// real, anything else → numeric.
fn sqlite_class(declared: &str) -> Option<&'static str> {
    let t = declared.to_ascii_uppercase();
    Some(if t.contains("INT") {
        "integer"
    } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
        "text"
    } else if t.contains("BLOB") || t.is_empty() {
        "blob"
    } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
        "real"
    } else {
        "numeric"
    })
}

/// A PostgreSQL type matches a SQLite affinity when it accepts every value the SQLite column
/// holds and the `Any` driver hands the same Rust type back: a SQLite integer is 64 bits, so only
/// `bigint` matches it (`integer` would refuse millisecond times SQLite stores; the migrations'
/// convention is BIGINT for every number); SQLite text has no length limit, so only `text` (not
/// `varchar(n)`); then `bytea` ↔ blob and `double precision` ↔ real. Everything else (boolean,
/// numeric, timestamps, json, arrays, …) has no SQLite twin the shared SQL could rely on.
fn postgres_class(data_type: &str) -> Option<&'static str> {
    match data_type {
        "bigint" => Some("integer"),
        "text" => Some("text"),
        "bytea" => Some("blob"),
        "double precision" => Some("real"),
        _ => None,
    }
}

/// Reads a SQLite database's tables and columns (sqlx's own bookkeeping and SQLite's internal
/// `sqlite_*` tables left out).
async fn sqlite_schema(pool: &SqlitePool) -> Schema {
    let rows: Vec<(String, String, String, i64, i64)> = sqlx::query_as(
        "SELECT m.name, p.name, p.type, p.\"notnull\", p.pk \
         FROM sqlite_master m JOIN pragma_table_info(m.name) p \
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
           AND m.name <> '_sqlx_migrations' \
         ORDER BY m.name, p.cid",
    )
    .fetch_all(pool)
    .await
    .expect("read sqlite_master and pragma_table_info");
    let mut schema = Schema::new();
    for (table, column, declared, not_null, pk) in rows {
        let class = sqlite_class(&declared);
        schema.entry(table).or_default().insert(
            column,
            Column {
                declared,
                class,
                // The one allowance: SQLite lets a PRIMARY KEY column that is not an INTEGER
                // PRIMARY KEY hold NULL, for backwards compatibility (sqlite.org/lang_createtable.html,
                // "PRIMARY KEY constraints"), so pragma_table_info reports `id TEXT PRIMARY KEY` as
                // nullable where PostgreSQL makes it NOT NULL. Making SQLite agree means rebuilding
                // every table with an id (SQLite cannot add NOT NULL to a column), and every id is
                // written by the application from a generated newtype, never NULL; so a primary-key
                // column counts as NOT NULL here, as it is on PostgreSQL.
                nullable: not_null == 0 && pk == 0,
                primary_key: pk > 0,
            },
        );
    }
    schema
}

/// Reads the base tables of schema `public` and their columns (sqlx's bookkeeping left out).
async fn postgres_schema(pool: &PgPool) -> Schema {
    let rows: Vec<(String, String, String, bool, bool)> = sqlx::query_as(
        "SELECT c.table_name::text, c.column_name::text, c.data_type::text, \
                c.is_nullable::text = 'YES', \
                EXISTS (SELECT 1 FROM information_schema.table_constraints tc \
                        JOIN information_schema.key_column_usage k \
                          ON k.constraint_schema = tc.constraint_schema \
                         AND k.constraint_name = tc.constraint_name \
                        WHERE tc.constraint_type = 'PRIMARY KEY' \
                          AND tc.table_schema = c.table_schema AND tc.table_name = c.table_name \
                          AND k.column_name = c.column_name) \
         FROM information_schema.columns c \
         JOIN information_schema.tables t \
           ON t.table_schema = c.table_schema AND t.table_name = c.table_name \
         WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE' \
           AND c.table_name <> '_sqlx_migrations' \
         ORDER BY c.table_name, c.ordinal_position",
    )
    .fetch_all(pool)
    .await
    .expect("read information_schema.columns");
    let mut schema = Schema::new();
    for (table, column, declared, nullable, primary_key) in rows {
        let class = postgres_class(&declared);
        schema.entry(table).or_default().insert(
            column,
            Column {
                declared,
                class,
                nullable,
                primary_key,
            },
        );
    }
    schema
}

/// Every difference between two schemas, one line each, named `a` and `b` in the messages.
fn differences(a_name: &str, a: &Schema, b_name: &str, b: &Schema) -> Vec<String> {
    let mut out = Vec::new();
    for (side, this, other, other_name) in [(a_name, a, b, b_name), (b_name, b, a, a_name)] {
        for (table, columns) in this {
            match other.get(table) {
                None => out.push(format!("table {table} exists on {side} only")),
                Some(theirs) => {
                    for column in columns.keys().filter(|c| !theirs.contains_key(*c)) {
                        out.push(format!(
                            "column {table}.{column} exists on {side} only, not on {other_name}"
                        ));
                    }
                }
            }
        }
    }
    for (table, columns) in a {
        let Some(theirs) = b.get(table) else { continue };
        for (column, x) in columns {
            let Some(y) = theirs.get(column) else {
                continue;
            };
            let at = format!("{table}.{column}");
            for (side, c) in [(a_name, x), (b_name, y)] {
                if c.class.is_none() {
                    out.push(format!(
                        "{at}: {side} type {} has no counterpart on the other backend",
                        c.declared
                    ));
                }
            }
            if x.class.is_some() && y.class.is_some() && x.class != y.class {
                out.push(format!(
                    "{at}: {a_name} {} ({}) against {b_name} {} ({})",
                    x.declared,
                    x.class.unwrap_or_default(),
                    y.declared,
                    y.class.unwrap_or_default()
                ));
            }
            if x.nullable != y.nullable {
                let null = |n: bool| if n { "nullable" } else { "NOT NULL" };
                out.push(format!(
                    "{at}: {} on {a_name}, {} on {b_name}",
                    null(x.nullable),
                    null(y.nullable)
                ));
            }
            if x.primary_key != y.primary_key {
                let pk = |p: bool| if p { "in" } else { "not in" };
                out.push(format!(
                    "{at}: {} the primary key on {a_name}, {} it on {b_name}",
                    pk(x.primary_key),
                    pk(y.primary_key)
                ));
            }
        }
    }
    out.sort();
    out
}

/// A SQLite database in `dir`, migrated.
async fn migrated_sqlite(dir: &std::path::Path, name: &str) -> SqlitePool {
    let url = format!("sqlite://{}?mode=rwc", dir.join(name).display());
    Db::migrate(&url).await.expect("migrate sqlite");
    SqlitePool::connect(&url).await.expect("open sqlite")
}

/// A fresh PostgreSQL database on the server of `admin_url`, migrated; returns its URL.
async fn migrated_postgres(admin_url: &str) -> (String, String) {
    let name = format!("clinic_t_schema_{}", uuid::Uuid::new_v4().simple());
    let server = PgPool::connect(admin_url)
        .await
        .expect("connect TEST_DATABASE_URL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&server)
        .await
        .expect("create database");
    server.close().await;
    let url = with_database(admin_url, &name);
    Db::migrate(&url).await.expect("migrate postgres");
    (name, url)
}

async fn drop_database(admin_url: &str, name: &str) {
    let server = PgPool::connect(admin_url).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&server)
        .await
        .unwrap();
    server.close().await;
}

#[tokio::test]
async fn sqlite_and_postgres_have_the_same_tables_and_columns() {
    let Some(admin_url) =
        postgres_url_or_skip("sqlite_and_postgres_have_the_same_tables_and_columns")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sqlite = migrated_sqlite(dir.path(), "schema.db").await;
    let lite = sqlite_schema(&sqlite).await;
    sqlite.close().await;
    let (name, url) = migrated_postgres(&admin_url).await;
    let pg = PgPool::connect(&url).await.unwrap();
    let postgres = postgres_schema(&pg).await;
    pg.close().await;
    drop_database(&admin_url, &name).await;

    assert!(
        lite.len() > 1 && postgres.len() > 1,
        "the catalogs list no tables: sqlite {lite:?}, postgres {postgres:?}"
    );
    let drift = differences("sqlite", &lite, "postgres", &postgres);
    assert!(
        drift.is_empty(),
        "the migration sets disagree ({} differences); add a migration on the side that is wrong:\n{}",
        drift.len(),
        drift.join("\n")
    );
}

/// The comparison itself finds drift (so an empty answer above means something): the same
/// migrated SQLite schema, changed by real DDL, against its original.
#[tokio::test]
async fn the_schema_comparison_reports_drift() {
    let dir = tempfile::tempdir().unwrap();
    let pool = migrated_sqlite(dir.path(), "drift.db").await;
    let before = sqlite_schema(&pool).await;
    assert!(differences("a", &before, "b", &before).is_empty());
    for sql in [
        "ALTER TABLE clinics ADD COLUMN scratch_note TEXT",
        "ALTER TABLE sessions DROP COLUMN user_agent",
        "CREATE TABLE scratch_things (id TEXT PRIMARY KEY, clinic_id TEXT NOT NULL, done BOOLEAN)",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    let after = sqlite_schema(&pool).await;
    pool.close().await;
    let mut changed = after.clone();
    // A type and a nullability change, which SQLite's ALTER TABLE cannot make.
    let birth = changed
        .get_mut("patients")
        .and_then(|t| t.get_mut("birth_date"))
        .unwrap();
    birth.declared = "BIGINT".into();
    birth.class = sqlite_class("BIGINT");
    birth.nullable = true;
    assert_eq!(
        differences("before", &before, "after", &changed),
        vec![
            "column clinics.scratch_note exists on after only, not on before".to_string(),
            "column sessions.user_agent exists on before only, not on after".to_string(),
            "patients.birth_date: NOT NULL on before, nullable on after".to_string(),
            "patients.birth_date: before TEXT (text) against after BIGINT (integer)".to_string(),
            "table scratch_things exists on after only".to_string(),
        ]
    );
    // A type the other backend has no twin for (BOOLEAN is numeric affinity on SQLite; as
    // PostgreSQL's `boolean` it maps to nothing).
    let mut pg_like = after.clone();
    let done = pg_like
        .get_mut("scratch_things")
        .and_then(|t| t.get_mut("done"))
        .unwrap();
    done.declared = "boolean".into();
    done.class = postgres_class("boolean");
    assert_eq!(
        differences("sqlite", &after, "postgres", &pg_like),
        vec!["scratch_things.done: postgres type boolean has no counterpart on the other backend"]
    );
}

/// One PostgreSQL table that should be under row-level security: it has a `clinic_id` column or
/// already has row-level security enabled (the `clinics` table, keyed on `id`).
#[derive(Debug, sqlx::FromRow)]
struct TenantTable {
    name: String,
    enabled: bool,
    forced: bool,
    policies: i64,
    tenant_policy: bool,
}

/// Reads the tenant tables of schema `public` from pg_class, pg_attribute and pg_policies, and
/// lists what each lacks. A tenant policy is one that binds every role (PUBLIC) for every command
/// and keys both its USING and its WITH CHECK on app_clinic(): an owner's read exemption or a
/// `USING (true)` does not count.
async fn rls_gaps(pool: &PgPool) -> (Vec<String>, Vec<String>) {
    let tables: Vec<TenantTable> = sqlx::query_as(
        "SELECT c.relname::text AS name, c.relrowsecurity AS enabled, c.relforcerowsecurity AS forced, \
                (SELECT count(*) FROM pg_policies p \
                 WHERE p.schemaname = n.nspname AND p.tablename = c.relname) AS policies, \
                EXISTS (SELECT 1 FROM pg_policies p \
                        WHERE p.schemaname = n.nspname AND p.tablename = c.relname \
                          AND p.permissive = 'PERMISSIVE' AND p.cmd = 'ALL' \
                          AND p.roles = '{public}'::name[] \
                          AND p.qual LIKE '%app_clinic()%' \
                          AND coalesce(p.with_check, p.qual) LIKE '%app_clinic()%') AS tenant_policy \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') \
           AND (c.relrowsecurity OR EXISTS ( \
                SELECT 1 FROM pg_attribute a \
                WHERE a.attrelid = c.oid AND a.attname = 'clinic_id' \
                  AND a.attnum > 0 AND NOT a.attisdropped)) \
         ORDER BY c.relname",
    )
    .fetch_all(pool)
    .await
    .expect("read pg_class and pg_policies");
    let mut gaps = Vec::new();
    for t in &tables {
        if !t.enabled {
            gaps.push(format!("{}: row-level security is not enabled", t.name));
        }
        if !t.forced {
            gaps.push(format!(
                "{}: row-level security is not forced (its owner bypasses it)",
                t.name
            ));
        }
        if t.policies == 0 {
            gaps.push(format!("{}: no policy", t.name));
        } else if !t.tenant_policy {
            gaps.push(format!(
                "{}: no tenant policy (FOR ALL TO PUBLIC keyed on app_clinic())",
                t.name
            ));
        }
    }
    (tables.into_iter().map(|t| t.name).collect(), gaps)
}

#[tokio::test]
async fn every_postgres_table_with_clinic_id_has_forced_row_level_security_and_a_policy() {
    let Some(admin_url) = postgres_url_or_skip(
        "every_postgres_table_with_clinic_id_has_forced_row_level_security_and_a_policy",
    ) else {
        return;
    };
    let (name, url) = migrated_postgres(&admin_url).await;
    let pool = PgPool::connect(&url).await.unwrap();

    let (tables, gaps) = rls_gaps(&pool).await;
    assert!(
        tables.len() > 1 && tables.iter().any(|t| t == "clinics"),
        "the catalog query found no tenant tables: {tables:?}"
    );
    assert!(
        gaps.is_empty(),
        "tenant tables not under forced row-level security with a tenant policy:\n{}",
        gaps.join("\n")
    );

    // The same query flags a table created the way a hasty migration would, at each step short
    // of the full treatment.
    let reported = |gaps: Vec<String>| -> Vec<String> {
        gaps.into_iter()
            .filter(|g| g.starts_with("scratch_unguarded:"))
            .collect()
    };
    sqlx::query("CREATE TABLE scratch_unguarded (id TEXT PRIMARY KEY, clinic_id TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let (tables, gaps) = rls_gaps(&pool).await;
    assert!(tables.iter().any(|t| t == "scratch_unguarded"));
    assert_eq!(
        reported(gaps),
        vec![
            "scratch_unguarded: row-level security is not enabled",
            "scratch_unguarded: row-level security is not forced (its owner bypasses it)",
            "scratch_unguarded: no policy",
        ]
    );
    let steps: [(&str, &[&str]); 4] = [
        (
            "ALTER TABLE scratch_unguarded ENABLE ROW LEVEL SECURITY",
            &[
                "scratch_unguarded: row-level security is not forced (its owner bypasses it)",
                "scratch_unguarded: no policy",
            ],
        ),
        (
            "ALTER TABLE scratch_unguarded FORCE ROW LEVEL SECURITY",
            &["scratch_unguarded: no policy"],
        ),
        (
            "CREATE POLICY everything ON scratch_unguarded USING (true)",
            &["scratch_unguarded: no tenant policy (FOR ALL TO PUBLIC keyed on app_clinic())"],
        ),
        (
            "CREATE POLICY tenant_isolation ON scratch_unguarded \
             USING (clinic_id = app_clinic()) WITH CHECK (clinic_id = app_clinic())",
            &[],
        ),
    ];
    for (sql, expected) in steps {
        sqlx::query(sql).execute(&pool).await.unwrap();
        assert_eq!(reported(rls_gaps(&pool).await.1), expected, "after {sql}");
    }
    sqlx::query("DROP TABLE scratch_unguarded")
        .execute(&pool)
        .await
        .unwrap();
    assert!(rls_gaps(&pool).await.1.is_empty());
    pool.close().await;
    drop_database(&admin_url, &name).await;
}

/// A PostgreSQL URL with its `user:password@` replaced.
fn with_login(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// url");
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let host = match rest[..authority_end].rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    format!("{scheme}://{user}:{password}@{host}")
}

/// Forced row-level security binds the table owner too. The tests otherwise migrate as a
/// superuser, whom no policy binds, so this migrates a database as an ordinary owning role (as
/// README's `admin_url` has it) and runs the owner's jobs: a clinic created through a tenant
/// transaction, the SECURITY DEFINER functions (login's clinic_id_by_slug, the checkpoint's
/// audit_heads, the jobs' clinic_ids) and the operator reads across tenants (audit verify,
/// access review) all still work, while a write outside any tenant is refused.
#[tokio::test]
async fn an_ordinary_owner_keeps_its_jobs_under_forced_row_level_security() {
    let Some(admin_url) =
        postgres_url_or_skip("an_ordinary_owner_keeps_its_jobs_under_forced_row_level_security")
    else {
        return;
    };
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let (role, name) = (
        format!("clinic_owner_{}", &tag[..12]),
        format!("clinic_t_owner_{tag}"),
    );
    let server = PgPool::connect(&admin_url).await.unwrap();
    for sql in [
        // CREATEROLE: migration 0001 creates clinic_app if the cluster has none yet.
        format!("CREATE ROLE {role} LOGIN CREATEROLE PASSWORD 'ownertest'"),
        format!("CREATE DATABASE {name} OWNER {role}"),
    ] {
        sqlx::query(&sql).execute(&server).await.unwrap();
    }
    let url = with_login(&with_database(&admin_url, &name), &role, "ownertest");
    Db::migrate(&url).await.expect("migrate as the owner");

    let owner = Db::connect(&url, 2, None).await.unwrap();
    let check = owner.role_check().await.unwrap().unwrap();
    assert!(
        check.superuser == 0 && check.bypass_rls == 0 && check.owned_tables > 0,
        "{check:?}"
    );
    let now = 1_790_000_000_000;
    let clinic = clinics::create(&owner, "owner-test", "Owner Test", now)
        .await
        .expect("create a clinic as the owner");
    let other = clinics::create(&owner, "owner-other", "Other", now)
        .await
        .unwrap();
    for c in [&clinic, &other] {
        let password = clinic_api::domains::identity::passwords::NewHash::of(
            "owner test password",
            std::time::Duration::from_secs(60),
        )
        .await
        .unwrap();
        let mut tx = owner.tenant_tx(c, now).await.unwrap();
        let location = locations::create(&mut tx, c, "Main", "UTC", now)
            .await
            .unwrap();
        let user = format!("admin-{}", &c.as_str()[..8]);
        users::create(
            &mut tx,
            c,
            now,
            &NewUser {
                username: &user,
                display_name: &user,
                role: Role::ClinicAdmin,
                password: &password,
                locations: &[location],
            },
        )
        .await
        .unwrap();
        tx.audit(AuditEvent::new(c.clone(), Action::UserCreate, "user").resource(&user))
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }

    // Definer functions, run as the owner.
    assert_eq!(
        owner.clinic_id_by_slug("owner-test").await.unwrap(),
        Some(clinic.clone())
    );
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyRing::generate();
    let file = dir.path().join("checkpoints");
    let written = audit::checkpoint(&owner, &keys, now, &file).await.unwrap();
    assert_eq!(written.len(), 2, "audit_heads sees every tenant");
    // Operator reads across tenants on the admin connection.
    let report = audit::verify(&owner, &keys, &file).await.unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    // Each tenant's user creation, and the checkpoint event each tenant's chain got when the
    // checkpoint line naming it was written.
    assert_eq!((report.clinics, report.events), (2, 4));
    let review = access_review::run(&owner, now, 90, 900).await.unwrap();
    assert_eq!(review.privileged.len(), 2, "{review:?}");

    // Forced: the owner writes nothing outside a tenant transaction.
    let renamed = sqlx::query("UPDATE clinics SET name = 'renamed'")
        .execute(&owner.pool)
        .await
        .unwrap();
    assert_eq!(renamed.rows_affected(), 0);
    let err = sqlx::query(
        "INSERT INTO locations (id, clinic_id, name, time_zone, created_at) VALUES ('x', $1, 'Side door', 'UTC', 0)",
    )
    .bind(clinic.as_str())
    .execute(&owner.pool)
    .await
    .unwrap_err();
    assert!(err.to_string().contains("row-level security"), "{err}");

    // The server's role reaches the definer functions and sees no tenant on its own.
    sqlx::query(&format!("GRANT clinic_app TO {role}"))
        .execute(&server)
        .await
        .unwrap();
    let app = Db::connect(&url, 1, Some("clinic_app")).await.unwrap();
    assert!(!app.role_check().await.unwrap().unwrap().can_bypass_rls());
    assert_eq!(
        app.clinic_id_by_slug("owner-other").await.unwrap(),
        Some(other.clone())
    );
    let ids: Vec<(String,)> = sqlx::query_as("SELECT clinic_ids()")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    let (seen,): (i64,) = sqlx::query_as("SELECT count(*) FROM clinics")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(seen, 0);

    app.pool.close().await;
    owner.pool.close().await;
    for sql in [
        format!("DROP DATABASE {name} WITH (FORCE)"),
        format!("DROP ROLE {role}"),
    ] {
        sqlx::query(&sql).execute(&server).await.unwrap();
    }
    server.close().await;
}

/// Membership is ownership for row-level security: a member of a table-owning role can
/// `SET ROLE` to it and alter or drop the table's policies. The start-up check counts the tables
/// the role owns itself or through a role it belongs to.
#[tokio::test]
async fn a_member_of_a_table_owning_role_may_not_serve() {
    let Some(admin_url) = postgres_url_or_skip("a_member_of_a_table_owning_role_may_not_serve")
    else {
        return;
    };
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let (owner, member, name) = (
        format!("clinic_tabowner_{tag}"),
        format!("clinic_member_{tag}"),
        format!("clinic_t_member_{tag}"),
    );
    let server = PgPool::connect(&admin_url).await.unwrap();
    for sql in [
        format!("CREATE ROLE {owner} NOLOGIN NOSUPERUSER NOBYPASSRLS"),
        format!("CREATE ROLE {member} NOLOGIN NOSUPERUSER NOBYPASSRLS"),
        format!("GRANT {owner} TO {member}"),
        format!("CREATE DATABASE {name}"),
    ] {
        sqlx::query(&sql).execute(&server).await.unwrap();
    }
    let url = with_database(&admin_url, &name);
    let setup = PgPool::connect(&url).await.unwrap();
    for sql in [
        "CREATE TABLE probe (id text PRIMARY KEY)".to_string(),
        format!("ALTER TABLE probe OWNER TO {owner}"),
        format!("GRANT USAGE ON SCHEMA public TO {member}"),
    ] {
        sqlx::query(&sql).execute(&setup).await.unwrap();
    }
    setup.close().await;

    let db = Db::connect(&url, 1, Some(&member)).await.unwrap();
    let check = db.role_check().await.unwrap().unwrap();
    assert_eq!(check.role, member);
    assert_eq!(
        (check.superuser, check.bypass_rls, check.owned_tables),
        (0, 0, 1),
        "{check:?}"
    );
    assert!(check.can_bypass_rls(), "{check:?}");
    db.pool.close().await;

    for sql in [
        format!("DROP DATABASE {name} WITH (FORCE)"),
        format!("DROP ROLE {member}"),
        format!("DROP ROLE {owner}"),
    ] {
        sqlx::query(&sql).execute(&server).await.unwrap();
    }
}

/// The definer functions name pg_temp last in their search_path, and PUBLIC (so the server's
/// role) may create nothing: no objects in the public schema, no temporary tables.
#[tokio::test]
async fn definer_functions_pin_their_path_and_public_creates_nothing() {
    let Some(_) =
        postgres_url_or_skip("definer_functions_pin_their_path_and_public_creates_nothing")
    else {
        return;
    };
    let app = clinic_api::testkit::TestApp::new().await;
    let paths: Vec<(String, String)> = sqlx::query_as(
        "SELECT p.proname::text, coalesce(array_to_string(p.proconfig, ';'), '') FROM pg_proc p \
         JOIN pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.nspname = 'public' AND p.prosecdef ORDER BY 1",
    )
    .fetch_all(&app.admin.pool)
    .await
    .unwrap();
    assert_eq!(
        paths.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>(),
        ["audit_heads", "clinic_id_by_slug", "clinic_ids"]
    );
    for (function, config) in &paths {
        assert_eq!(config, "search_path=public, pg_temp", "{function}");
    }
    let (create, temp): (bool, bool) = sqlx::query_as(
        "SELECT has_schema_privilege('clinic_app', 'public', 'CREATE'), \
                has_database_privilege('clinic_app', current_database(), 'TEMP')",
    )
    .fetch_one(&app.admin.pool)
    .await
    .unwrap();
    assert_eq!((create, temp), (false, false));
    // And from the server's own connection, a temporary table is refused.
    let err = sqlx::query("CREATE TEMPORARY TABLE clinics (id text)")
        .execute(&app.state.db.pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
}
