//! The `clinic` command line: parses arguments and calls into the library. No business logic here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app;
use crate::platform::audit::{self, Action, AuditEvent};
use crate::platform::authz::Role;
use crate::platform::clock::{Clock, SystemClock};
use crate::platform::config::Config;
use crate::platform::db::Db;
use crate::platform::ids::{ClinicId, LocationId};
use crate::platform::keys::KeyRing;
use crate::{
    demo, domains::identity::access_review, domains::identity::passwords, domains::identity::users,
    domains::tenancy::clinics,
};

#[derive(Parser)]
#[command(
    name = "clinic",
    version,
    about = "Telemedicine and wound-imaging engine for outpatient practices"
)]
struct Cli {
    /// TOML configuration file (CLINIC_* environment variables override it).
    #[arg(long, global = true, env = "CLINIC_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (migrates first).
    Serve {
        /// Seed a demo practice and print its logins (once).
        #[arg(long)]
        demo: bool,
    },
    /// Apply database migrations.
    Migrate,
    /// Manage practices (tenants).
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Manage user accounts.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Verify or checkpoint the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Review access: stale accounts, missing MFA, privileged roles, disabled users with sessions.
    AccessReview {
        /// Accounts without a login in this many days are stale.
        #[arg(long, default_value_t = 90)]
        stale_days: i64,
        #[arg(long)]
        json: bool,
    },
    /// Wound images: storage tiers.
    Imaging {
        #[command(subcommand)]
        command: ImagingCommand,
    },
    /// Print the permission matrix as Markdown (docs/permissions.md).
    Permissions,
    /// Print the OpenAPI document.
    Openapi,
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a practice.
    Add {
        #[arg(long)]
        slug: String,
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user; prints a one-time enrollment link for them (never a password).
    Add {
        #[arg(long)]
        clinic: String,
        #[arg(long)]
        username: String,
        #[arg(long)]
        role: String,
        #[arg(long)]
        display_name: Option<String>,
        /// Location ids to assign (repeat for more).
        #[arg(long = "location")]
        locations: Vec<String>,
    },
    /// Disable a user and revoke their sessions.
    Disable {
        #[arg(long)]
        clinic: String,
        #[arg(long)]
        username: String,
    },
    /// Reset a user's MFA enrollment and revoke their sessions.
    ResetMfa {
        #[arg(long)]
        clinic: String,
        #[arg(long)]
        username: String,
    },
    /// Set a temporary password (printed once) and revoke the user's sessions; signed in with
    /// it, the user can do nothing but choose a new one.
    ResetPassword {
        #[arg(long)]
        clinic: String,
        #[arg(long)]
        username: String,
    },
}

#[derive(Subcommand)]
enum ImagingCommand {
    /// Apply the tier policy now: move originals whose age calls for a colder tier; prints what
    /// moved (exit 1 if any move failed).
    Tier {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check every tenant's hash chain and the signed checkpoints; exit 1 on any problem.
    Verify {
        #[arg(long)]
        json: bool,
    },
    /// Write a signed checkpoint of every tenant's chain head.
    Checkpoint,
}

/// Entry point of the `clinic` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(dispatch(cli.command, config)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.filter)
        .unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log.json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// A password hashed for storage (argon2 on the blocking pool).
async fn hashed(password: &str) -> anyhow::Result<passwords::NewHash> {
    passwords::NewHash::of(password, std::time::Duration::from_secs(60))
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.detail))
}

/// An operator connection: the admin URL (owner of the schema, sees every tenant).
async fn admin_db(config: &Config) -> anyhow::Result<Db> {
    let url = config.admin_database_url();
    Db::migrate(&url).await?;
    Db::connect(&url, 4, None).await
}

async fn clinic_id(db: &Db, slug: &str) -> anyhow::Result<ClinicId> {
    db.clinic_id_by_slug(slug)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no clinic with slug {slug}"))
}

fn operator_event(clinic: &ClinicId, action: Action, user: &str) -> AuditEvent {
    let mut e = AuditEvent::new(clinic.clone(), action, "user").resource(user);
    e.actor_role = Some("operator_cli".into());
    e.purpose = Some("operations".into());
    e
}

async fn dispatch(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    let now = SystemClock.now_ms();
    match command {
        Command::Serve { demo } => serve(config, demo).await?,
        Command::Migrate => {
            Db::migrate(&config.admin_database_url()).await?;
            println!("migrations applied");
        }
        Command::Tenant {
            command: TenantCommand::Add { slug, name },
        } => {
            let db = admin_db(&config).await?;
            let id = clinics::create(&db, &slug, &name, now).await?;
            println!("clinic {slug} created: {id}");
        }
        Command::User { command } => return user_command(command, &config, now).await,
        Command::Audit {
            command: AuditCommand::Verify { json },
        } => {
            let db = admin_db(&config).await?;
            // A separate checkpoint key must already exist: a fresh one would verify nothing.
            let keys = match &config.audit.checkpoint_key_path {
                Some(path) => KeyRing::load(path)?,
                None => KeyRing::open_or_create(&config.key_file())?,
            };
            let report = audit::verify(&db, &keys, &config.checkpoint_file()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "{} clinics, {} events, {} checkpoints: {}",
                    report.clinics,
                    report.events,
                    report.checkpoints,
                    if report.ok() {
                        "ok"
                    } else {
                        "TAMPERING DETECTED"
                    }
                );
                for p in &report.problems {
                    println!("  {p}");
                }
            }
            if !report.ok() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Audit {
            command: AuditCommand::Checkpoint,
        } => {
            let db = admin_db(&config).await?;
            let keys = KeyRing::open_or_create(&config.checkpoint_key_file())?;
            let written = audit::checkpoint(&db, &keys, now, &config.checkpoint_file()).await?;
            for cp in &written {
                println!(
                    "checkpoint clinic {} seq {} head {}",
                    cp.clinic_id, cp.seq, cp.head
                );
            }
            println!(
                "{} checkpoints written to {}",
                written.len(),
                config.checkpoint_file().display()
            );
        }
        Command::AccessReview { stale_days, json } => {
            let db = admin_db(&config).await?;
            let review =
                access_review::run(&db, now, stale_days, config.sessions.idle_timeout_secs).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&review)?);
            } else {
                print!("{}", access_review::render(&review));
            }
            if review.has_violations() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Imaging {
            command: ImagingCommand::Tier { json },
        } => {
            let db = admin_db(&config).await?;
            let keys = KeyRing::open_or_create(&config.key_file())?;
            let images = crate::domains::images::Images::open(&config, &keys).await?;
            let report = crate::domains::images::apply_tiers(&db, &images, now).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "{} originals examined, {} moved, {} failed",
                    report.examined,
                    report.moved.values().sum::<u64>(),
                    report.failed
                );
                for (step, n) in &report.moved {
                    println!("  {step}: {n}");
                }
            }
            if report.failed > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Permissions => print!(
            "{}",
            crate::platform::authz::matrix_markdown(&app::all_routes().specs())
        ),
        Command::Openapi => println!(
            "{}",
            serde_json::to_string_pretty(&crate::platform::openapi::document(
                &app::all_routes().specs()
            ))?
        ),
    }
    Ok(ExitCode::SUCCESS)
}

