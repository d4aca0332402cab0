//! `clinic serve --demo` started for a run: a fresh data directory (so the demo logins are
//! printed, and read here), a free loopback port, the server's log kept in the output directory.
//! Stopped (SIGTERM, then killed) when the run ends, also on an early return.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};

pub struct Login {
    pub username: String,
    pub password: String,
}

pub struct DemoServer {
    pub base: String,
    pub pid: u32,
    pub logins: Vec<Login>,
    /// The bearer token this server's `/metrics` answers to (`metrics.token`).
    pub metrics_token: String,
    child: tokio::process::Child,
    _data: tempfile::TempDir,
}

/// The `clinic` binary: `--clinic-bin`, else `CLINIC_BIN`, else beside this executable
/// (`target/release/clinic` when this is `target/release/loadtest`).
pub fn find_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("CLINIC_BIN") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe()?;
    let beside = me.with_file_name("clinic");
    if beside.exists() {
        return Ok(beside);
    }
    bail!(
        "no clinic binary beside {} (build it with `cargo build --release -p clinic-api`, or pass --clinic-bin)",
        me.display()
    )
}

/// 128 bits from std's randomly keyed hasher: enough for a token that lives as long as one local
/// run (no random crate for this).
fn scraper_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let half = || {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .elapsed()
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish()
    };
    format!("{:016x}{:016x}", half(), half())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Parses the logins table `clinic serve --demo` prints once.
pub fn parse_logins(text: &str) -> Vec<Login> {
    let mut out = Vec::new();
    let mut in_table = false;
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() == Some(&"username") && f.get(2) == Some(&"password") {
            in_table = true;
            continue;
        }
        if in_table && f.len() >= 3 {
            out.push(Login {
                username: f[0].to_string(),
                password: f[2].to_string(),
            });
        }
    }
    out
}

impl DemoServer {
    pub async fn start(bin: &Path, log: &Path) -> anyhow::Result<DemoServer> {
        Self::start_on(bin, log, None).await
    }

    /// [`DemoServer::start`] on the database at `database_url` (an empty PostgreSQL database;
    /// `None`: SQLite in the fresh data directory).
    pub async fn start_on(
        bin: &Path,
        log: &Path,
        database_url: Option<&str>,
    ) -> anyhow::Result<DemoServer> {
        let data = tempfile::tempdir()?;
        let port = free_port()?;
        // A fresh token per run: /metrics is closed to anyone without it.
        let metrics_token = scraper_token();
        let log_file = std::fs::File::create(log)?;
        let mut child = tokio::process::Command::new(bin)
            .args(["serve", "--demo"])
            .env("CLINIC_DATA_DIR", data.path())
            .env("CLINIC_LISTEN", format!("127.0.0.1:{port}"))
            .env("CLINIC_METRICS__TOKEN", &metrics_token)
            .env_remove("DATABASE_URL")
            .envs(database_url.map(|u| ("DATABASE_URL", u)))
            .stdout(Stdio::piped())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("server pid")?;
        let base = format!("http://127.0.0.1:{port}");
        // The logins come first on stdout; the rest of stdout is drained into the log.
        let stdout = child.stdout.take().context("server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut printed = String::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut logins = Vec::new();
        while Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(1), lines.next_line()).await {
                Ok(Ok(Some(l))) => {
                    printed.push_str(&l);
                    printed.push('\n');
                    logins = parse_logins(&printed);
                    if logins.len() >= 9 {
                        break;
                    }
                }
                Ok(_) => bail!("the server exited before printing its demo logins"),
                Err(_) => {}
            }
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        if logins.is_empty() {
            bail!("no demo logins printed within 60 s");
        }
        let http = reqwest::Client::new();
        loop {
            if http
                .get(format!("{base}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("the server did not become ready within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(DemoServer {
            base,
            pid,
            logins,
            metrics_token,
            child,
            _data: data,
        })
    }

    pub fn login(&self, username: &str) -> anyhow::Result<&Login> {
        self.logins
            .iter()
            .find(|l| l.username == username)
            .with_context(|| format!("demo login {username}"))
    }

    pub async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_printed_logins_table_is_read() {
        let text = "demo practice seeded: clinic \"demo\" (Hartwell Family Podiatry)\n\
            these logins are shown once; staff enroll an authenticator app at first sign-in\n\n\
            username         role                 password               name\n\
            owner            owner                abcDEF234ghiJKL567mn   Margaret Hartwell\n\
            dr.hartwell      provider             ZZZZyyyy2222xxxx3333   Dr. James Hartwell\n";
        let l = parse_logins(text);
        assert_eq!(l.len(), 2);
        assert_eq!(l[1].username, "dr.hartwell");
        assert_eq!(l[1].password, "ZZZZyyyy2222xxxx3333");
        assert!(parse_logins("nothing here\n").is_empty());
    }
}
