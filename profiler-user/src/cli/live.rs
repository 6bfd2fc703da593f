//! `attach` and `run`: a live session, then its report and files.

use std::io::Write as _;

use anyhow::{bail, Context as _, Result};

use super::args::CommonArgs;
use super::note;
use super::outputs::{write_file, Outputs};
use super::terminal::Terminal;
use super::{AttachArgs, RunArgs};
use crate::analysis::age::older_than_by_site;
use crate::launch;
use crate::probes::{self, target, Probes};
use crate::process::cgroup;
use crate::profile::Metric;
use crate::report::{self, ReportOptions};
use crate::session::output::Outputs as SessionOutputs;
use crate::session::publish::PushOutput;
use crate::session::{self, SessionResult};
use crate::timeline::Window;
use crate::views;

pub(super) async fn attach(args: AttachArgs) -> Result<i32> {
    args.common.check_outputs()?;
    // Bad sizes fail before the process is touched.
    args.common.map_sizes()?;
    let custom = args.common.custom_allocator()?;
    let skip = !args.common.no_prologue_skip;
    let cgroup_dir = match (&args.cgroup, &args.container) {
        (Some(path), _) => Some(cgroup::resolve(path)?),
        (None, Some(id)) => Some(cgroup::find_container(id)?),
        (None, None) => None,
    };
    // The processes and their allocators: every one given must be
    // profilable; a cgroup's members that are not (a Go program, a static
    // binary) are said and left out.
    let mut phases = crate::phases::Phases::new("attach");
    // From the first read of the target to the links: reading its symbols
    // and verifying the programs is CPU work that a saturating target
    // starves (see `process::priority`).
    let raised = raise_priority(&args.common);
    let mut targets = Vec::new();
    match &cgroup_dir {
        None => {
            for &p in &args.pid {
                probes::preflight(p)?;
            }
            for &p in &args.pid {
                targets.push((p, target::discover(p, skip, &custom)?));
            }
        }
        Some(dir) => {
            let members = cgroup::procs(dir)?;
            if members.is_empty() {
                return Err(cgroup::CgroupError::Empty { path: dir.clone() }.into());
            }
            note(&format!(
                "cgroup {}: {} processes",
                dir.display(),
                members.len()
            ));
            for p in members {
                match probes::preflight(p).and_then(|()| target::discover(p, skip, &custom)) {
                    Ok(t) => targets.push((p, t)),
                    Err(e) => note(&format!("pid {p} of the cgroup is left out: {e}")),
                }
            }
            if targets.is_empty() {
                bail!(
                    "no process of cgroup {} can be profiled (see above)",
                    dir.display()
                );
            }
        }
    }
    let Some((pid, target)) = targets.first().cloned() else {
        bail!("no process given: use `heapscope attach -p PID[,PID...]` or --cgroup PATH");
    };
    let pids: Vec<u32> = targets.iter().map(|(p, _)| *p).collect();
    phases.mark("process discovery, maps and symbols");
    // Serves until this function returns (after the report).
    let (_server, feed) = super::serve::start_live(&args.common, Some(pid))?;
    phases.mark("server start");
    let mut probes = attach_probes(pid, &target, &args.common, false)?;
    for (p, other) in &targets[1..] {
        probes
            .add_process(*p, Some(other))
            .with_context(|| format!("attaching to pid {p}"))?;
    }
    let raised_how = raised.as_ref().map(|r| r.how);
    phases.mark("probes (load and links, detailed above)");
    let mut opts = args.common.session_options()?;
    opts.cgroup = cgroup_dir.clone().map(|dir| session::CgroupWatch {
        dir,
        skip_prologue: skip,
        custom: custom.clone(),
    });
    opts.allocator = target.headline();
    opts.allocator_notes = allocator_notes(&target);
    opts.glibc_footprint = target.is_glibc();
    opts.block_homes = target.custom.is_empty();
    let outputs = outputs(
        &args.common,
        Some(announce(pid, &target, &probes, raised_how)),
        feed,
    )?;
    // With a cgroup, the session lasts while the cgroup has processes.
    let alive = || match &cgroup_dir {
        Some(dir) => cgroup::procs(dir).is_ok_and(|m| !m.is_empty()),
        None => pids.iter().any(|&p| session::process_alive(p)),
    };
    let mut result = session::run(probes, &opts, alive, outputs, raised).await?;
    let mut phases = crate::phases::Phases::new("stop");
    super::hints::after_session(&mut result.timeline);
    finish(&args.common, &result)?;
    phases.mark("report and files");
    Ok(0)
}

