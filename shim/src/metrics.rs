//! Container stats as containerd's cgroup metrics: `io.containerd.cgroups.v1.Metrics` on a v1
//! (or hybrid) host, `io.containerd.cgroups.v2.Metrics` on a unified one.
use containerd_shim_protos::cgroups::metrics as v1;
use containerd_shim_protos::cgroups_v2::metrics as v2;
use podnet_runtime::Stats;
use protobuf::well_known_types::any::Any;

use crate::events::any_of;

fn unified() -> bool {
    std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

fn stat(s: &Stats, key: &str) -> u64 {
    s.memory.stats.get(key).copied().unwrap_or(0)
}

pub fn v1_metrics(s: &Stats) -> v1::Metrics {
    let mut m = v1::Metrics::new();
    let mut pids = v1::PidsStat::new();
    pids.current = s.pids.current;
    pids.limit = s.pids.limit;
    m.pids = Some(pids).into();
    let mut usage = v1::CPUUsage::new();
    usage.total = s.cpu.usage.usage_total;
    usage.user = s.cpu.usage.usage_user;
    usage.kernel = s.cpu.usage.usage_kernel;
    usage.per_cpu = s.cpu.usage.per_core_usage_total.clone();
    let mut thr = v1::Throttle::new();
    thr.periods = s.cpu.throttling.periods;
    thr.throttled_periods = s.cpu.throttling.throttled_periods;
    thr.throttled_time = s.cpu.throttling.throttled_time;
    let mut cpu = v1::CPUStat::new();
    cpu.usage = Some(usage).into();
    cpu.throttling = Some(thr).into();
    m.cpu = Some(cpu).into();
    let entry = |d: &podnet_runtime::container::MemoryData| {
        let mut e = v1::MemoryEntry::new();
        e.usage = d.usage;
        e.max = d.max_usage;
        e.limit = d.limit;
        e.failcnt = d.fail_count;
        e
    };
    let mut mem = v1::MemoryStat::new();
    mem.usage = Some(entry(&s.memory.memory)).into();
    mem.swap = Some(entry(&s.memory.memswap)).into();
    mem.kernel = Some(entry(&s.memory.kernel)).into();
    mem.kernel_tcp = Some(entry(&s.memory.kernel_tcp)).into();
    mem.cache = s.memory.cache;
    mem.rss = stat(s, "rss");
    mem.rss_huge = stat(s, "rss_huge");
    mem.mapped_file = stat(s, "mapped_file");
    mem.dirty = stat(s, "dirty");
    mem.writeback = stat(s, "writeback");
    mem.pg_fault = stat(s, "pgfault");
    mem.pg_maj_fault = stat(s, "pgmajfault");
    mem.inactive_anon = stat(s, "inactive_anon");
    mem.active_anon = stat(s, "active_anon");
    mem.inactive_file = stat(s, "inactive_file");
    mem.active_file = stat(s, "active_file");
    mem.unevictable = stat(s, "unevictable");
    mem.hierarchical_memory_limit = stat(s, "hierarchical_memory_limit");
    mem.total_rss = stat(s, "total_rss");
    mem.total_cache = stat(s, "total_cache");
    m.memory = Some(mem).into();
    m
}

pub fn v2_metrics(s: &Stats) -> v2::Metrics {
    let mut m = v2::Metrics::new();
    let mut pids = v2::PidsStat::new();
    pids.current = s.pids.current;
    pids.limit = s.pids.limit;
    m.pids = Some(pids).into();
    let mut cpu = v2::CPUStat::new();
    cpu.usage_usec = s.cpu.usage.usage_total / 1000;
    cpu.user_usec = s.cpu.usage.usage_user / 1000;
    cpu.system_usec = s.cpu.usage.usage_kernel / 1000;
    cpu.nr_periods = s.cpu.throttling.periods;
    cpu.nr_throttled = s.cpu.throttling.throttled_periods;
    cpu.throttled_usec = s.cpu.throttling.throttled_time / 1000;
    m.cpu = Some(cpu).into();
    let mut mem = v2::MemoryStat::new();
    mem.usage = s.memory.memory.usage;
    mem.usage_limit = s.memory.memory.limit;
    mem.max_usage = s.memory.memory.max_usage;
    mem.swap_usage = s.memory.memswap.usage;
    mem.swap_limit = s.memory.memswap.limit;
    mem.anon = stat(s, "anon");
    mem.file = stat(s, "file");
    mem.inactive_anon = stat(s, "inactive_anon");
    mem.active_anon = stat(s, "active_anon");
    mem.inactive_file = stat(s, "inactive_file");
    mem.active_file = stat(s, "active_file");
    m.memory = Some(mem).into();
    m
}

pub fn to_any(s: &Stats) -> Result<Any, protobuf::Error> {
    if unified() {
        any_of(&v2_metrics(s))
    } else {
        any_of(&v1_metrics(s))
    }
}
