//! Task events to containerd: `containerd.services.events.ttrpc.v1.Events/Forward` on
//! TTRPC_ADDRESS, sent in order from the shim's one thread. An event containerd could not take
//! (it is restarting) stays queued, in order, and is sent again before anything newer.
use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use protobuf::well_known_types::any::Any;
use protobuf::well_known_types::empty::Empty;
use protobuf::MessageFull;

use crate::error::{Error, Result};

use crate::ttrpc::{socket_path, Client};

pub const SERVICE: &str = "containerd.services.events.ttrpc.v1.Events";
const TIMEOUT: Duration = Duration::from_secs(5);
/// Beyond this many undelivered events, the oldest are dropped (and logged).
const MAX_QUEUED: usize = 1024;

pub mod topics {
    pub const CREATE: &str = "/tasks/create";
    pub const START: &str = "/tasks/start";
    pub const EXIT: &str = "/tasks/exit";
    pub const DELETE: &str = "/tasks/delete";
    pub const EXEC_ADDED: &str = "/tasks/exec-added";
    pub const EXEC_STARTED: &str = "/tasks/exec-started";
    pub const OOM: &str = "/tasks/oom";
    pub const PAUSED: &str = "/tasks/paused";
    pub const RESUMED: &str = "/tasks/resumed";
}

/// An Any as containerd's typeurl marshals a protobuf message: the full name as the URL. An
/// encoding failure is the caller's to report: an empty value would decode as a zeroed message.
pub fn any_of<M: MessageFull>(m: &M) -> Result<Any, protobuf::Error> {
    let mut any = Any::new();
    any.type_url = M::descriptor().full_name().to_string();
    any.value = m.write_to_bytes()?;
    Ok(any)
}

pub struct Publisher {
    address: Option<PathBuf>,
    namespace: String,
    client: Option<Client>,
    queue: VecDeque<ForwardRequest>,
}

impl Publisher {
    /// `ttrpc_address` empty: events are dropped (a shim run by hand).
    pub fn new(ttrpc_address: &str, namespace: &str) -> Publisher {
        let address = (!ttrpc_address.is_empty()).then(|| socket_path(ttrpc_address));
        Publisher { address, namespace: namespace.to_string(), client: None, queue: VecDeque::new() }
    }

    pub fn publish<M: MessageFull>(&mut self, topic: &str, event: &M) {
        if self.address.is_none() {
            return;
        }
        let mut env = Envelope::new();
        env.timestamp = Some(SystemTime::now().into()).into();
        env.namespace = self.namespace.clone();
        env.topic = topic.to_string();
        match any_of(event) {
            Ok(any) => env.event = Some(any).into(),
            Err(e) => {
                tracing::error!(topic, "event not sent: encoding it failed: {e}");
                return;
            }
        }
        let mut req = ForwardRequest::new();
        req.envelope = Some(env).into();
        if self.queue.len() >= MAX_QUEUED {
            if let Some(old) = self.queue.pop_front() {
                tracing::warn!(topic = %old.envelope.topic, "event queue full: dropping the oldest event");
            }
        }
        self.queue.push_back(req);
        self.flush();
    }

    /// Events still waiting for containerd.
    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    /// Sends what is queued, in order; stops at the first failure (kept for the next try).
    pub fn flush(&mut self) {
        while let Some(req) = self.queue.pop_front() {
            if let Err(e) = self.send(&req) {
                tracing::warn!(topic = %req.envelope.topic, "publishing the event failed, will retry: {e}");
                self.client = None;
                self.queue.push_front(req);
                return;
            }
        }
    }

    fn send(&mut self, req: &ForwardRequest) -> Result<()> {
        let Some(addr) = &self.address else { return Ok(()) };
        for attempt in 0..2 {
            if self.client.is_none() {
                self.client =
                    Some(Client::connect(addr).map_err(|e| Error::io(format!("connecting to {}", addr.display()), e))?);
            }
            let Some(client) = self.client.as_mut() else { continue };
            match client.call::<Empty>(SERVICE, "Forward", req, Some(TIMEOUT)) {
                Ok(_) => return Ok(()),
                // A connection containerd closed (it restarted): one fresh connection.
                Err(e) if attempt == 0 => {
                    tracing::debug!("event connection failed, reconnecting: {e}");
                    self.client = None;
                }
                Err(e) => return Err(Error::Internal(e.to_string())),
            }
        }
        Err(Error::Internal("no connection".into()))
    }
}
