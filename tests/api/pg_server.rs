//! A throwaway Postgres cluster of the test's own: `initdb` into a temporary folder, its own
//! loopback port, `ssl = on` with a certificate from the test's CA, and a `pg_hba.conf` that
//! accepts only TLS connections. Stopped (`pg_ctl stop -m immediate` on its own data folder) and
//! removed on drop; the machine's Postgres is never touched. As root (CI), the cluster runs as
//! the `postgres` user, since Postgres refuses to run as root.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::pki::Pki;

pub struct PgServer {
    pub port: u16,
    dir: PathBuf,
    data: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
}

impl PgServer {
    /// Starts a TLS-only cluster with `pki`'s server certificate; waits until it accepts.
    pub fn start_tls(pki: &Pki) -> PgServer {
        let bin = bin_dir();
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "sidecache-pg-{port}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let data = dir.join("data");
        std::fs::create_dir_all(&dir).expect("cluster folder");
        let as_postgres = is_root();
        let server = PgServer {
            port,
            dir,
            data,
            bin,
            as_postgres,
        };
        server.chown(&server.dir);
        server.run(
            "initdb",
            &[
                "-D".as_ref(),
                server.data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "-A".as_ref(),
                "trust".as_ref(),
                "--no-sync".as_ref(),
                "--no-instructions".as_ref(),
            ],
        );
        let (cert, key) = pki.copy_server_files(&server.data);
        set_mode(&key, 0o600);
        server.chown(&cert);
        server.chown(&key);
        let conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             ssl = on\nssl_cert_file = 'server.pem'\nssl_key_file = 'server.key'\n\
             fsync = off\nmax_connections = 40\nshared_buffers = 16MB\n",
            server.dir.display()
        );
        append(&server.data.join("postgresql.conf"), &conf);
        std::fs::write(
            server.data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 reject\n",
        )
        .expect("pg_hba.conf");
        let log = server.dir.join("postgres.log");
        server.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                server.data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "start".as_ref(),
            ],
        );
        server
    }

    /// A URL for database `db`: `sslmode` as given, and the CA file to verify against.
    pub fn url(&self, db: &str, sslmode: &str, ca: Option<&Path>) -> String {
        let mut url = format!(
            "postgres://postgres@localhost:{}/{db}?sslmode={sslmode}",
            self.port
        );
        if let Some(ca) = ca {
            url.push_str(&format!("&sslrootcert={}", ca.display()));
        }
        url
    }

    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) {
        let path = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let out = cmd.args(args).output().expect("postgres tool runs");
        assert!(
            out.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn chown(&self, path: &Path) {
        if self.as_postgres {
            let ok = Command::new("chown")
                .arg("postgres:postgres")
                .arg(path)
                .status()
                .expect("chown runs")
                .success();
            assert!(ok, "chown {}", path.display());
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let path = self.bin.join("pg_ctl");
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let _ = cmd
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The newest installed Postgres's programs (`/usr/lib/postgresql/<major>/bin` on Debian).
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("Postgres server programs under /usr/lib/postgresql")
        .filter_map(Result::ok)
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    found.sort();
    found.pop().expect("an initdb").1
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("postgresql.conf");
    f.write_all(text.as_bytes()).expect("appended");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