pub(super) async fn run_command(args: RunArgs) -> Result<i32> {
    let Some((cmd, rest)) = args.command.split_first() else {
        bail!("no command given: use `heapscope run -- COMMAND [ARGS...]`");
    };
    args.common.check_outputs()?;
    // Bad sizes fail before the process is touched.
    args.common.map_sizes()?;
    let program = launch::resolve_program(cmd).with_context(|| {
        format!("cannot run {cmd}: not an executable file or not found on PATH")
    })?;
    if !probes::has_bpf_privileges() {
        return Err(probes::ProbeError::NotPrivileged.into());
    }
    let custom = args.common.custom_allocator()?;
    let target = target::for_command(&program, !args.common.no_prologue_skip, &custom)?;
    // Serves until this function returns (after the report).
    let (_server, feed) = super::serve::start_live(&args.common, None)?;
    let child = launch::spawn_suspended(&program, cmd, rest)
        .with_context(|| format!("cannot start {}", program.display()))?;
    let pid = child.pid;
    // After the fork: the command keeps its own priority.
    let raised = raise_priority(&args.common);
    // On error the child is dropped at the gate: it exits without running.
    let mut probes = attach_probes(pid, &target, &args.common, true)?;
    // Its memory map is read as it exits, however short it runs.
    if let Err(why) = probes.hold_at_exit() {
        note(&format!(
            "{} (pid {pid}) is not held at its exit ({why}): if it ends before its memory \
             map is read, its frames stay bare addresses",
            program.display()
        ));
    }
    // The command has not run yet: nothing to miss before the session starts,
    // so count from its first instruction.
    probes.arm()?;
    let raised_how = raised.as_ref().map(|r| r.how);
    {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "{}",
            announce(pid, &target, &probes, raised_how)
        );
    }
    let mut opts = args.common.session_options()?;
    opts.allocator = target.headline();
    opts.allocator_notes = allocator_notes(&target);
    opts.glibc_footprint = target.is_glibc();
    opts.block_homes = target.custom.is_empty();
    child
        .release()
        .with_context(|| format!("cannot release {} (pid {pid})", program.display()))?;
    // Once known, the child's end: its exit code, or why it is unknown.
    let mut ended: Option<std::io::Result<i32>> = None;
    let outputs = outputs(&args.common, None, feed)?;
    let mut result = session::run(
        probes,
        &opts,
        || {
            if ended.is_none() {
                ended = launch::try_wait(pid).transpose();
            }
            ended.is_none()
        },
        outputs,
        raised,
    )
    .await?;
    if ended.is_none() {
        ended = launch::try_wait(pid).transpose();
    }
    super::hints::after_session(&mut result.timeline);
    finish(&args.common, &result)?;
    match ended {
        Some(Ok(code)) => {
            note(&format!("{} exited with code {code}", program.display()));
            Ok(code)
        }
        // The command's exit status is never hidden behind a 0.
        Some(Err(e)) => Err(anyhow::Error::new(e).context(format!(
            "cannot tell how {} (pid {pid}) ended",
            program.display()
        ))),
        None => {
            note(&format!(
                "detached; {} (pid {pid}) runs on",
                program.display()
            ));
            Ok(0)
        }
    }
}