async fn user_command(command: UserCommand, config: &Config, now: i64) -> anyhow::Result<ExitCode> {
    let db = admin_db(config).await?;
    let keys = KeyRing::open_or_create(&config.key_file())?;
    let (slug, username) = match &command {
        UserCommand::Add {
            clinic, username, ..
        }
        | UserCommand::Disable { clinic, username }
        | UserCommand::ResetMfa { clinic, username }
        | UserCommand::ResetPassword { clinic, username } => (clinic.clone(), username.clone()),
    };
    let clinic = clinic_id(&db, &slug).await?;
    let mut tx = db.tenant_tx(&clinic, now).await?;
    match command {
        UserCommand::Add {
            role,
            display_name,
            locations,
            ..
        } => {
            let role = Role::parse(&role).ok_or_else(|| anyhow::anyhow!("unknown role {role}"))?;
            let locations: Vec<LocationId> = locations
                .iter()
                .map(|l| {
                    LocationId::parse(l).ok_or_else(|| anyhow::anyhow!("{l} is not a location id"))
                })
                .collect::<anyhow::Result<_>>()?;
            // The operator gets a link to deliver, as an administrator does: no one but the
            // account's holder ever knows its password.
            let password = hashed(&passwords::generate(|b| keys.random(b))).await?;
            let display = display_name.unwrap_or_else(|| username.clone());
            let id = users::create(
                &mut tx,
                &clinic,
                now,
                &users::NewUser {
                    username: &username,
                    display_name: &display,
                    role,
                    password: &password,
                    locations: &locations,
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.detail))?;
            tx.audit(operator_event(&clinic, Action::UserCreate, id.as_str()))
                .await?;
            let link = crate::domains::identity::enrollment::issue(
                &mut tx,
                &keys,
                config.login.enrollment_link_ttl_secs,
                &clinic,
                &id,
                None,
                now,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.detail))?;
            tx.audit(operator_event(
                &clinic,
                Action::EnrollmentLinkIssue,
                id.as_str(),
            ))
            .await?;
            tx.commit().await?;
            println!(
                "user {username} ({}) created: {id}\nenrollment link for them (works once, until {}): {}",
                role.as_str(),
                link.expires_at,
                link.url
            );
        }
        UserCommand::Disable { .. } => {
            let user = users::by_username(&mut tx, &clinic, &username)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no user {username}"))?;
            let revoked = users::disable(&mut tx, &user.user_id(), now).await?;
            tx.audit(operator_event(&clinic, Action::UserDisable, &user.id))
                .await?;
            tx.commit().await?;
            println!("user {username} disabled; {revoked} sessions revoked");
        }
        UserCommand::ResetMfa { .. } => {
            let user = users::by_username(&mut tx, &clinic, &username)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no user {username}"))?;
            let revoked = users::reset_mfa(&mut tx, &user.user_id(), now).await?;
            tx.audit(operator_event(&clinic, Action::MfaReset, &user.id))
                .await?;
            tx.commit().await?;
            println!(
                "user {username}: MFA reset; {revoked} sessions revoked; they enroll again at next sign-in"
            );
        }
        UserCommand::ResetPassword { .. } => {
            let user = users::by_username(&mut tx, &clinic, &username)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no user {username}"))?;
            let password = passwords::generate(|b| keys.random(b));
            users::set_temporary_password(&mut tx, &user.user_id(), &hashed(&password).await?, now)
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.detail))?;
            tx.audit(
                operator_event(&clinic, Action::PasswordChange, &user.id)
                    .detail("temporary password set by operator"),
            )
            .await?;
            tx.commit().await?;
            println!(
                "user {username}: sessions revoked; temporary password (shown once; they must change it at sign-in): {password}"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn serve(config: Config, seed_demo: bool) -> anyhow::Result<()> {
    let listen = config.listen;
    let state = app::open(config).await?;
    if seed_demo {
        match demo::seed(&state).await? {
            Some(d) => println!("{}", demo::print_logins(&d)),
            None => println!(
                "demo practice already seeded; its logins were printed when it was created"
            ),
        }
    }
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "listening");
    println!("clinic listening on http://{}", listener.local_addr()?);
    app::run(listener, state, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}
