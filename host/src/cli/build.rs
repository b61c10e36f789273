//! `drover-host build`: builds the agents of the agents directory into components and installs
//! them there, so a running host hot-reloads them; `--watch` does it again on every change.
//!
//! An agent is a directory of the agents directory: a crate of the agents workspace (Rust,
//! built by one `cargo build --target wasm32-wasip2` for all of them), a module `agent.ts` or
//! `agent.js` (built with the JavaScript SDK's `build.mjs`) or a module `app.py` (built with
//! the Python SDK's `drover_sdk.build`). Each component is installed as `<name>.wasm` by
//! writing a hidden file beside it and renaming it into place, so a host never loads half a
//! file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

/// The target agents are compiled for.
const TARGET: &str = "wasm32-wasip2";

/// How long a burst of changes may go on before `--watch` builds.
const SETTLE: Duration = Duration::from_millis(300);

/// `drover-host build [<name>…]`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The agents to build (their directories' names); default: every agent in the directory.
    pub names: Vec<String>,
    /// The agents directory (for Rust agents, the agents workspace).
    #[arg(long, env = "DROVER_AGENTS_DIR", default_value = "agents")]
    pub agents: PathBuf,
    /// Where to install the components (default: the agents directory).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// The guest SDKs' directory, with `js/build.mjs` and `python/drover_sdk` (default:
    /// `guest-sdk` in the current directory or beside the agents directory).
    #[arg(long, env = "DROVER_SDK_DIR", value_name = "DIR")]
    pub sdk: Option<PathBuf>,
    /// The WIT package JavaScript and Python agents are built against (default: `wit` beside
    /// the SDKs' directory).
    #[arg(long, value_name = "DIR")]
    pub wit: Option<PathBuf>,
    /// The script that builds JavaScript and TypeScript agents (default: the SDK's
    /// `js/build.mjs`, whose tools `npm ci` installs).
    #[arg(long, env = "DROVER_JS_BUILD", value_name = "FILE")]
    pub js_build: Option<PathBuf>,
    /// The Python that builds Python agents (with `componentize-py` installed: `pip install
    /// -r guest-sdk/python/requirements.txt`).
    #[arg(
        long,
        env = "DROVER_PYTHON",
        default_value = "python3",
        value_name = "FILE"
    )]
    pub python: PathBuf,
    /// Build Rust agents with the dev profile (faster to compile, slower to run).
    #[arg(long)]
    pub debug: bool,
    /// Build, then build again whenever an agent's sources change (until interrupted).
    #[arg(long)]
    pub watch: bool,
}

/// What an agent is written in, and where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// A crate of the agents workspace.
    Rust,
    /// A JavaScript or TypeScript module.
    Js(PathBuf),
    /// A Python module.
    Py(PathBuf),
}

impl Kind {
    fn language(&self) -> &'static str {
        match self {
            Kind::Rust => "Rust",
            Kind::Js(entry) if entry.extension().is_some_and(|e| e == "ts") => "TypeScript",
            Kind::Js(_) => "JavaScript",
            Kind::Py(_) => "Python",
        }
    }
}

/// An agent's sources.
#[derive(Debug, Clone)]
struct Agent {
    /// Its directory's name: its component's file name.
    name: String,
    /// Its directory.
    dir: PathBuf,
    kind: Kind,
}

/// Builds the agents and installs them; with `--watch`, keeps doing it.
pub fn build(args: BuildArgs) -> anyhow::Result<()> {
    let agents_dir = &args.agents;
    if !agents_dir.is_dir() {
        bail!(
            "{} is not a directory: run this from the repository root, or pass --agents",
            agents_dir.display()
        );
    }
    let out = args.out.clone().unwrap_or_else(|| agents_dir.clone());
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let all = discover(agents_dir)?;
    let chosen = choose(&all, &args.names, agents_dir)?;
    let builder = Builder::new(&args, out, &chosen)?;
    let failed = builder.build(&chosen);
    if !args.watch {
        return match failed.len() {
            0 => Ok(()),
            n => bail!(
                "{n} of {} agent(s) did not build: {}",
                chosen.len(),
                failed.join(", ")
            ),
        };
    }
    builder.watch(agents_dir, &chosen)
}

/// The agents in `dir`, by name.
fn discover(dir: &Path) -> anyhow::Result<Vec<Agent>> {
    let mut agents = Vec::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        if !path.is_dir() || name.starts_with('.') || ["target", "node_modules"].contains(&&*name) {
            continue;
        }
        let kind = if path.join("Cargo.toml").is_file() {
            Kind::Rust
        } else if let Some(entry) = ["agent.ts", "agent.js"]
            .iter()
            .map(|f| path.join(f))
            .find(|p| p.is_file())
        {
            Kind::Js(entry)
        } else if path.join("app.py").is_file() {
            Kind::Py(path.join("app.py"))
        } else {
            continue;
        };
        agents.push(Agent {
            name,
            dir: path,
            kind,
        });
    }
    agents.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(agents)
}

