//! A real libsql server (`sqld`, installed by this crate's build script) for the tests of
//! remote databases: one process per [`Sqld`], on 127.0.0.1, a free port and a temporary data
//! directory, stopped when dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The installed `sqld`, or why there is none.
pub fn binary() -> Result<&'static Path, &'static str> {
    match env!("DROVER_TEST_SQLD") {
        "" => Err(env!("DROVER_TEST_SQLD_PROBLEM")),
        path => Ok(Path::new(path)),
    }
}

/// The installed `sqld`; without one, `None` after saying why — and a failed test under `CI`,
/// where the build must have installed it.
pub fn available(what: &str) -> Option<&'static Path> {
    match binary() {
        Ok(path) => Some(path),
        Err(problem) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "sqld is required under CI ({what}): {problem}"
            );
            eprintln!("skipping {what}: no sqld ({problem})");
            None
        }
    }
}

/// A running `sqld`.
pub struct Sqld {
    child: Child,
    address: SocketAddr,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Sqld {
    /// Starts a server on a fresh database, with no authentication. Panics without `sqld`
    /// (check [`available`] first).
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with `args` besides its data directory and address (say,
    /// `--auth-jwt-key-file`).
    pub fn start_with(args: &[&str]) -> Self {
        let binary = binary().expect("sqld is installed");
        let dir = tempfile::tempdir().expect("sqld's data dir");
        let log = dir.path().join("sqld.log");
        // A port picked by binding 0 may be taken before sqld binds it: try a few.
        for _ in 0..5 {
            let address = free_port();
            let mut child = Command::new(binary)
                .arg("--db-path")
                .arg(dir.path().join("data.sqld"))
                .arg("--http-listen-addr")
                .arg(address.to_string())
                .arg("--no-welcome")
                .args(args)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("sqld's log"))
                .spawn()
                .expect("start sqld");
            if wait_until_up(&mut child, address) {
                return Self {
                    child,
                    address,
                    _dir: dir,
                    log,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "sqld never started: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// `http://127.0.0.1:PORT`: the URL hosts open it by.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Its address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends it `signal` (`STOP`, `CONT`, `KILL`).
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status();
    }
}

impl Drop for Sqld {
    fn drop(&mut self) {
        self.signal("CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `child` answers on `address`; false if it exited first or never did.
fn wait_until_up(child: &mut Child, address: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        if TcpStream::connect_timeout(&address, Duration::from_millis(100)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// An Ed25519 key pair for a JWT-protected server, as Turso issues tokens: the public key file
/// `sqld` takes with `--auth-jwt-key-file`, and tokens signed with the private key.
pub struct JwtKey {
    key_file: PathBuf,
    pair: ring::signature::Ed25519KeyPair,
    _dir: tempfile::TempDir,
}

impl JwtKey {
    /// A fresh key pair.
    pub fn new() -> Self {
        use base64::Engine;
        use ring::signature::KeyPair;

        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("a key pair");
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
        let dir = tempfile::tempdir().expect("key dir");
        let key_file = dir.path().join("jwt.key");
        let public = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key());
        std::fs::write(&key_file, public).expect("key file");
        Self {
            key_file,
            pair,
            _dir: dir,
        }
    }

    /// The public key's file.
    pub fn key_file(&self) -> &Path {
        &self.key_file
    }

    /// A token granting full access, signed with the private key.
    pub fn token(&self) -> String {
        use base64::Engine;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let header = b64(br#"{"alg":"EdDSA","typ":"JWT"}"#);
        let claims = b64(br#"{"a":"rw"}"#);
        let signed = format!("{header}.{claims}");
        let signature = self.pair.sign(signed.as_bytes());
        format!("{signed}.{}", b64(signature.as_ref()))
    }
}

impl Default for JwtKey {
    fn default() -> Self {
        Self::new()
    }
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}
