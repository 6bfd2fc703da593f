//! Headless Debian chromium driven over WebDriver (chromedriver), with the
//! raw protocol on the small HTTP client: real pointer moves, drags, typing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::http::request;

/// Generous guard against hangs only; nothing asserts on elapsed time.
const HANG_GUARD: Duration = Duration::from_secs(120);

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub struct Browser {
    driver: Child,
    addr: String,
    session: String,
    profile: PathBuf,
}

/// True when chromium and chromedriver are installed. Without them the UI
/// tests say they were skipped; under CI (`HEAPSCOPE_REQUIRE_ROOT=1`, set
/// by `cargo xtask test` with CI=true) a skip is a failure.
pub fn browser_or_skip(test: &str) -> bool {
    let have = Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if !have {
        if std::env::var("HEAPSCOPE_REQUIRE_ROOT").as_deref() == Ok("1") {
            panic!("{test}: needs {CHROMIUM} and {CHROMEDRIVER} (cargo xtask setup installs them)");
        }
        eprintln!("SKIPPED {test}: needs chromium and chromium-driver (`cargo xtask setup`)");
    }
    have
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Browser {
    /// Starts chromedriver and a headless chromium with a fresh profile.
    pub fn start(profile: &Path) -> Browser {
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let addr = format!("127.0.0.1:{port}");
        let start = Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(start.elapsed() < HANG_GUARD, "chromedriver never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_dir_all(profile);
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--window-size=1440,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let mut b = Browser {
            driver,
            addr,
            session: String::new(),
            profile: profile.to_path_buf(),
        };
        let v = b.cmd("POST", "/session", Some(caps));
        b.session = v["sessionId"].as_str().expect("session id").to_string();
        b
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string());
        let r = request(
            method,
            &self.addr,
            path,
            &[],
            body.as_deref().map(str::as_bytes),
        );
        let v = r.json();
        assert_eq!(r.status, 200, "webdriver {method} {path}: {v}");
        v["value"].clone()
    }

    fn s(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    pub fn goto(&self, url: &str) {
        self.cmd("POST", &self.s("/url"), Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body; `arguments` available) in the page.
    pub fn js(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            &self.s("/execute/sync"),
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Polls `expr` until it is truthy; returns its value.
    pub fn wait(&self, expr: &str, what: &str) -> Value {
        let start = Instant::now();
        loop {
            let v = self.js(&format!("return ({expr});"));
            if !(v.is_null() || v == false || v == 0 || v == "") {
                return v;
            }
            if start.elapsed() > HANG_GUARD {
                let err = self.js("return document.getElementById('error').textContent");
                panic!("page never showed {what} (page error: {err})");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The viewport centre of the first element matching `css`.
    pub fn centre(&self, css: &str) -> (f64, f64) {
        let v = self.js(&format!(
            "const r = document.querySelector({css:?}).getBoundingClientRect(); \
             return [r.left + r.width / 2, r.top + r.height / 2];"
        ));
        (v[0].as_f64().expect("x"), v[1].as_f64().expect("y"))
    }

    fn actions(&self, steps: Vec<Value>) {
        let body = json!({"actions": [{
            "type": "pointer", "id": "mouse",
            "parameters": {"pointerType": "mouse"},
            "actions": steps,
        }]});
        self.cmd("POST", &self.s("/actions"), Some(body));
        self.cmd("DELETE", &self.s("/actions"), None);
    }

    fn moved(x: f64, y: f64) -> Value {
        json!({"type": "pointerMove", "duration": 50, "origin": "viewport",
               "x": x.round() as i64, "y": y.round() as i64})
    }

    /// Moves the real pointer over a point of the viewport.
    pub fn hover(&self, x: f64, y: f64) {
        self.actions(vec![Self::moved(x, y)]);
    }

    pub fn click(&self, x: f64, y: f64) {
        self.actions(vec![
            Self::moved(x, y),
            json!({"type": "pointerDown", "button": 0}),
            json!({"type": "pointerUp", "button": 0}),
        ]);
    }

    /// Presses at (x0, y), moves to (x1, y), releases.
    pub fn drag(&self, x0: f64, x1: f64, y: f64) {
        self.actions(vec![
            Self::moved(x0, y),
            json!({"type": "pointerDown", "button": 0}),
            Self::moved((x0 + x1) / 2.0, y),
            Self::moved(x1, y),
            json!({"type": "pointerUp", "button": 0}),
        ]);
    }

    /// Types into the first element matching `css`.
    pub fn type_into(&self, css: &str, text: &str) {
        let el = self.cmd(
            "POST",
            &self.s("/element"),
            Some(json!({"using": "css selector", "value": css})),
        );
        let id = el[ELEMENT].as_str().expect("element id").to_string();
        self.cmd(
            "POST",
            &self.s(&format!("/element/{id}/value")),
            Some(json!({ "text": text })),
        );
    }

    /// Saves a PNG of the viewport.
    pub fn screenshot(&self, path: &Path) {
        let v = self.cmd("GET", &self.s("/screenshot"), None);
        let png = base64(v.as_str().expect("base64 PNG"));
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = request("DELETE", &self.addr, &path, &[], None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        kill_browsers_using(&self.profile);
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Kills the chromium processes started with `profile` as their user data
/// directory (left behind when the session could not be ended cleanly):
/// only ours, found by the unique directory in their command line.
fn kill_browsers_using(profile: &Path) {
    let needle = format!("--user-data-dir={}", profile.display());
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if cmdline.split(|b| *b == 0).any(|a| a == needle.as_bytes()) {
            // SAFETY: kill(2) on a pid read from /proc; at worst it has exited.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// Where the UI tests save screenshots: `target/heapscope-ui/`.
pub fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/heapscope-ui")
}
