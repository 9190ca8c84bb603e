//! podnet's in-process numbers for hack/bench-cni (std::time only, no criterion):
//!
//! - `lib`: ADD and DEL latency of `engine::add_network`/`del_network`, in a node network
//!   namespace this binary creates (and deletes), for the reference-shaped conflist
//!   (bridge + portmap + loopback) and for the single `podnet` conf;
//! - `ipam`: host-local allocate latency (open the store + allocate, as one plugin run does)
//!   with 0, 1k, 10k... existing reservations written in the reference's on-disk format.
//!
//! Needs root. Prints one JSON object per measured series on stdout, samples in µs.
//!
//! ```text
//! cargo bench -p cni-bridge --bench engine -- lib  --iterations 30 --dir /tmp/x --prefix pnb1
//! cargo bench -p cni-bridge --bench engine -- ipam --iterations 30 --dir /tmp/x --counts 0,1000,10000
//! ```
//!
//! Run without `--bench` (as `cargo test --all-targets` does) it does nothing.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Instant;

use cni_bridge::config::NetworkConfig;
use cni_bridge::engine::{add_network, del_network, Request};
use cni_bridge::ipam::{HostLocal, IpamConfig};
use podnet_netns::NetNs;
use serde_json::{json, Map, Value};

type BoxResult<T> = std::result::Result<T, String>;

struct Opts {
    mode: String,
    iterations: usize,
    warmup: usize,
    dir: PathBuf,
    prefix: String,
    counts: Vec<usize>,
}

fn parse_args() -> Option<Opts> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        return None;
    }
    let mut o = Opts {
        mode: String::new(),
        iterations: 30,
        warmup: 3,
        dir: std::env::temp_dir().join(format!("podnet-bench-{}", std::process::id())),
        prefix: format!("pnb{}", std::process::id()),
        counts: vec![0, 1000, 10000],
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().unwrap_or_default();
        match a.as_str() {
            "--bench" => {}
            "--iterations" => o.iterations = val().parse().unwrap_or(30),
            "--warmup" => o.warmup = val().parse().unwrap_or(3),
            "--dir" => o.dir = PathBuf::from(val()),
            "--prefix" => o.prefix = val(),
            "--counts" => o.counts = val().split(',').filter_map(|s| s.trim().parse().ok()).collect(),
            m if !m.starts_with('-') && o.mode.is_empty() => o.mode = m.to_string(),
            _ => {}
        }
    }
    Some(o)
}

fn main() {
    let Some(o) = parse_args() else {
        eprintln!("engine bench: run it through hack/bench-cni (or cargo bench -- lib|ipam); nothing to do");
        return;
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("engine bench: needs root");
        std::process::exit(2);
    }
    let r = match o.mode.as_str() {
        "lib" => bench_lib(&o),
        "ipam" => bench_ipam(&o),
        m => Err(format!("unknown mode {m:?}: want lib or ipam")),
    };
    if let Err(e) = r {
        eprintln!("engine bench: {e}");
        std::process::exit(1);
    }
}

fn emit(part: &str, series: &str, op: &str, samples: &[f64], extra: Value) {
    let mut v = json!({"part": part, "series": series, "op": op, "samples_us": samples});
    if let (Some(m), Value::Object(x)) = (v.as_object_mut(), extra) {
        m.extend(x);
    }
    println!("{v}");
}

fn us(t: Instant) -> f64 {
    t.elapsed().as_nanos() as f64 / 1000.0
}

// ---------------------------------------------------------------------------------------------
// Library ADD/DEL

/// Namespaces created by this run, deleted on every exit path (the release profile aborts
/// on panic, so nothing here may panic while they exist).
struct Namespaces(Vec<PathBuf>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = podnet_netns::delete(p);
        }
    }
}

