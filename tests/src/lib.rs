//! End-to-end harness: a whole `clinic` server started in-process from its configuration (as
//! `clinic serve` does) on `127.0.0.1:0`, on the backend the environment names, and driven over
//! HTTP with a cookie-keeping client.

use std::net::SocketAddr;

use clinic_api::{AppState, Config};

pub struct Server {
    pub addr: SocketAddr,
    pub state: AppState,
    pub config: Config,
    pub dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// A configuration on a fresh database: `TEST_DATABASE_URL` (PostgreSQL admin URL; a new
/// database is created and the server runs as `clinic_app`) or, unset, embedded SQLite.
pub async fn config() -> anyhow::Result<(Config, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let mut config = Config {
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    config.listen = "127.0.0.1:0".parse()?;
    config.database.max_connections = 4;
    if let Ok(admin) = std::env::var("TEST_DATABASE_URL") {
        let name = format!("clinic_e2e_{}", uuid::Uuid::new_v4().simple());
        let server = clinic_api::platform::db::Db::connect(&admin, 1, None).await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&server.pool)
            .await?;
        server.pool.close().await;
        let url = clinic_api::testkit::with_database(&admin, &name);
        config.database.url = Some(url.clone());
        config.database.admin_url = Some(url);
    }
    Ok((config, dir))
}

impl Server {
    /// Opens the state exactly as `clinic serve` does (migrations, role check, key file) and
    /// serves it until dropped or stopped.
    pub async fn start(config: Config, dir: tempfile::TempDir) -> anyhow::Result<Self> {
        let state = clinic_api::app::open(config.clone()).await?;
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(clinic_api::run(listener, state.clone(), async move {
            let _ = rx.await;
        }));
        Ok(Self {
            addr,
            state,
            config,
            dir,
            stop: Some(tx),
            task,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops accepting, drains, and waits for the server to finish.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await??;
        Ok(())
    }
}

/// A client that keeps cookies, as a browser does.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .user_agent("clinic-e2e")
        .build()
        .expect("client")
}