/// What the session reports to: the push (with `--push`), then the terminal
/// (which shows the push counters, so it comes after it).
fn outputs(
    common: &CommonArgs,
    announce: Option<String>,
    live: Option<crate::server::LiveFeed>,
) -> Result<SessionOutputs> {
    let mut outputs = SessionOutputs::default();
    if let Some(feed) = live {
        outputs.push(feed);
    }
    let mut terminal = Terminal::new(announce, !common.quiet);
    if let Some(opts) = common.push_options()? {
        let (push, status) = PushOutput::new(opts);
        outputs.push(push);
        terminal.push = Some(status);
    }
    outputs.push(terminal);
    Ok(outputs)
}

/// Unless `--no-attach-priority`, keeps heapscope's attach ahead of a
/// target that saturates the CPUs (see `process::priority`) until the guard
/// is dropped; without the privilege it runs on at its priority.
fn raise_priority(common: &CommonArgs) -> Option<crate::process::priority::Raised> {
    if common.no_attach_priority {
        return None;
    }
    match crate::process::priority::raise() {
        Ok(r) => Some(r),
        Err(e) => {
            note(&format!(
                "note: cannot raise heapscope's priority to nice {} while attaching ({e}): \
                 under a target that saturates the CPUs, attaching may take long",
                crate::process::priority::NICE
            ));
            None
        }
    }
}

/// Loads and attaches the probes with the options of `common`.
fn attach_probes(
    pid: u32,
    target: &target::AllocatorTarget,
    common: &CommonArgs,
    hold_exit: bool,
) -> Result<Probes> {
    let capture = probes::CaptureConfig {
        hold_exit,
        ..common.capture()?
    };
    Ok(Probes::attach(
        pid,
        target,
        common.map_sizes()?,
        capture,
        common.probe_mode(),
    )?)
}

/// The "attached" line, printed once the session has read the target's map.
fn announce(
    pid: u32,
    target: &target::AllocatorTarget,
    probes: &Probes,
    raised: Option<crate::process::priority::How>,
) -> String {
    let how = match &probes.method {
        probes::AttachMethod::Multi { links } => format!("{links} uprobe_multi links"),
        probes::AttachMethod::Single { why } => format!("one at a time: {why}"),
    };
    let mut lines = vec![
        format!(
            "heapscope: attached {} probes ({how}, {:.0} ms) to pid {pid}; Ctrl-C to stop",
            probes.probe_count(),
            probes.attach_time.as_secs_f64() * 1e3
        ),
        format!("heapscope: {}", target.headline()),
    ];
    lines.extend(
        allocator_notes(target)
            .iter()
            .map(|n| format!("heapscope: {n}")),
    );
    if let Some(how) = raised {
        // Said, because while it lasts the target (and the machine) waits;
        // after the allocator's warnings, which belong in the first lines.
        lines.push(format!(
            "heapscope: attached at {}, as detaching will be (ahead of a target that \
             saturates the CPUs; --no-attach-priority: not)",
            how.describe()
        ));
    }
    lines.join("\n")
}

/// What the first lines and the report say beyond the allocator line: what
/// heapscope cannot see, and what its single-stepped probes cost.
fn allocator_notes(target: &target::AllocatorTarget) -> Vec<String> {
    let mut notes: Vec<String> = target
        .unseen
        .iter()
        .map(|u| format!("WARNING: {u}"))
        .collect();
    let stepped = target.stepped();
    if !stepped.is_empty() {
        notes.push(format!(
            "note: {} entry points have no probe placement the kernel can emulate: each of their \
             calls costs the target ~10 µs instead of ~1 µs (single-stepped): {}; if one of \
             them is hot, keep the session short (--duration)",
            stepped.len(),
            stepped.join(", ")
        ));
    }
    notes
}

