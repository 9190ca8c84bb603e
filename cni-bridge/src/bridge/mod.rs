//! The bridge plugin: a Linux bridge on the node, a veth pair per attachment with its peer
//! created directly in the pod, host-local addresses, routes, gateway and masquerade.
//! ADD is a transaction: whatever it set up is undone if a later step fails ([`add`]); DEL
//! collects errors and keeps going ([`del`], also GC); CHECK compares the system with ADD's
//! result ([`check`]); [`host`] keeps the node's side (the bridge, its VLAN interface, gateway
//! addresses); [`cluster`] is cluster mode, an ipam with no range taking it from the node facts.

mod add;
mod check;
mod cluster;
mod config;
pub mod del;
mod host;

use crate::attachment::AttachmentStore;
use crate::config::{Fields, PluginInput};
use crate::error::{codes, CniError, Result};
use crate::ipam::{HostLocal, IpamConfig};

pub use cluster::Cluster;
pub use config::{BridgeConfig, DEFAULT_BRIDGE};

/// Everything an ADD, DEL, CHECK or GC of the bridge plugin needs from the plugin input.
pub struct BridgePlugin {
    pub network: String,
    pub conf: BridgeConfig,
    pub ipam: IpamConfig,
    /// Cluster mode: the ipam names no range and the node facts provide it (their MTU and
    /// cluster CIDR already applied to `conf`, their range set in `ipam`, when they could be
    /// read; ADD, CHECK and STATUS fail when they could not, DEL and GC do not need them).
    pub cluster: Option<Cluster>,
}

impl BridgePlugin {
    pub fn from_input(input: &PluginInput) -> Result<Self> {
        let mut conf = BridgeConfig::from_raw(&input.raw)?;
        let ipam_v = conf.ipam.clone().ok_or_else(|| {
            CniError::invalid_config("ipam", "missing: the bridge plugin needs a host-local ipam section")
        })?;
        let ip_ranges = Fields::config(&input.runtime_config.raw).get("ipRanges");
        let (ipam, cluster) = match Cluster::source(&ipam_v, ip_ranges)? {
            None => (IpamConfig::from_json_with_ip_ranges(&ipam_v, ip_ranges)?, None),
            Some(path) => {
                let c = Cluster::load(path);
                let ipam = IpamConfig::from_json_with_ranges(&ipam_v, c.range_sets())?;
                c.apply(&mut conf, &input.raw)?;
                (ipam, Some(c))
            }
        };
        if conf.hairpin_mode && conf.promisc_mode {
            return Err(CniError::invalid_config("promiscMode", "cannot be set together with hairpinMode"));
        }
        Ok(BridgePlugin { network: input.name.clone(), conf, ipam, cluster })
    }

    fn store(&self) -> AttachmentStore {
        AttachmentStore::new(self.conf.state_dir.as_deref(), &self.network)
    }

    fn host_local(&self) -> Result<HostLocal> {
        HostLocal::open(&self.ipam, &self.network)
    }

    /// STATUS: in cluster mode the node facts are there and valid; the IPAM store is usable.
    pub fn status(&self) -> Result<()> {
        self.cluster_facts().map_err(|e| CniError::new(codes::PLUGIN_NOT_AVAILABLE, e.msg))?;
        self.host_local()
            .map(drop)
            .map_err(|e| CniError::new(codes::PLUGIN_NOT_AVAILABLE, format!("IPAM store unusable: {}", e.msg)))
    }
}
