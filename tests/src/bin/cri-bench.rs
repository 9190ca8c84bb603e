//! `cri-bench`: the CRI lifecycle benchmark behind `hack/bench` (a benchmark, not a test).
//!
//! One containerd 2.x with CRI (the tests' [`CriNode`]: a node network namespace with no route
//! out, handlers `runc` and `podnet`, pause and busybox imported) runs the same pod lifecycle
//! for both handlers, interleaved (one round = one pod per handler, the order swapped every
//! round, so drift hits both alike), after warm-up rounds that are not counted:
//!
//!   RunPodSandbox, CreateContainer, StartContainer, StopContainer, RemoveContainer,
//!   StopPodSandbox, RemovePodSandbox
//!
//! each timed on the client side (the blocking CRI call). Then shim memory: P pods (one
//! container each) of one handler running at once, RSS and PSS of each pod's shim from
//! `/proc/<pid>/smaps_rollup`, for `podnet` then `runc`.
//!
//! Usage: `cri-bench N P OUT.json [WARMUP]` (root). Set `PODNET_PLUGIN` to the shim to measure
//! (hack/bench: the release build); `CRI_BENCH_LOG=<file>` keeps containerd's debug log. Prints
//! the table and verdicts on stdout, a progress bar on stderr, and writes the results as JSON. A CRI error, a panic, SIGINT or SIGTERM stops the
//! run; the node's `Drop` then removes every pod and stops containerd (build this binary with
//! panic = "unwind", i.e. not with the workspace's release profile).

use std::collections::BTreeMap;
use std::fs;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use podnet_tests::containerd::{alive, processes_with_args};
use podnet_tests::cri::{container_config, CriNode, HANDLER_PODNET, HANDLER_RUNC};
use serde_json::json;

/// The lifecycle, in order.
const OPS: [&str; 7] = [
    "RunPodSandbox",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "StopPodSandbox",
    "RemovePodSandbox",
];
/// Handlers, in the order of the JSON and the table.
const HANDLERS: [&str; 2] = [HANDLER_RUNC, HANDLER_PODNET];
/// A container that exits at once on SIGTERM (busybox `sleep` as pid 1 of its PID namespace
/// ignores SIGTERM, so StopContainer would wait out its grace period).
const CONTAINER_CMD: [&str; 3] = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"];
/// StopContainer's grace period: the container exits on SIGTERM well before it.
const STOP_TIMEOUT_S: i64 = 10;
/// How long the shims get to settle (the podnet shim trims its memory when idle) before
/// their memory is read.
const SETTLE: Duration = Duration::from_secs(2);
/// RSS target of the podnet shim, per pod (4 MB).
const RSS_TARGET_BYTES: u64 = 4_000_000;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

type Res<T> = Result<T, String>;