/// The agents `names` asks for (all when it is empty), each checked: a Rust crate must build a
/// component.
fn choose(all: &[Agent], names: &[String], dir: &Path) -> anyhow::Result<Vec<Agent>> {
    let chosen: Vec<Agent> = if names.is_empty() {
        if all.is_empty() {
            bail!(
                "{} holds no agents (directories with a Cargo.toml, agent.ts, agent.js or \
                 app.py); make one with `drover-host new <name>`",
                dir.display()
            );
        }
        all.to_vec()
    } else {
        let mut chosen = Vec::new();
        for name in names {
            let agent = all.iter().find(|a| &a.name == name).with_context(|| {
                let known: Vec<&str> = all.iter().map(|a| a.name.as_str()).collect();
                format!(
                    "no agent {name:?} in {} (agents there: {})",
                    dir.display(),
                    known.join(", ")
                )
            })?;
            chosen.push(agent.clone());
        }
        chosen
    };
    for agent in chosen.iter().filter(|a| a.kind == Kind::Rust) {
        check_crate(&agent.dir)?;
    }
    Ok(chosen)
}

/// Fails unless the crate in `dir` is a `cdylib`, which is what makes cargo write a `.wasm`.
fn check_crate(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let manifest: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    let cdylib = manifest
        .get("lib")
        .and_then(|lib| lib.get("crate-type"))
        .and_then(toml::Value::as_array)
        .is_some_and(|types| types.iter().any(|t| t.as_str() == Some("cdylib")));
    if !cdylib {
        bail!(
            "{} does not make a component: an agent crate is a dynamic library, and without \
             `crate-type = [\"cdylib\"]` in its [lib] section cargo writes no .wasm. Add:\n\n\
             [lib]\ncrate-type = [\"cdylib\"]",
            path.display()
        );
    }
    Ok(())
}

/// Runs the builds.
struct Builder {
    agents_dir: PathBuf,
    out: PathBuf,
    release: bool,
    /// The JavaScript build script and the WIT package, if a JavaScript agent is to be built.
    js: Option<(PathBuf, PathBuf)>,
    /// The Python, the SDK's directory (for `PYTHONPATH`) and the WIT package, if a Python
    /// agent is to be built.
    py: Option<(PathBuf, PathBuf, PathBuf)>,
}

impl Builder {
    /// Finds what building `agents` needs, and installs the Rust target if they need it.
    fn new(args: &BuildArgs, out: PathBuf, agents: &[Agent]) -> anyhow::Result<Self> {
        let needs = |f: fn(&Kind) -> bool| agents.iter().any(|a| f(&a.kind));
        let (mut js, mut py) = (None, None);
        if needs(|k| matches!(k, Kind::Js(_) | Kind::Py(_))) {
            let sdk = match &args.sdk {
                Some(sdk) => sdk.clone(),
                None => find_sdk(&args.agents)?,
            };
            let wit = args
                .wit
                .clone()
                .unwrap_or_else(|| sdk.parent().unwrap_or(Path::new(".")).join("wit"));
            if needs(|k| matches!(k, Kind::Js(_))) {
                let script = args
                    .js_build
                    .clone()
                    .unwrap_or_else(|| sdk.join("js/build.mjs"));
                js = Some((script, wit.clone()));
            }
            if needs(|k| matches!(k, Kind::Py(_))) {
                py = Some((args.python.clone(), sdk.join("python"), wit));
            }
        }
        if needs(|k| *k == Kind::Rust) {
            ensure_target()?;
        }
        Ok(Self {
            agents_dir: args.agents.clone(),
            out,
            release: !args.debug,
            js,
            py,
        })
    }

    /// Builds and installs `agents`, saying how each went; returns the names of those that
    /// failed.
    fn build(&self, agents: &[Agent]) -> Vec<String> {
        let mut failed = Vec::new();
        let rust: Vec<&Agent> = agents.iter().filter(|a| a.kind == Kind::Rust).collect();
        if !rust.is_empty() {
            let started = Instant::now();
            match self.cargo(&rust) {
                Ok(built) => {
                    for agent in rust {
                        match built.iter().find(|(dir, _)| same_dir(dir, &agent.dir)) {
                            Some((_, wasm)) => {
                                self.report(agent, started, self.install(agent, wasm))
                            }
                            None => {
                                eprintln!("error: cargo built no component for {}", agent.name);
                                failed.push(agent.name.clone());
                            }
                        }
                    }
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    failed.extend(rust.iter().map(|a| a.name.clone()));
                }
            }
        }
        for agent in agents.iter().filter(|a| a.kind != Kind::Rust) {
            let started = Instant::now();
            let result = self.build_module(agent);
            if result.is_err() {
                failed.push(agent.name.clone());
            }
            self.report(agent, started, result);
        }
        failed
    }

