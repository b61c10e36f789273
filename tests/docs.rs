//! The five-minute pages (`guest-sdk/README.md` for Rust, `guest-sdk/js/README.md`,
//! `guest-sdk/python/README.md`), each followed to the letter in a copy of the repository: every shell block marked `<!-- docs-test: run -->` runs as written (with the
//! real `drover-host` on `PATH`, against a real host on the copy's agent directory), and every
//! code block marked `<!-- docs-test: <path> -->` must be exactly the file the steps before it
//! wrote. A page that drifts from what the commands do fails here. The JavaScript and Python
//! builds use the tools the test build installed (`DROVER_JS_BUILD`, `DROVER_PYTHON`, which the
//! pages' first step sets up by hand).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use drover_test_support::{HostProcess, host_args};
use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_drover-host");

/// How long a freshly built agent may take to load (to compile, the first time).
const LOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(180);

/// A block of the page the test acts on.
#[derive(Debug)]
enum Block {
    /// Shell commands to run.
    Run(String),
    /// What a file must hold.
    File(PathBuf, String),
}

/// The marked blocks of a Markdown page, in order.
fn marked_blocks(page: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut lines = page.lines();
    while let Some(line) = lines.next() {
        let Some(tag) = line
            .trim()
            .strip_prefix("<!-- docs-test:")
            .and_then(|t| t.strip_suffix("-->"))
            .map(str::trim)
        else {
            continue;
        };
        let fence = lines.next().unwrap_or_default();
        assert!(
            fence.starts_with("```"),
            "a marked block starts with a fence: {fence}"
        );
        let mut text = String::new();
        for line in lines.by_ref() {
            if line.starts_with("```") {
                break;
            }
            text.push_str(line);
            text.push('\n');
        }
        blocks.push(match tag {
            "run" => Block::Run(text),
            path => Block::File(PathBuf::from(path), text),
        });
    }
    blocks
}

/// Copies the files git tracks in `repo` to `to`.
fn copy_tracked(repo: &Path, to: &Path) {
    let out = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(repo)
        .output()
        .expect("git ls-files (the docs test copies the repository's tracked files)");
    assert!(out.status.success(), "git ls-files failed");
    for file in out.stdout.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        let relative = Path::new(std::str::from_utf8(file).expect("a UTF-8 path"));
        let source = repo.join(relative);
        if !source.is_file() {
            continue; // deleted in the work tree
        }
        let target = to.join(relative);
        std::fs::create_dir_all(target.parent().expect("a parent")).expect("mkdir");
        std::fs::copy(&source, &target).expect("copy");
    }
}

/// The agent types a host has loaded.
async fn types(url: &str) -> Vec<String> {
    let body: Value = reqwest::get(format!("{url}/v1/types"))
        .await
        .expect("types")
        .json()
        .await
        .expect("json");
    body["types"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["id"].as_str().map(str::to_string))
        .collect()
}

/// Follows the page at `page` (relative to the repository) in a copy of the repository, and
/// checks that what its commands printed holds each of `expected`.
async fn follow(page: &str, expected: &[&str]) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository");
    let page = std::fs::read_to_string(repo.join(page)).expect("the page");
    let blocks = marked_blocks(&page);
    assert!(
        blocks.iter().filter(|b| matches!(b, Block::Run(_))).count() >= 3,
        "{blocks:?}"
    );

    let copy = tempfile::tempdir().expect("dir");
    let root = copy.path();
    copy_tracked(repo, root);
    // `drover-host` on PATH is the binary under test.
    let bin = root.join(".bin");
    std::fs::create_dir(&bin).expect("bin");
    std::os::unix::fs::symlink(EXE, bin.join("drover-host")).expect("symlink");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // The agents' dependencies are compiled already, in the test build's target directory.
    let target_dir = Path::new(drover_test_support::ECHO)
        .ancestors()
        .nth(3)
        .expect("the agents' target directory");

    let data = tempfile::tempdir().expect("data");
    let host = HostProcess::start(
        EXE,
        &host_args(&root.join("agents"), data.path(), "var", None),
        &[],
    );

    let mut transcript = String::new();
    for block in &blocks {
        match block {
            Block::Run(commands) => {
                let out = Command::new("bash")
                    .args(["-euo", "pipefail", "-c", commands])
                    .current_dir(root)
                    .env("PATH", &path)
                    .env("DROVER_URL", &host.url)
                    .env("CARGO_TARGET_DIR", target_dir)
                    .env("DROVER_JS_BUILD", drover_test_support::JS_BUILD)
                    .env("DROVER_PYTHON", drover_test_support::PYTHON)
                    .env_remove("DROVER_AGENTS_DIR")
                    .output()
                    .expect("bash");
                let stdout = String::from_utf8_lossy(&out.stdout);
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert!(
                    out.status.success(),
                    "the page's commands\n{commands}failed ({}):\n{stdout}\n{stderr}\n{}",
                    out.status,
                    host.log_text()
                );
                transcript.push_str(&stdout);
                // What a reader waits for before the next step: the host loads what was built.
                // (`built <name> (<language>) in …`; the SDKs' own tools say `built <path>`.)
                for built in stdout
                    .lines()
                    .filter_map(|l| l.strip_prefix("built "))
                    .filter_map(|l| l.split_once(" ("))
                    .map(|(name, _)| name)
                    .filter(|name| !name.contains('/'))
                {
                    // A component with a JavaScript engine or CPython inside takes a while to
                    // compile the first time.
                    let deadline = Instant::now() + LOAD_WAIT;
                    while !types(&host.url).await.iter().any(|t| t == built) {
                        assert!(
                            Instant::now() < deadline,
                            "the host never loaded {built}: {}",
                            host.log_text()
                        );
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
            Block::File(file, shown) => {
                let written = std::fs::read_to_string(root.join(file))
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                assert_eq!(
                    &written,
                    shown,
                    "the page shows {} otherwise than the steps write it",
                    file.display()
                );
            }
        }
    }
    eprintln!("{transcript}");
    // What the page says the steps print.
    for line in expected {
        assert!(transcript.contains(line), "{line:?} in:\n{transcript}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_five_minute_page_works_as_written() {
    follow(
        "guest-sdk/README.md",
        &[
            "created agents/greeter and agents/greeter.toml",
            "built greeter (Rust)",
            r#"output  {"greeting":"Hello, Ada!"}"#,
            "built watcher (Rust)",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_five_minute_page_works_as_written() {
    if !drover_test_support::other_languages("the_typescript_five_minute_page_works_as_written") {
        return;
    }
    follow(
        "guest-sdk/js/README.md",
        &[
            "created agents/greeter-js and agents/greeter-js.toml",
            "built greeter-js (TypeScript)",
            r#"output  {"greeting":"Hello, Ada!"}"#,
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_five_minute_page_works_as_written() {
    if !drover_test_support::other_languages("the_python_five_minute_page_works_as_written") {
        return;
    }
    follow(
        "guest-sdk/python/README.md",
        &[
            "created agents/greeter-py and agents/greeter-py.toml",
            "built greeter-py (Python)",
            r#"output  {"greeting":"Hello, Ada!"}"#,
        ],
    )
    .await;
}
