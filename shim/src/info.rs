//! The shim's `-info` answer: what containerd asks a shim v2 about its runtime. containerd runs
//! `containerd-shim-podnet-v2 -info` with the request's runtime options on stdin (a serialised
//! `google.protobuf.Any`; nothing when there are none) and reads a `containerd.types.RuntimeInfo`
//! from stdout: `ctr plugins inspect-runtime` prints it, the task manager reads it before
//! creating a task with idmapped mounts, and CRI (containerd 2.2.7, 2.3.4, 2.4 and later) turns
//! it into the handler's features (docs/cri.md).
use std::io::{Read, Write};

use containerd_shim_protos::types::introspection::{RuntimeInfo, RuntimeVersion};
use protobuf::well_known_types::any::Any;
use protobuf::{Message, MessageField};

use crate::bundle::{ANN_POD, ANN_RUNC_GROUP};
use crate::config::RuntimeOptions;
use crate::error::{Error, Result};
use crate::network::PORTS_ANNOTATION;

/// The runtime's name, the `runtime_type` containerd knows the shim by.
pub const RUNTIME_NAME: &str = "io.containerd.podnet.v2";

/// The type URL containerd registers for the OCI features document (core/runtime/typeurl.go);
/// its value is the document's JSON, as typeurl marshals a non-protobuf type.
pub const FEATURES_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/features/Features";

/// Config annotations the shim acts on that change what a container may reach: a pod to join
/// (its network, IPC and UTS namespaces) and host ports to map. A client should not pass them
/// through from untrusted input.
pub const UNSAFE_CONFIG_ANNOTATIONS: [&str; 3] = [ANN_POD, ANN_RUNC_GROUP, PORTS_ANNOTATION];

/// The answer to `-info` for the options containerd wrote to stdin (`options`, maybe empty).
pub fn runtime_info(options: &[u8]) -> Result<RuntimeInfo> {
    let mut info = RuntimeInfo::new();
    info.name = RUNTIME_NAME.to_string();
    let mut version = RuntimeVersion::new();
    version.version = env!("CARGO_PKG_VERSION").to_string();
    info.version = MessageField::some(version);
    if !options.is_empty() {
        let any = Any::parse_from_bytes(options)
            .map_err(|e| Error::Invalid(format!("decoding the runtime options on stdin: {e}")))?;
        let opts = RuntimeOptions::from_any(Some(&any))?;
        // Echoed as podnet read them, as runc's shim does: a client sees what was understood.
        info.options = MessageField::some(opts.encode());
    }

    let mut features = podnet_runtime::features();
    features.set_potentially_unsafe_config_annotations(Some(
        UNSAFE_CONFIG_ANNOTATIONS.iter().map(|a| a.to_string()).collect(),
    ));
    let mut any = Any::new();
    any.type_url = FEATURES_TYPE_URL.to_string();
    any.value =
        serde_json::to_vec(&features).map_err(|e| Error::Internal(format!("serialising the runtime features: {e}")))?;
    info.features = MessageField::some(any);
    Ok(info)
}

/// Reads the options from `input` to its end and writes the serialised answer to `output`.
pub fn run(input: &mut impl Read, output: &mut impl Write) -> Result<()> {
    let mut options = Vec::new();
    input.read_to_end(&mut options).map_err(|e| Error::io("reading the runtime options on stdin", e))?;
    let info = runtime_info(&options)?;
    let bytes = info.write_to_bytes().map_err(|e| Error::Internal(format!("encoding the runtime info: {e}")))?;
    output.write_all(&bytes).and_then(|()| output.flush()).map_err(|e| Error::io("writing the runtime info", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features_json(info: &RuntimeInfo) -> serde_json::Value {
        assert_eq!(info.features.type_url, FEATURES_TYPE_URL);
        serde_json::from_slice(&info.features.value).expect("features are JSON")
    }

    #[test]
    fn no_options_gives_name_version_and_features() {
        let mut out = Vec::new();
        run(&mut &b""[..], &mut out).expect("info");
        let info = RuntimeInfo::parse_from_bytes(&out).expect("RuntimeInfo");
        assert_eq!(info.name, RUNTIME_NAME);
        assert_eq!(info.version.version, env!("CARGO_PKG_VERSION"));
        assert!(info.options.is_none());
        let f = features_json(&info);
        let opts: Vec<&str> = f["mountOptions"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
        assert!(opts.contains(&"rro") && opts.contains(&"rshared"), "{opts:?}");
        assert_eq!(f["potentiallyUnsafeConfigAnnotations"], serde_json::json!(UNSAFE_CONFIG_ANNOTATIONS));
    }

    #[test]
    fn runtime_options_are_echoed() {
        let sent = RuntimeOptions { config_path: "/etc/podnet/other.toml".into(), ..Default::default() }.encode();
        let info = runtime_info(&sent.write_to_bytes().unwrap()).expect("info");
        assert_eq!(info.options.type_url, "runtimeoptions.v1.Options");
        let back = RuntimeOptions::from_any(info.options.as_ref()).unwrap();
        assert_eq!(back.config_path, "/etc/podnet/other.toml");
    }

    #[test]
    fn runc_options_and_garbage_are_refused() {
        let mut runc = Any::new();
        runc.type_url = "containerd.runc.v1.Options".into();
        let e = runtime_info(&runc.write_to_bytes().unwrap()).unwrap_err().to_string();
        assert!(e.contains("containerd.runc.v1.Options"), "{e}");
        let e = runtime_info(b"\xff\xff\xff").unwrap_err().to_string();
        assert!(e.contains("stdin"), "{e}");
    }
}