    /// Says how building `agent` went.
    fn report(&self, agent: &Agent, started: Instant, result: anyhow::Result<PathBuf>) {
        match result {
            Ok(path) => {
                let size = std::fs::metadata(&path).map_or(0, |m| m.len());
                println!(
                    "built {} ({}) in {:.1} s: {} ({:.1} MiB)",
                    agent.name,
                    agent.kind.language(),
                    started.elapsed().as_secs_f64(),
                    path.display(),
                    size as f64 / f64::from(1 << 20)
                );
            }
            Err(e) => eprintln!("error: {} did not build: {e:#}", agent.name),
        }
    }

    /// Builds the Rust agents with one cargo command; returns each component built, by the
    /// directory of its crate.
    fn cargo(&self, agents: &[&Agent]) -> anyhow::Result<Vec<(PathBuf, PathBuf)>> {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .args([
                "build",
                "--target",
                TARGET,
                "--message-format=json-render-diagnostics",
            ])
            .arg("--manifest-path")
            .arg(self.agents_dir.join("Cargo.toml"));
        if self.release {
            command.arg("--release");
        }
        for agent in agents {
            command.arg("-p").arg(package_name(&agent.dir)?);
        }
        let output = command
            .stderr(Stdio::inherit())
            .stdout(Stdio::piped())
            .output()
            .context("cannot run cargo")?;
        let mut built = Vec::new();
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if message["reason"] != "compiler-artifact" {
                continue;
            }
            let Some(manifest) = message["manifest_path"].as_str() else {
                continue;
            };
            let wasm = message["filenames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str())
                .find(|f| f.ends_with(".wasm"));
            if let (Some(dir), Some(wasm)) = (Path::new(manifest).parent(), wasm) {
                built.push((dir.to_path_buf(), PathBuf::from(wasm)));
            }
        }
        if !output.status.success() {
            bail!(
                "cargo build of {} failed ({})",
                names(agents.iter().copied()),
                output.status
            );
        }
        Ok(built)
    }

    /// Copies a built component into place: a hidden file beside it, then a rename.
    fn install(&self, agent: &Agent, built: &Path) -> anyhow::Result<PathBuf> {
        let path = self.out.join(format!("{}.wasm", agent.name));
        let partial = self.out.join(format!(".{}.wasm.tmp", agent.name));
        std::fs::copy(built, &partial)
            .with_context(|| format!("cannot copy {} to {}", built.display(), partial.display()))?;
        std::fs::rename(&partial, &path).with_context(|| {
            format!("cannot rename {} to {}", partial.display(), path.display())
        })?;
        Ok(path)
    }

    /// Builds a JavaScript, TypeScript or Python agent with its SDK's build command, which
    /// installs it into place itself.
    fn build_module(&self, agent: &Agent) -> anyhow::Result<PathBuf> {
        let path = self.out.join(format!("{}.wasm", agent.name));
        let mut command = match &agent.kind {
            Kind::Rust => bail!("{} is a crate, which cargo builds", agent.name),
            Kind::Js(entry) => {
                let (script, wit) = self.js.as_ref().context("no JavaScript build script")?;
                let mut command = Command::new("node");
                command
                    .arg(script)
                    .arg(entry)
                    .arg("-o")
                    .arg(&path)
                    .arg("--wit")
                    .arg(wit);
                command
            }
            Kind::Py(entry) => {
                let (python, sdk, wit) = self.py.as_ref().context("no Python")?;
                let mut command = Command::new(python);
                command
                    .args(["-m", "drover_sdk.build"])
                    .arg(entry)
                    .arg("-o")
                    .arg(&path)
                    .arg("--wit")
                    .arg(wit)
                    .env("PYTHONPATH", sdk);
                command
            }
        };
        let program = command.get_program().to_string_lossy().into_owned();
        let status = command.status().with_context(|| match agent.kind {
            Kind::Js(_) => {
                format!("cannot run {program}: JavaScript agents need Node.js 20 or later")
            }
            _ => {
                format!("cannot run {program}: Python agents need Python 3.11 or later (--python)")
            }
        })?;
        if !status.success() {
            bail!("the {} build failed ({status})", agent.kind.language());
        }
        Ok(path)
    }