fn confs(dir: &Path) -> Vec<(&'static str, Value, Value)> {
    let ipam = |sub: &str, net: &str| json!({"type": "host-local", "dataDir": dir.join(net).join("ipam"), "ranges": [[{"subnet": sub}]]});
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": "bench-chain",
        "plugins": [
            {"type": "bridge", "bridge": "pnb0", "isGateway": true, "isDefaultGateway": true, "ipMasq": true,
             "hairpinMode": true, "stateDir": dir.join("bench-chain").join("state"), "ipam": ipam("10.97.0.0/16", "bench-chain")},
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
            {"type": "loopback"}
        ]
    });
    let single = json!({
        "cniVersion": "1.0.0",
        "name": "bench-podnet",
        "type": "podnet",
        "bridge": "pnb1", "isGateway": true, "isDefaultGateway": true, "ipMasq": true, "hairpinMode": true,
        "stateDir": dir.join("bench-podnet").join("state"),
        "ipam": ipam("10.96.0.0/16", "bench-podnet"),
        "capabilities": {"portMappings": true}
    });
    let rc = |port: u16| json!({"portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]});
    vec![("conflist bridge+portmap+loopback", conflist, rc(8082)), ("single podnet conf", single, rc(8083))]
}

fn bench_lib(o: &Opts) -> BoxResult<()> {
    std::fs::create_dir_all(&o.dir).map_err(|e| format!("create {}: {e}", o.dir.display()))?;
    let mut spaces = Namespaces(Vec::new());
    let node = NetNs::create(&format!("{}-libnode", o.prefix), None).map_err(|e| e.to_string())?;
    spaces.0.push(node.path().to_path_buf());
    let total = o.warmup + o.iterations;
    for (k, (series, conf, rc)) in confs(&o.dir).into_iter().enumerate() {
        let net =
            NetworkConfig::parse(&serde_json::to_vec(&conf).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        let rc: Map<String, Value> = rc.as_object().cloned().unwrap_or_default();
        let mut pods = Vec::new();
        for i in 0..total {
            let p = NetNs::create(&format!("{}-lp{k}-{i}", o.prefix), None).map_err(|e| e.to_string())?;
            spaces.0.push(p.path().to_path_buf());
            pods.push(p);
        }
        let (add_us, del_us) = node
            .run(|| -> BoxResult<(Vec<f64>, Vec<f64>)> {
                let (mut adds, mut dels) = (Vec::new(), Vec::new());
                for (i, pod) in pods.iter().enumerate() {
                    let id = format!("bench-{i}");
                    let req = Request::new(&id, "eth0", Some(pod.path()));
                    let t = Instant::now();
                    let res = add_network(&net, &req, &rc).map_err(|e| format!("{series}: ADD {id}: {e}"))?;
                    let a = us(t);
                    let t = Instant::now();
                    del_network(&net, &req, &rc, Some(&res)).map_err(|e| format!("{series}: DEL {id}: {e}"))?;
                    let d = us(t);
                    if i >= o.warmup {
                        adds.push(a);
                        dels.push(d);
                    }
                }
                Ok((adds, dels))
            })
            .map_err(|e| e.to_string())??;
        emit("lib", series, "ADD", &add_us, json!({}));
        emit("lib", series, "DEL", &del_us, json!({}));
        for p in pods {
            let path = p.path().to_path_buf();
            drop(p);
            let _ = podnet_netns::delete(&path);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// IPAM

/// The n-th host address of 10.0.0.0/16, skipping the network address and the gateway (.1).
fn nth_ip(n: usize) -> IpAddr {
    let v = u32::from(Ipv4Addr::new(10, 0, 0, 2)) + n as u32;
    IpAddr::V4(Ipv4Addr::from(v))
}

/// Brings the reservations in `net_dir` from `from` to `to`, in the reference's format, and
/// its cursor after the last one.
fn populate(net_dir: &Path, from: usize, to: usize) -> BoxResult<()> {
    std::fs::create_dir_all(net_dir).map_err(|e| format!("create {}: {e}", net_dir.display()))?;
    for i in from..to {
        let p = net_dir.join(nth_ip(i).to_string());
        std::fs::write(&p, format!("prepop-{i}\r\neth0")).map_err(|e| format!("write {}: {e}", p.display()))?;
    }
    if to > 0 {
        let p = net_dir.join("last_reserved_ip.0");
        std::fs::write(&p, nth_ip(to - 1).to_string()).map_err(|e| format!("write {}: {e}", p.display()))?;
    }
    Ok(())
}

/// One data dir for every count, grown between them: the same directory throughout, so the
/// numbers do not depend on where the filesystem placed it.
fn bench_ipam(o: &Opts) -> BoxResult<()> {
    let data = o.dir.join("podnet-ipam");
    let _ = std::fs::remove_dir_all(&data);
    let conf =
        IpamConfig::from_json(&json!({"type": "host-local", "dataDir": data, "ranges": [[{"subnet": "10.0.0.0/16"}]]}))
            .map_err(|e| e.to_string())?;
    let mut counts = o.counts.clone();
    counts.sort_unstable();
    let mut have = 0;
    for n in counts {
        populate(&data.join("bench"), have, n)?;
        have = n;
        let step = |id: &str| -> BoxResult<f64> {
            let t = Instant::now();
            let hl = HostLocal::open(&conf, "bench").map_err(|e| e.to_string())?;
            hl.allocate(id, "eth0", &[]).map_err(|e| format!("allocate {id}: {e}"))?;
            let d = us(t);
            hl.release(id, "eth0").map_err(|e| format!("release {id}: {e}"))?;
            Ok(d)
        };
        // The first run after reservations were added behind podnet's back pays one scan.
        let cold = step("bench-cold")?;
        let mut samples = Vec::new();
        for i in 0..o.warmup + o.iterations {
            let d = step(&format!("bench-{i}"))?;
            if i >= o.warmup {
                samples.push(d);
            }
        }
        emit("ipam", "podnet HostLocal (library)", "allocate", &samples, json!({"reservations": n, "cold_us": cold}));
    }
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}
