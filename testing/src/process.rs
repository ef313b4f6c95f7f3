//! The coordinator's binary as a process of its own, on a fixed port so that workers find
//! it again after it is killed and started anew: for the suites that kill it (chaos, a
//! worker's outage).

use crate::{Connection, connect_as, coordinator_tls_flags, free_port, wait_for_coordinator};
use std::process::Stdio;
use tokio::process::{Child, Command};

pub struct CoordinatorProcess {
    pub port: u16,
    database_url: String,
    artifacts: tempfile::TempDir,
    /// Flags beyond listen address, database, artifacts, TLS and admin token.
    flags: Vec<String>,
    /// A command the binary runs under (`prlimit --nofile=300 --`), if any.
    launcher: Vec<String>,
    process: Option<Child>,
}

impl CoordinatorProcess {
    /// Starts it on `database_url` with extra `flags` and waits until it answers.
    pub async fn start(database_url: String, flags: &[&str]) -> CoordinatorProcess {
        CoordinatorProcess::start_under(&[], database_url, flags).await
    }

    /// Starts it as [`CoordinatorProcess::start`] does, run by `launcher` (a command
    /// and its arguments, the binary's path after them).
    pub async fn start_under(
        launcher: &[&str],
        database_url: String,
        flags: &[&str],
    ) -> CoordinatorProcess {
        let owned = |words: &[&str]| words.iter().map(|word| word.to_string()).collect();
        let mut coordinator = CoordinatorProcess {
            port: free_port(),
            database_url,
            artifacts: tempfile::tempdir().expect("temp dir"),
            flags: owned(flags),
            launcher: owned(launcher),
            process: None,
        };
        coordinator.spawn().await;
        coordinator
    }

    pub fn address(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The running process's id.
    pub fn pid(&self) -> u32 {
        self.process
            .as_ref()
            .and_then(|process| process.id())
            .expect("the coordinator is running")
    }

    /// The admin token it wrote at its first start.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.artifacts.path().join("admin.token"))
            .expect("the coordinator wrote its admin token")
    }

    /// A connection with the admin token.
    pub fn admin(&self) -> Connection {
        connect_as(&self.address(), Some(&self.admin_token()))
    }

    /// Starts the process (again, after [`CoordinatorProcess::kill`]) and waits until it
    /// answers.
    pub async fn spawn(&mut self) {
        let log = std::env::var_os("TEST_LOG").is_some();
        let binary = crate::workspace_binary("heirloom-coordinator");
        let mut command = match self.launcher.split_first() {
            Some((program, arguments)) => {
                let mut command = Command::new(program);
                command.args(arguments).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let child = command
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--database-url", &self.database_url])
            .arg("--artifacts")
            .arg(self.artifacts.path())
            .args(&self.flags)
            .args(coordinator_tls_flags())
            .arg("--admin-token-file")
            .arg(self.artifacts.path().join("admin.token"))
            .env("RUST_LOG", if log { "info" } else { "warn" })
            .stdout(if log { Stdio::inherit() } else { Stdio::null() })
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the coordinator binary");
        self.process = Some(child);
        wait_for_coordinator(&self.address(), &self.artifacts.path().join("admin.token")).await;
    }

    /// SIGKILL, and waits for it to be gone.
    pub async fn kill(&mut self) {
        let mut child = self.process.take().expect("running");
        child.start_kill().expect("kill the coordinator");
        child.wait().await.expect("it exits");
    }
}