    /// Builds again whatever agent's sources change, until the process is interrupted.
    fn watch(&self, dir: &Path, agents: &[Agent]) -> anyhow::Result<()> {
        use notify::Watcher;

        let (tx, rx) = std::sync::mpsc::channel();
        let mut watcher = notify::recommended_watcher(tx).context("cannot watch for changes")?;
        watcher
            .watch(dir, notify::RecursiveMode::Recursive)
            .with_context(|| format!("cannot watch {}", dir.display()))?;
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        println!(
            "watching {} for changes to {} agent(s) (Ctrl-C stops)",
            dir.display(),
            agents.len()
        );
        loop {
            let mut changed = BTreeSet::new();
            let first = rx.recv().context("the watcher stopped")?;
            changed.extend(touched(&dir, agents, first));
            // Changes come in bursts (an editor's save, a checkout): wait for it to settle.
            while let Ok(event) = rx.recv_timeout(SETTLE) {
                changed.extend(touched(&dir, agents, event));
            }
            if changed.is_empty() {
                continue;
            }
            let again: Vec<Agent> = agents
                .iter()
                .filter(|a| changed.contains(&a.name))
                .cloned()
                .collect();
            println!("changed: {}", names(&again));
            self.build(&again);
        }
    }
}

/// The names of the agents whose sources `event` changed (not what builds write).
fn touched(dir: &Path, agents: &[Agent], event: notify::Result<notify::Event>) -> Vec<String> {
    let Ok(event) = event else {
        return Vec::new();
    };
    if event.kind.is_access() {
        return Vec::new();
    }
    event
        .paths
        .iter()
        .filter_map(|path| {
            let relative = path.strip_prefix(dir).ok()?;
            let mut parts = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy());
            let name = parts.next()?.into_owned();
            let rest: Vec<String> = parts.map(|p| p.into_owned()).collect();
            let generated = rest.iter().any(|p| {
                ["target", "node_modules", "__pycache__"].contains(&p.as_str())
                    || p.starts_with('.')
                    || p.ends_with(".wasm")
            });
            (!rest.is_empty() && !generated && agents.iter().any(|a| a.name == name))
                .then_some(name)
        })
        .collect()
}

/// The agents' names, as a list for people.
fn names<'a>(agents: impl IntoIterator<Item = &'a Agent>) -> String {
    agents
        .into_iter()
        .map(|a| a.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The package name of the crate in `dir`.
fn package_name(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let manifest: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    manifest
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(toml::Value::as_str)
        .map(str::to_string)
        .with_context(|| format!("{} has no [package] name", path.display()))
}

/// Whether two paths name the same directory.
fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The guest SDKs' directory: `guest-sdk` in the current directory or beside `agents`.
fn find_sdk(agents: &Path) -> anyhow::Result<PathBuf> {
    let beside = agents
        .canonicalize()
        .ok()
        .and_then(|a| a.parent().map(|p| p.join("guest-sdk")));
    [Some(PathBuf::from("guest-sdk")), beside]
        .into_iter()
        .flatten()
        .find(|dir| dir.join("js").is_dir() || dir.join("python").is_dir())
        .context(
            "cannot find the guest SDKs (a guest-sdk directory with js/ and python/): run this \
             from the repository root, or pass --sdk",
        )
}

/// Installs the `wasm32-wasip2` target with rustup if rustup manages this toolchain and lacks
/// it (without rustup, cargo says what is missing).
fn ensure_target() -> anyhow::Result<()> {
    let Ok(output) = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
    else {
        return Ok(());
    };
    if !output.status.success()
        || String::from_utf8_lossy(&output.stdout)
            .lines()
            .any(|l| l.trim() == TARGET)
    {
        return Ok(());
    }
    eprintln!("installing the {TARGET} target: rustup target add {TARGET}");
    let status = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .context("cannot run rustup")?;
    if !status.success() {
        bail!("`rustup target add {TARGET}` failed ({status}); Rust agents need that target");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(name: &str) -> Agent {
        Agent {
            name: name.into(),
            dir: PathBuf::from(name),
            kind: Kind::Rust,
        }
    }

    #[test]
    fn only_sources_of_known_agents_count_as_changes() {
        let dir = Path::new("/a");
        let agents = [agent("echo"), agent("chat")];
        let event = |path: &str| {
            Ok(
                notify::Event::new(notify::EventKind::Modify(notify::event::ModifyKind::Any))
                    .add_path(PathBuf::from(path)),
            )
        };
        assert_eq!(touched(dir, &agents, event("/a/echo/src/lib.rs")), ["echo"]);
        for ignored in [
            "/a/echo/target/release/echo.wasm",
            "/a/echo.wasm",
            "/a/.echo.wasm.tmp",
            "/a/echo/.agent.ts.swp",
            "/a/other/src/lib.rs",
            "/a/chat/node_modules/x.js",
            "/b/echo/src/lib.rs",
        ] {
            assert!(
                touched(dir, &agents, event(ignored)).is_empty(),
                "{ignored}"
            );
        }
    }
}