/// Writes the report on stdout (the one `heapscope report` gives on the
/// recording), then the requested files, each independently: a closed pipe
/// or a full disk for one output costs none of the others. The session's
/// terminal output has printed the stop reason and the warnings already.
fn finish(common: &CommonArgs, result: &SessionResult) -> Result<()> {
    let labels = views::Labels {
        lines: common.lines,
    };

    let opts = ReportOptions {
        top: common.top,
        window: Window::ALL,
        json: false,
        labels,
    };
    let mut outputs = Outputs::default();
    outputs.write("the report on stdout", || {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        report::write(&result.timeline, &result.meta, &opts, &mut out)?;
        // The guard's windows are in the report above; a guard that never
        // completed a window is said here.
        if let (Some(o), None) = (&result.overhead, result.timeline.guard()) {
            views::overhead::write_overhead(o, &mut out)?;
        }
        write_ages(common, result, &mut out)?;
        write_processes(result, &mut out)?;
        result.memory.write(&mut out)?;
        out.flush()?;
        Ok(())
    });
    if let Some(path) = &common.record {
        note(&format!("recorded {}", path.display()));
    }
    super::hints::missing_symbols(result.timeline.sites(), common.record.as_deref());
    let profile = result.timeline.profile_for(Window::ALL, &result.meta);
    let metric: Metric = common.metric.into();
    if let Some(path) = &common.folded {
        outputs.write("--folded", || {
            write_file(path, |f| {
                views::folded::write_folded(&profile, &views::FoldedOptions { metric, labels }, f)
                    .map_err(Into::into)
            })
        });
    }
    if let Some(path) = &common.pprof {
        // The rate at the end: the overhead guard may have sampled less.
        let rate = result.meta.sample_rate;
        let opts = super::pprof::options(
            &result.timeline,
            Window::ALL,
            &profile,
            result.start_unix_ms,
            rate,
        );
        outputs.write("--pprof", || super::pprof::write(path, &opts, &profile));
    }
    if let Some(path) = &common.svg {
        let opts = views::SvgOptions {
            metric,
            labels,
            title: format!("heapscope: pid {} ({})", profile.pid, profile.comm),
        };
        outputs.write("--svg", || {
            write_file(path, |f| {
                views::svg::write_svg(&profile, &opts, f).map_err(Into::into)
            })
        });
    }
    outputs.finish()
}

/// The live heap per process, when more than one was profiled.
fn write_processes(result: &SessionResult, out: &mut impl std::io::Write) -> Result<()> {
    if result.processes.len() < 2 {
        return Ok(());
    }
    writeln!(out)?;
    writeln!(
        out,
        "live heap per process (malloc family, exact from the live map; mappings not included):"
    )?;
    writeln!(
        out,
        "{:>8}  {:<16} {:>14} {:>10}",
        "pid", "comm", "live bytes", "blocks"
    )?;
    let (mut blocks, mut bytes) = (0u64, 0u64);
    for p in &result.processes {
        writeln!(
            out,
            "{:>8}  {:<16} {:>14} {:>10}",
            p.pid, p.comm, p.bytes, p.blocks
        )?;
        blocks += p.blocks;
        bytes += p.bytes;
    }
    writeln!(
        out,
        "{:>8}  {:<16} {:>14} {:>10}",
        "", "total", bytes, blocks
    )?;
    Ok(())
}

/// The age histogram of outstanding allocations, and with `--older-than`
/// the call sites by bytes at least that old.
fn write_ages(
    common: &CommonArgs,
    result: &SessionResult,
    out: &mut impl std::io::Write,
) -> Result<()> {
    if let Some(arenas) = &result.arenas {
        writeln!(out)?;
        // The report's per-tick table has each arena's numbers already
        // (one table): here only the call sites and the top of [heap].
        let rows_shown = result
            .timeline
            .last_arenas(crate::timeline::Window::ALL)
            .is_some();
        views::arenas::write_arenas(
            arenas,
            &result.timeline,
            result.meta.sample_rate != 0,
            rows_shown,
            out,
        )?;
    }
    if result.outstanding.is_empty() {
        return Ok(());
    }
    writeln!(out)?;
    views::age::write_age(&result.ages(), &result.timeline, common.top, out)?;
    if let Some(min) = common.older_than {
        let by_site = older_than_by_site(&result.outstanding, result.now_ns, min);
        views::age::write_older_than(&by_site, &result.timeline, min, common.top, out)?;
    }
    Ok(())
}