fn check_stop() -> Res<()> {
    if STOP.load(Ordering::SeqCst) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

/// The progress bar on stderr: `\r[#####-----] 12/40 podnet RunPodSandbox` on a terminal,
/// a line per 10% otherwise.
struct Progress {
    total: usize,
    done: usize,
    tty: bool,
    last_decile: usize,
}

impl Progress {
    fn show(&mut self, what: &str) {
        let width = 30;
        let filled = (self.done * width).checked_div(self.total).unwrap_or(width);
        let line =
            format!("[{}{}] {}/{} {what}", "#".repeat(filled), "-".repeat(width - filled), self.done, self.total);
        let mut e = std::io::stderr().lock();
        if self.tty {
            let _ = write!(e, "\r\x1b[K{line}");
        } else {
            let decile = (self.done * 10).checked_div(self.total).unwrap_or(10);
            if decile != self.last_decile {
                self.last_decile = decile;
                let _ = writeln!(e, "{line}");
            }
        }
        let _ = e.flush();
    }
    fn step(&mut self, what: &str) {
        self.done += 1;
        self.show(what);
    }
    fn end(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

/// Times one blocking CRI call, in milliseconds.
fn timed<T>(what: &str, f: impl FnOnce() -> Result<T, tonic::Status>) -> Res<(T, f64)> {
    check_stop()?;
    let t0 = Instant::now();
    let r = f().map_err(|e| format!("{what}: {e}"))?;
    Ok((r, t0.elapsed().as_secs_f64() * 1e3))
}

/// One pod's lifecycle with `handler`; the time of each op, in [`OPS`] order.
fn lifecycle(node: &CriNode, handler: &str, name: &str, progress: &mut Progress) -> Res<[f64; 7]> {
    let c = node.client();
    let pod_cfg = node.pod_config(name);
    let ctr_cfg = container_config("c", &CONTAINER_CMD);
    let mut t = [0.0; 7];
    progress.show(&format!("{handler} {}", OPS[0]));
    let (pod, ms) = timed(OPS[0], || c.run_pod_sandbox(&pod_cfg, handler))?;
    t[0] = ms;
    progress.show(&format!("{handler} {}", OPS[1]));
    let (ctr, ms) = timed(OPS[1], || c.create_container(&pod, &ctr_cfg, &pod_cfg))?;
    t[1] = ms;
    progress.show(&format!("{handler} {}", OPS[2]));
    t[2] = timed(OPS[2], || c.start_container(&ctr))?.1;
    progress.show(&format!("{handler} {}", OPS[3]));
    t[3] = timed(OPS[3], || c.stop_container(&ctr, STOP_TIMEOUT_S))?.1;
    progress.show(&format!("{handler} {}", OPS[4]));
    t[4] = timed(OPS[4], || c.remove_container(&ctr))?.1;
    progress.show(&format!("{handler} {}", OPS[5]));
    t[5] = timed(OPS[5], || c.stop_pod_sandbox(&pod))?.1;
    progress.show(&format!("{handler} {}", OPS[6]));
    t[6] = timed(OPS[6], || c.remove_pod_sandbox(&pod))?.1;
    Ok(t)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// The nearest-rank 90th percentile.
fn p90(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = ((0.9 * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// PIDs of the pod shims of `handler` serving this node's containerd.
fn shim_pids(node: &CriNode, handler: &str) -> Vec<i32> {
    if handler == HANDLER_PODNET {
        return node.shim_pids();
    }
    let addr = node.c().address().to_string_lossy().into_owned();
    let mut v: Vec<i32> = processes_with_args(&["-address", &addr])
        .into_iter()
        .filter(|pid| {
            let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<String> = raw.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            args.first().is_some_and(|a| a.ends_with("containerd-shim-runc-v2"))
                && !args.iter().any(|a| a == "start" || a == "delete")
                && alive(*pid)
        })
        .collect();
    v.sort();
    v
}

/// (Rss, Pss) of `pid` in KiB, from /proc/<pid>/smaps_rollup.
fn rss_pss_kib(pid: i32) -> Res<(u64, u64)> {
    let s =
        fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).map_err(|e| format!("smaps_rollup of {pid}: {e}"))?;
    let field = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| format!("no {k} in smaps_rollup of {pid}"))
    };
    Ok((field("Rss:")?, field("Pss:")?))
}

/// P pods of `handler` with one container each, running at once: each shim's (Rss, Pss) KiB.
fn memory(node: &CriNode, handler: &str, pods: usize, progress: &mut Progress) -> Res<Vec<(i32, u64, u64)>> {
    let c = node.client();
    let mut ids = Vec::new();
    for i in 0..pods {
        let pod_cfg = node.pod_config(&format!("mem-{handler}-{i}"));
        progress.show(&format!("{handler} memory: pod {}/{pods}", i + 1));
        let (pod, _) = timed("RunPodSandbox", || c.run_pod_sandbox(&pod_cfg, handler))?;
        let (ctr, _) =
            timed("CreateContainer", || c.create_container(&pod, &container_config("c", &CONTAINER_CMD), &pod_cfg))?;
        timed("StartContainer", || c.start_container(&ctr))?;
        ids.push((pod, ctr));
        progress.step(&format!("{handler} memory: pod {}/{pods}", i + 1));
    }
    std::thread::sleep(SETTLE);
    let pids = shim_pids(node, handler);
    if pids.len() != pods {
        return Err(format!("{pods} {handler} pods running, but {} {handler} shims found: {pids:?}", pids.len()));
    }
    let mut out = Vec::new();
    for p in pids {
        let (r, s) = rss_pss_kib(p)?;
        out.push((p, r, s));
    }
    for (pod, ctr) in ids {
        timed("StopContainer", || c.stop_container(&ctr, STOP_TIMEOUT_S))?;
        timed("StopPodSandbox", || c.stop_pod_sandbox(&pod))?;
        timed("RemovePodSandbox", || c.remove_pod_sandbox(&pod))?;
    }
    Ok(out)
}

/// An error with the tail of containerd's log (not for an interruption).
fn with_log(node: &CriNode, e: String) -> String {
    if STOP.load(Ordering::SeqCst) {
        e
    } else {
        format!("{e}\ncontainerd's log:\n{}", node.c().log_tail(30))
    }
}

fn containerd_version() -> String {
    let bin = podnet_tests::containerd::default_bin_dir().join("containerd");
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().nth(2).map(str::to_string))
        .unwrap_or_default()
}

fn kernel() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string()
}

fn run(n: usize, pods: usize, warmup: usize, out: &Path) -> Res<()> {
    let started = Instant::now();
    let shim = podnet_tests::plugin_binary();
    eprintln!("cri-bench: podnet shim {}", shim.display());
    eprintln!("cri-bench: starting containerd with CRI in a node namespace...");
    let node = CriNode::new("bench");
    let setup_s = started.elapsed().as_secs_f64();
    check_stop()?;
    let rounds = warmup + n;
    let mut progress = Progress {
        total: rounds * HANDLERS.len() + 2 * pods,
        done: 0,
        tty: std::io::stderr().is_terminal(),
        last_decile: usize::MAX,
    };
    // samples[handler][op] = ms
    let mut samples: BTreeMap<&str, Vec<Vec<f64>>> =
        HANDLERS.iter().map(|h| (*h, vec![Vec::new(); OPS.len()])).collect();
    let lifecycle_start = Instant::now();
    for round in 0..rounds {
        let order: [&str; 2] =
            if round % 2 == 0 { [HANDLER_PODNET, HANDLER_RUNC] } else { [HANDLER_RUNC, HANDLER_PODNET] };
        for h in order {
            let t = lifecycle(&node, h, &format!("b{round}-{h}"), &mut progress).map_err(|e| with_log(&node, e))?;
            if round >= warmup {
                for (i, ms) in t.iter().enumerate() {
                    samples.get_mut(h).unwrap()[i].push(*ms);
                }
            }
            let kind = if round < warmup { "warm-up" } else { "round" };
            progress.step(&format!("{h} done ({kind} {}/{})", round + 1, rounds));
        }
    }
    let lifecycle_s = lifecycle_start.elapsed().as_secs_f64();
    let mem_start = Instant::now();
    let mut mem = BTreeMap::new();
    for h in [HANDLER_PODNET, HANDLER_RUNC] {
        let m = memory(&node, h, pods, &mut progress).map_err(|e| with_log(&node, e))?;
        mem.insert(h, m);
    }
    let mem_s = mem_start.elapsed().as_secs_f64();
    progress.end();

    // Statistics.
    let stat = |h: &str, i: usize| -> (f64, f64) {
        let v = &samples[h][i];
        (median(v), p90(v))
    };
    let totals: BTreeMap<&str, Vec<f64>> =
        HANDLERS.iter().map(|h| (*h, (0..n).map(|k| samples[h].iter().map(|op| op[k]).sum()).collect())).collect();
    let mut ops_json = serde_json::Map::new();
    println!();
    println!("CRI lifecycle, {n} pods per handler (interleaved, after {warmup} warm-up rounds), client-side ms:");
    println!(
        "{:<18} {:>12} {:>10} {:>12} {:>10} {:>14}",
        "operation", "runc median", "runc p90", "podnet med.", "podnet p90", "podnet/runc"
    );
    let row = |name: &str, r: &[f64], p: &[f64]| -> serde_json::Value {
        let (rm, r9, pm, p9) = (median(r), p90(r), median(p), p90(p));
        println!("{name:<18} {rm:>12.1} {r9:>10.1} {pm:>12.1} {p9:>10.1} {:>13.2}x", pm / rm);
        json!({
            "runc": {"median_ms": rm, "p90_ms": r9, "samples_ms": r},
            "podnet": {"median_ms": pm, "p90_ms": p9, "samples_ms": p},
            "ratio_podnet_over_runc": pm / rm,
        })
    };
    for (i, op) in OPS.iter().enumerate() {
        let v = row(op, &samples[HANDLER_RUNC][i], &samples[HANDLER_PODNET][i]);
        ops_json.insert(op.to_string(), v);
    }
    let total_json = row("lifecycle total", &totals[HANDLER_RUNC], &totals[HANDLER_PODNET]);

    println!();
    println!("Shim memory with {pods} pods of one handler running at once (one container each), per pod's shim:");
    let mut mem_json = serde_json::Map::new();
    for h in HANDLERS {
        let m = &mem[h];
        let rss: Vec<f64> = m.iter().map(|x| x.1 as f64 / 1024.0).collect();
        let pss: Vec<f64> = m.iter().map(|x| x.2 as f64 / 1024.0).collect();
        let max = |v: &[f64]| v.iter().cloned().fold(f64::NAN, f64::max);
        let name =
            if h == HANDLER_RUNC { "runc (containerd-shim-runc-v2)" } else { "podnet (containerd-shim-podnet-v2)" };
        println!(
            "  {name:<36} shims {:>3}  RSS median {:>6.2} MiB (max {:.2})  PSS median {:>6.2} MiB (max {:.2})",
            m.len(),
            median(&rss),
            max(&rss),
            median(&pss),
            max(&pss)
        );
        mem_json.insert(
            h.to_string(),
            json!({
                "shims": m.len(),
                "rss_median_mib": median(&rss), "rss_max_mib": max(&rss),
                "pss_median_mib": median(&pss), "pss_max_mib": max(&pss),
                "per_shim": m.iter().map(|(pid, r, s)| json!({"pid": pid, "rss_kib": r, "pss_kib": s})).collect::<Vec<_>>(),
            }),
        );
    }

    // Targets.
    let med = |h: &str, op: usize| stat(h, op).0;
    let podnet_rss_med_bytes = median(&mem[HANDLER_PODNET].iter().map(|x| x.1 as f64 * 1024.0).collect::<Vec<_>>());
    let podnet_rss_max_bytes = mem[HANDLER_PODNET].iter().map(|x| x.1 * 1024).max().unwrap_or(0);
    let targets = vec![
        (
            "RunPodSandbox median <= 1/4 of runc's",
            med(HANDLER_PODNET, 0) <= med(HANDLER_RUNC, 0) / 4.0,
            format!(
                "{:.1} ms vs {:.1} ms / 4 = {:.1} ms",
                med(HANDLER_PODNET, 0),
                med(HANDLER_RUNC, 0),
                med(HANDLER_RUNC, 0) / 4.0
            ),
        ),
        (
            "StopPodSandbox median <= 1/4 of runc's",
            med(HANDLER_PODNET, 5) <= med(HANDLER_RUNC, 5) / 4.0,
            format!(
                "{:.1} ms vs {:.1} ms / 4 = {:.1} ms",
                med(HANDLER_PODNET, 5),
                med(HANDLER_RUNC, 5),
                med(HANDLER_RUNC, 5) / 4.0
            ),
        ),
        (
            "StartContainer median below runc's",
            med(HANDLER_PODNET, 2) < med(HANDLER_RUNC, 2),
            format!("{:.1} ms vs {:.1} ms", med(HANDLER_PODNET, 2), med(HANDLER_RUNC, 2)),
        ),
        (
            "podnet shim RSS per pod < 4 MB (median of the shims)",
            podnet_rss_med_bytes < RSS_TARGET_BYTES as f64,
            format!(
                "{:.2} MB median, {:.2} MB max ({:.2} MiB / {:.2} MiB)",
                podnet_rss_med_bytes / 1e6,
                podnet_rss_max_bytes as f64 / 1e6,
                podnet_rss_med_bytes / 1048576.0,
                podnet_rss_max_bytes as f64 / 1048576.0
            ),
        ),
    ];
    println!();
    println!("Targets:");
    for (name, met, detail) in &targets {
        println!("  {:<7} {name}: {detail}", if *met { "MET" } else { "MISSED" });
    }
    let stop_med = HANDLERS.iter().map(|h| med(h, 3)).fold(0.0, f64::max);
    if stop_med > 1000.0 {
        println!("  warning: StopContainer takes {stop_med:.0} ms: the container did not exit on SIGTERM");
    }

    let total_s = started.elapsed().as_secs_f64();
    println!();
    println!(
        "machine: {} CPUs, kernel {}, containerd {}; took {:.0} s (node setup {:.1} s, lifecycle {:.0} s, memory {:.0} s)",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        kernel(),
        containerd_version(),
        total_s,
        setup_s,
        lifecycle_s,
        mem_s
    );

    let result = json!({
        "benchmark": "CRI lifecycle (hack/bench)",
        "n": n, "pods_for_memory": pods, "warmup_rounds": warmup,
        "container": CONTAINER_CMD, "stop_container_timeout_s": STOP_TIMEOUT_S,
        "machine": {
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "kernel": kernel(),
            "containerd": containerd_version(),
        },
        "podnet_shim": shim,
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "ops_order": OPS,
        "ops": ops_json,
        "lifecycle_total": total_json,
        "memory": mem_json,
        "targets": targets.iter().map(|(n, m, d)| json!({"name": n, "met": m, "detail": d})).collect::<Vec<_>>(),
        "durations_s": {"total": total_s, "node_setup": setup_s, "lifecycle": lifecycle_s, "memory": mem_s},
    });
    if let Some(d) = out.parent() {
        fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    fs::write(out, serde_json::to_vec_pretty(&result).unwrap())
        .map_err(|e| format!("writing {}: {e}", out.display()))?;
    eprintln!("cri-bench: results in {}; checking that nothing is left...", out.display());
    // For a breakdown of the calls: containerd's debug log (shims' log lines included).
    if let Some(p) = std::env::var_os("CRI_BENCH_LOG") {
        let _ = fs::write(&p, node.c().log());
    }
    // Every pod is gone already: assert that this node left nothing (pods, containers, shims,
    // veths, IP reservations, rules, netns, mounts, cgroups). Not `finish`'s machine-wide leak
    // check: other tests' nodes may come and go on the machine meanwhile. Dropping the node
    // then stops containerd and deletes the node namespace.
    let errors = node.remove_all_pods();
    if !errors.is_empty() {
        return Err(format!("removing the pods: {errors:?}"));
    }
    node.assert_clean();
    drop(node);
    eprintln!("cri-bench: clean");
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!("usage: cri-bench N P OUT.json [WARMUP]   (root; PODNET_PLUGIN: the shim to measure)");
        std::process::exit(2)
    };
    if args.len() < 4 {
        usage();
    }
    let num = |s: &str| s.parse::<usize>().unwrap_or_else(|_| usage());
    let (n, p) = (num(&args[1]), num(&args[2]));
    let out = PathBuf::from(&args[3]);
    let warmup = args.get(4).map(|s| num(s)).unwrap_or(2);
    if n == 0 || p == 0 {
        usage();
    }
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    // `run` owns the node: on an error it is dropped on the way out, which removes every pod,
    // stops containerd and deletes the node namespace; a panic unwinds through the same Drop.
    match std::panic::catch_unwind(|| run(n, p, warmup, &out)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("\ncri-bench: {e}");
            std::process::exit(if STOP.load(Ordering::SeqCst) { 130 } else { 1 });
        }
        Err(_) => {
            eprintln!("\ncri-bench: panicked (the node was cleaned up)");
            std::process::exit(101);
        }
    }
}
