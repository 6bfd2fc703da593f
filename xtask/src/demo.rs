//! `cargo xtask demo`: profile the bundled demo server by PID.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::util::{build_c, build_heapscope, run, workspace_root};

/// Starts the demo server, attaches heapscope for a few seconds with the
/// live web UI (its URL printed first), prints the report, writes a flame
/// graph and a recording, then stops the server and says how to open the
/// web UI on the recording; with `--serve` it keeps serving it until Ctrl-C.
pub fn demo(args: &[String]) -> Result<()> {
    let duration = args
        .iter()
        .position(|a| a == "--duration")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "10s".to_string());
    let heapscope = build_heapscope()?;
    let server = build_c("demo_server", &["-O2", "-g", "-fno-omit-frame-pointer"])?;
    let out_dir = workspace_root()?.join("target/demo");
    std::fs::create_dir_all(&out_dir)?;
    let svg = out_dir.join("demo.svg");
    let folded = out_dir.join("demo.folded");
    let recording = out_dir.join("demo.rec");
    // The live web UI while attached: 7878 when free, else any free port
    // (heapscope prints the URL either way).
    let listen = if std::net::TcpListener::bind("127.0.0.1:7878").is_ok() {
        "127.0.0.1:7878"
    } else {
        "127.0.0.1:0"
    };
    let keep_serving = args.iter().any(|a| a == "--serve");

    let mut child = Command::new(&server)
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", server.display()))?;
    let pid = child.id();
    eprintln!("xtask demo: started {} as pid {pid}", server.display());
    std::thread::sleep(Duration::from_millis(500));

    let mut cmd = Command::new(&heapscope);
    cmd.args([
        "attach",
        "-p",
        &pid.to_string(),
        "--duration",
        &duration,
        "--top",
        "10",
    ])
    .arg("--svg")
    .arg(&svg)
    .arg("--folded")
    .arg(&folded)
    .args(["--serve", listen, "--record"])
    .arg(&recording);
    if !is_root() {
        eprintln!("xtask demo: heapscope needs root to load eBPF; running it with sudo");
        let mut sudo = Command::new("sudo");
        sudo.arg(cmd.get_program()).args(cmd.get_args());
        cmd = sudo;
    }
    let result = run(&mut cmd);
    let _ = child.kill();
    let _ = child.wait();
    result?;
    eprintln!(
        "xtask demo: flame graph {} (open it in a browser), folded stacks {}",
        svg.display(),
        folded.display()
    );
    let serve = format!("{} serve {}", heapscope.display(), recording.display());
    if !keep_serving {
        eprintln!(
            "xtask demo: the web UI on the recording: `{serve}` (prints the URL to open; Ctrl-C stops it), \
             or `cargo xtask demo --serve`"
        );
        return Ok(());
    }
    eprintln!("xtask demo: serving the recording until Ctrl-C");
    run(Command::new(&heapscope).arg("serve").arg(&recording))
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}
