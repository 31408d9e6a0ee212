//! A Postgres server of a test's own, so an outage can be real: [`crash`]
//! stops it as a crash would (immediate shutdown: no checkpoint, crash
//! recovery from the WAL at the next start) without touching the machine's
//! server that every other test shares.
//!
//! [`crash`]: PrivatePostgres::crash

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;

use crate::bench::free_port;

/// A throwaway cluster in a temporary directory, on a free port; stopped and
/// deleted when dropped.
#[derive(Debug)]
pub struct PrivatePostgres {
    root: PathBuf,
    bin: PathBuf,
    port: u16,
    /// Postgres refuses to run as root; as root, its commands run as this user.
    run_as: Option<String>,
}

impl PrivatePostgres {
    /// Creates the cluster (`initdb`) and starts it.
    pub fn start() -> anyhow::Result<Self> {
        let bin = server_bin_dir()?;
        let port = free_port()?;
        let root = std::env::temp_dir().join(format!("hookstream-pg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&root)?;
        let run_as = if is_root()? {
            // The server's user must be able to create its data directory
            // and write its log here.
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777))?;
            Some("postgres".to_owned())
        } else {
            None
        };
        let server = Self {
            root,
            bin,
            port,
            run_as,
        };
        let data = server.data_dir();
        server.run(
            "initdb",
            &[
                "-D",
                path_str(&data)?,
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )?;
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))?;
        std::io::Write::write_all(
            &mut conf,
            format!(
                "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\nmax_connections = 200\n",
                path_str(&server.root)?
            )
            .as_bytes(),
        )?;
        server.resume()?;
        Ok(server)
    }

    /// The address the server listens on.
    pub fn address(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The server's URL without a database, for [`crate::bench::FreshDatabase`].
    pub fn server_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// Stops the server the way a crash does: every backend killed at once,
    /// nothing flushed beyond what commits already made durable.
    pub fn crash(&self) -> anyhow::Result<()> {
        self.pg_ctl(&["stop", "-m", "immediate"])
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn resume(&self) -> anyhow::Result<()> {
        let log = self.root.join("server.log");
        self.pg_ctl(&["start", "-l", path_str(&log)?, "-t", "120"])
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    fn pg_ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        let data = self.data_dir();
        let mut all = vec!["-D", path_str(&data)?, "-w", "-s"];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all)
    }

    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let program = self.bin.join(program);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&program);
                c
            }
            None => Command::new(&program),
        };
        let output = command
            .args(args)
            .current_dir(&self.root)
            .output()
            .with_context(|| format!("cannot run {}", program.display()))?;
        anyhow::ensure!(
            output.status.success(),
            "{} {} failed: {}{}",
            program.display(),
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.crash();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The newest installed server's `bin` directory (Debian keeps servers out of
/// `PATH`, under `/usr/lib/postgresql/<version>/bin`), else `PG_BIN`.
fn server_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no Postgres server under /usr/lib/postgresql; set PG_BIN to its bin directory")?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .context("no initdb under /usr/lib/postgresql/*/bin; set PG_BIN")
}

fn is_root() -> anyhow::Result<bool> {
    let output = Command::new("id").arg("-u").output()?;
    Ok(String::from_utf8_lossy(&output.stdout).trim() == "0")
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}
