//! Helpers shared by the binary's integration tests: child processes killed when dropped, curl
//! with a JSON answer, and waiting until a process catches a signal.
#![allow(dead_code, clippy::unwrap_used)]

pub mod chaos;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// `nimbus` on the AWS engine at a moto server's `endpoint`: the deployment named `prefix`,
/// blobs under the S3 URL `blobs`, moto's credentials in the environment (the standard AWS chain
/// reads them there).
pub fn nimbus_on_moto(endpoint: &str, prefix: &str, blobs: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nimbus"));
    c.arg("--engine")
        .arg(format!(
            "aws://?region=us-east-1&endpoint={endpoint}&prefix={prefix}"
        ))
        .args(["--blobs", blobs])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    c
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs curl with `args`, at most `max_secs` seconds, and parses its JSON answer.
pub fn curl_json(max_secs: u32, args: &[&str]) -> serde_json::Value {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", &max_secs.to_string()])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "curl {args:?} gave {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Waits until process `pid` has a handler for signal number `signal` (the kernel's `SigCgt`
/// mask), so a signal sent now is caught rather than killing a process still starting up.
pub fn wait_until_catching(pid: u32, signal: u32) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let bit = 1u64 << (signal - 1);
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("process {pid} is gone: {e}"));
        let caught = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .unwrap_or(0);
        if caught & bit != 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} never set a handler for signal {signal}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// SIGINT's number.
pub const SIGINT: u32 = 2;
/// SIGTERM's number.
pub const SIGTERM: u32 = 15;

/// The sample photos (Debian's python3-skimage) the image tests use, and the words their labels
/// must contain.
pub const PHOTOS: &str = "/usr/lib/python3/dist-packages/skimage/data";

/// Three sample photos and the words their labels must contain.
pub const THREE_PHOTOS: &[(&str, &str)] = &[
    ("chelsea.png", "cat"),
    ("coffee.png", "espresso"),
    ("camera.png", "tripod"),
];

/// Copies `names` of [`PHOTOS`] into `dir/images` and writes `dir/expect.csv` for
/// `nimbus bench classify --expect`; the images folder.
pub fn photos(dir: &std::path::Path, names: &[(&str, &str)]) -> std::path::PathBuf {
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let mut expect = String::from("file,words\n");
    for (name, words) in names {
        std::fs::copy(std::path::Path::new(PHOTOS).join(name), images.join(name))
            .expect("python3-skimage sample photos (./scripts/test.sh installs them)");
        expect.push_str(&format!("{name},{words}\n"));
    }
    std::fs::write(dir.join("expect.csv"), expect).unwrap();
    images
}

/// `nimbus bench classify` against `url` with `requests` requests at once, each waiting as long
/// as the web tier allows (a loaded machine answers late); its command, to spawn or run.
pub fn bench_classify(url: &str, dir: &std::path::Path, requests: usize) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nimbus"));
    c.args(["bench", "classify", "--url", url])
        .args([
            "--requests",
            &requests.to_string(),
            "--concurrency",
            &requests.to_string(),
        ])
        .args(["--wait", "120"])
        .arg("--images")
        .arg(dir.join("images"))
        .arg("--expect")
        .arg(dir.join("expect.csv"));
    c
}

/// `nimbus up` on `data/nimbus.db` at any free port, run in `cwd`, with `args`; killed when
/// dropped.
pub struct Up {
    /// The process.
    pub child: Child,
    /// Its URL, without the trailing slash.
    pub url: String,
}

impl Up {
    /// Starts it and waits for the URL it prints.
    pub fn start(data: &std::path::Path, cwd: &std::path::Path, args: &[&str]) -> Self {
        use std::process::Stdio;
        let mut child = Command::new(env!("CARGO_BIN_EXE_nimbus"))
            .args([
                "--engine",
                &format!("sqlite://{}/nimbus.db", data.display()),
                "up",
                "--port",
                "0",
            ])
            .args(args)
            .current_dir(cwd)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = printed_url(&mut child);
        Self { child, url }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The URL a `nimbus web` or `nimbus up` child prints first on its standard output (piped),
/// without the trailing slash.
pub fn printed_url(child: &mut Child) -> String {
    use std::io::{BufRead, BufReader};
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout piped"))
        .read_line(&mut line)
        .unwrap();
    let url = line.trim().trim_end_matches('/').to_string();
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "nimbus printed {line:?}"
    );
    url
}

/// The most workers running at once in an `/api/v1/fleet` answer.
pub fn peak_running(fleet: &serde_json::Value) -> u64 {
    fleet["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["running"].as_u64().unwrap())
        .max()
        .unwrap_or(0)
}

/// Runs `tests/browser/SCRIPT URL SHOTS ARGS...` in headless Chromium; its output, after checking
/// it succeeded.
pub fn run_browser(script: &str, url: &str, shots: &std::path::Path, args: &[String]) -> String {
    let browser_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists() && std::path::Path::new("/usr/bin/chromium").exists(),
        "the browser tests need Debian's chromium and playwright-core: run ./scripts/test.sh, which installs them"
    );
    let out = Command::new("node")
        .arg(browser_dir.join(script))
        .arg(url)
        .arg(shots)
        .args(args)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "browser test {script} failed: {report}"
    );
    report
}
