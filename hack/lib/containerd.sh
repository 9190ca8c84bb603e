# A real containerd 2.x for the shim's demo and benchmark, sourced by hack/demo-shim and
# hack/bench-shim. The caller sets `work` (a scratch dir), `node` (a network namespace under
# /var/run/netns) and `ctr_ns` (the containerd namespace), and writes $work/podnet.toml.
ctrd_bin=${PODNET_CONTAINERD_DIR:-/opt/podnet/containerd-2/usr/bin}
ctrd_pid=

ctr_() { nsenter --net=/var/run/netns/"$node" "$ctrd_bin/ctr" --address "$work/c.sock" -n "$ctr_ns" "$@"; }

# start_containerd SHIM_DIR: containerd in $node with its state in $work, SHIM_DIR first on its
# PATH and PODNET_CONFIG=$work/podnet.toml for the shims; returns once it answers.
start_containerd() {
  [ -x "$ctrd_bin/containerd" ] || { echo "no containerd in $ctrd_bin: run hack/setup" >&2; return 1; }
  cat > "$work/containerd.toml" <<TOML
version = 3
root = "$work/root"
state = "$work/state"
oom_score = 0
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime",
  "io.containerd.podsandbox.controller.v1.podsandbox", "io.containerd.sandbox.controller.v1.shim",
  "io.containerd.nri.v1.nri", "io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing", "io.containerd.monitor.container.v1.restart"]
[grpc]
  address = "$work/c.sock"
[ttrpc]
  address = "$work/t.sock"
TOML
  PATH=$1:$ctrd_bin:$PATH PODNET_CONFIG=$work/podnet.toml \
    nsenter --net=/var/run/netns/"$node" "$ctrd_bin/containerd" -c "$work/containerd.toml" >"$work/containerd.log" 2>&1 &
  ctrd_pid=$!
  for _ in $(seq 100); do ctr_ version >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "containerd did not answer; its log: $work/containerd.log" >&2
  return 1
}

stop_containerd() {
  [ -n "$ctrd_pid" ] || return 0
  kill "$ctrd_pid" 2>/dev/null
  wait "$ctrd_pid" 2>/dev/null
  ctrd_pid=
}

# The EXIT trap of both scripts: every task and container of $ctr_ns, containerd, the node
# namespace and the namespace's empty cgroups go.
cleanup_node() {
  set +e
  if [ -n "$ctrd_pid" ]; then
    for t in $(ctr_ task ls -q 2>/dev/null); do ctr_ task rm -f "$t" >/dev/null 2>&1; done
    for c in $(ctr_ c ls -q 2>/dev/null); do ctr_ c rm "$c" >/dev/null 2>&1; done
    stop_containerd
  fi
  ip netns del "$node" 2>/dev/null
  for d in /sys/fs/cgroup/*/"$ctr_ns"; do [ -d "$d" ] && rmdir "$d" 2>/dev/null; done
}
