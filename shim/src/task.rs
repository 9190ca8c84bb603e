//! The task model: the containers this shim runs (a [`Task`] each; their execs live in the
//! runtime's registry, `Container::add_exec`), the Waits not answered yet, the reaping of exits
//! in the order containerd needs them (an init's exit after its execs'), and the state the Task
//! API reports. No ttrpc or protobuf here: `service` maps this onto containerd's Task service.
use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use cni_bridge::engine::DelTail;
use podnet_runtime::oci_spec::runtime::Process as OciProcess;
use podnet_runtime::{Container, Exit, Runtime, Status, StdioConfig};

use crate::bundle::BUNDLE_RECORD;
use crate::error::{Error, Errors, Result};
use crate::mount;
use crate::network::{self, NetRecord};
use crate::oom::OomWatch;

/// How long an exit waits for a terminal's last output to be copied out: the shim's one thread
/// must not wait on a terminal an escaped background process keeps open.
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// One container of the pod, as containerd's Task API sees it.
pub struct Task {
    pub bundle: PathBuf,
    /// The pod's grouping key (`bundle::group_of`).
    pub pod: String,
    /// The pod's sandbox (its namespaces are the ones the others join).
    pub sandbox: bool,
    pub stdio: StdioConfig,
    pub terminal: bool,
    pub container: Container,
    /// The init's exit, once reaped; `exit_sent` once TaskExit went out.
    pub exit: Option<Exit>,
    pub exit_sent: bool,
    /// The rootfs the shim mounted from Create's mounts.
    pub rootfs: Option<PathBuf>,
    /// The standalone pod network the shim set up for it.
    pub network: Option<NetRecord>,
    pub oom: Option<OomWatch>,
}

/// What a deleted task still owes containerd.
pub struct Ended {
    pub pid: i32,
    pub exit: Exit,
    /// Whether its exit was reported already.
    pub exit_sent: bool,
    /// Execs whose exit was never reported.
    pub pending_execs: Vec<String>,
}

impl Task {
    /// Deletes the container, unmounts its rootfs and releases its standalone network, whatever
    /// fails; returns what is owed, the network DEL's part to run after the reply, and every
    /// failure. The bundle record goes only when everything was released.
    pub fn teardown(mut self, id: &str) -> (Ended, DelTail, Errors) {
        self.oom = None;
        let mut errs = Errors::new();
        let pending_execs = self.container.pending_exec_ids();
        let exit = match self.container.delete() {
            Ok(exit) => exit,
            Err(e) => {
                errs.add(e.into());
                self.exit.unwrap_or(Exit {
                    code: 128 + libc::SIGKILL,
                    signal: Some(libc::SIGKILL),
                    at: SystemTime::now(),
                })
            }
        };
        if let Some(rootfs) = &self.rootfs {
            mount::unmount(rootfs);
        }
        let mut tail = DelTail::default();
        if let Some(rec) = self.network.take() {
            let (rest, r) = network::teardown_deferred(&rec);
            tail = rest;
            match r {
                Ok(()) => tracing::info!(id = %id, "pod network released"),
                Err(e) => errs.add(e.context("releasing the pod network")),
            }
        }
        if errs.is_empty() {
            let record = self.bundle.join(BUNDLE_RECORD);
            match std::fs::remove_file(&record) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => errs.add(Error::io(format!("removing {}", record.display()), e)),
            }
        }
        let ended = Ended { pid: self.container.pid(), exit, exit_sent: self.exit_sent, pending_execs };
        (ended, tail, errs)
    }
}

/// Where a reply that waits goes: the connection and the request's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyTo {
    pub conn: u64,
    pub stream: u32,
}

/// A Wait whose process has not exited yet: answered when it does.
struct Waiter {
    to: ReplyTo,
    id: String,
    exec_id: String,
}

/// An exit to report (TaskExit): `exec_id` is empty for the container's init.
#[derive(Debug, Clone, PartialEq)]
pub struct ExitEvent {
    pub id: String,
    pub exec_id: String,
    pub pid: i32,
    pub exit: Exit,
}

/// A process's status as the Task API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    Created,
    Running,
    Paused,
    Stopped,
}

/// The init's status: stopped once its exit is known, whatever the container says.
pub fn init_status(exit: Option<Exit>, status: Status) -> TaskStatus {
    match (exit, status) {
        (Some(_), _) | (_, Status::Stopped) => TaskStatus::Stopped,
        (_, Status::Created) => TaskStatus::Created,
        (_, Status::Running) => TaskStatus::Running,
        (_, Status::Paused) => TaskStatus::Paused,
    }
}

/// An exec's status: created until started, running until its exit was reported.
pub fn exec_status(started: bool, reported: Option<Exit>) -> TaskStatus {
    match (started, reported) {
        (false, _) => TaskStatus::Created,
        (true, None) => TaskStatus::Running,
        (true, Some(_)) => TaskStatus::Stopped,
    }
}

/// What State reports of one process (the init or an exec).
pub struct ProcessState {
    pub pid: i32,
    pub status: TaskStatus,
    pub stdio: StdioConfig,
    pub terminal: bool,
    pub exit: Option<Exit>,
}

fn not_found(id: &str) -> Error {
    Error::NotFound(format!("task {id:?} not found"))
}

fn exec_not_found(id: &str, exec_id: &str) -> Error {
    Error::NotFound(format!("exec {exec_id:?} of task {id:?} not found"))
}

/// The shim's tasks, by container id, and the Waits on them.
#[derive(Default)]
pub struct Tasks {
    tasks: BTreeMap<String, Task>,
    waiters: Vec<Waiter>,
    /// Waits answered since the last [`Tasks::take_answered`].
    answered: Vec<(ReplyTo, Exit)>,
}

impl Tasks {
    pub fn get(&self, id: &str) -> Result<&Task> {
        self.tasks.get(id).ok_or_else(|| not_found(id))
    }

    pub fn get_mut(&mut self, id: &str) -> Result<&mut Task> {
        self.tasks.get_mut(id).ok_or_else(|| not_found(id))
    }

    pub fn contains(&self, id: &str) -> bool {
        self.tasks.contains_key(id)
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn insert(&mut self, id: String, task: Task) {
        self.tasks.insert(id, task);
    }

    pub fn remove(&mut self, id: &str) -> Result<Task> {
        self.tasks.remove(id).ok_or_else(|| not_found(id))
    }

    /// The sandbox task of pod `pod`, and whether it has exited.
    pub fn sandbox_of(&self, pod: &str) -> Option<(String, bool)> {
        self.tasks.iter().find(|(_, t)| t.pod == pod && t.sandbox).map(|(k, t)| (k.clone(), t.exit.is_some()))
    }

    /// The pid of task `id`'s init, if there is such a task.
    pub fn pid_of(&self, id: &str) -> Option<i32> {
        self.tasks.get(id).map(|t| t.container.pid())
    }

    /// The fds to poll: running processes' pidfds and OOM watches.
    pub fn watch_fds(&self) -> Vec<i32> {
        let mut fds = Vec::new();
        for t in self.tasks.values() {
            if t.exit.is_none() {
                fds.push(t.container.init().as_fd().as_raw_fd());
            }
            for p in t.container.unreported_execs() {
                if p.process().exit().is_none() {
                    fds.push(p.process().as_fd().as_raw_fd());
                }
            }
            if let Some(o) = &t.oom {
                fds.push(o.fd());
            }
        }
        fds
    }

    /// After `fd` polled readable: the containers whose OOM watch `fd` is and fired.
    pub fn oom_fired(&mut self, fd: i32) -> Vec<String> {
        let mut oom = Vec::new();
        for (id, t) in self.tasks.iter_mut() {
            if let Some(o) = t.oom.as_mut() {
                if o.fd() == fd && o.fired() {
                    oom.push(id.clone());
                }
            }
        }
        oom
    }

    /// Start: the init (`exec_id` empty) or a registered exec; returns its pid.
    pub fn start(&self, id: &str, exec_id: &str, runtime: &Runtime) -> Result<i32> {
        let t = self.get(id)?;
        if exec_id.is_empty() {
            t.container.start()?;
            return Ok(t.container.pid());
        }
        let e = t.container.exec_info(exec_id).ok_or_else(|| exec_not_found(id, exec_id))?;
        if e.process.is_some() {
            return Err(Error::Precondition(format!("exec {exec_id:?} was already started")));
        }
        Ok(t.container.start_exec(exec_id, runtime)?.pid())
    }

    /// Exec: registers `exec_id` in task `id` with the process `spec` decodes and the stdio
    /// `stdio` makes of it (the checks on the task come before the spec is decoded).
    pub fn add_exec(
        &self,
        id: &str,
        exec_id: &str,
        spec: impl FnOnce(&str) -> Result<OciProcess>,
        stdio: impl FnOnce(&OciProcess) -> StdioConfig,
    ) -> Result<()> {
        let t = self.get(id)?;
        if t.container.exec_info(exec_id).is_some() {
            return Err(Error::AlreadyExists(format!("exec {exec_id:?} already exists")));
        }
        if t.exit.is_some() {
            return Err(Error::Precondition(format!("task {id:?} has exited")));
        }
        let spec = spec(exec_id)?;
        let stdio = stdio(&spec);
        t.container.add_exec(exec_id, &spec, stdio)?;
        Ok(())
    }

    /// Kill: the init (with `all`, every process of the container) or a running exec. The
    /// caller reaps first: a process whose exit was reported is "already finished".
    pub fn kill(&self, id: &str, exec_id: &str, signal: i32, all: bool) -> Result<()> {
        let t = self.get(id)?;
        if exec_id.is_empty() {
            if t.exit.is_some() && !all {
                return Err(Error::NotFound(format!("process {id:?} already finished")));
            }
            return Ok(t.container.kill(signal, all)?);
        }
        let e = t.container.exec_info(exec_id).ok_or_else(|| exec_not_found(id, exec_id))?;
        match (&e.process, e.reported) {
            (Some(p), None) => {
                p.process().signal(signal).map_err(|err| Error::Internal(format!("signalling exec {exec_id:?}: {err}")))
            }
            (Some(_), Some(_)) => Err(Error::NotFound(format!("process {exec_id:?} already finished"))),
            (None, _) => Err(Error::Precondition(format!("exec {exec_id:?} was not started"))),
        }
    }

    /// Delete of an exec that exited (its exit reported) or never started; returns the pid
    /// and exit of one that ran.
    pub fn delete_exec(&self, id: &str, exec_id: &str) -> Result<Option<(i32, Exit)>> {
        let t = self.get(id)?;
        let e = t.container.exec_info(exec_id).ok_or_else(|| exec_not_found(id, exec_id))?;
        let ran = match (&e.process, e.reported) {
            (Some(_), None) => return Err(Error::Precondition(format!("exec {exec_id:?} is still running"))),
            (Some(p), Some(exit)) => Some((p.pid(), exit)),
            (None, _) => None,
        };
        t.container.remove_exec(exec_id)?;
        Ok(ran)
    }

    /// Delete of task `id`, which must not be running: removed, and torn down
    /// ([`Task::teardown`]).
    pub fn delete(&mut self, id: &str) -> Result<(Ended, DelTail, Errors)> {
        let t = self.get(id)?;
        let status = t.container.status();
        if matches!(status, Status::Running | Status::Paused) && t.exit.is_none() {
            return Err(Error::Precondition(format!("cannot delete task {id:?}: it is {}", status.as_str())));
        }
        Ok(self.remove(id)?.teardown(id))
    }

    /// Collects every exit that happened: execs first, then inits (whose exit waits until the
    /// container's execs have all been reported). Answers the Waits on them; returns the
    /// exits to publish, in order.
    #[must_use = "the exits are to be published (TaskExit)"]
    pub fn reap(&mut self) -> Vec<ExitEvent> {
        let mut events = Vec::new();
        for (id, t) in self.tasks.iter_mut() {
            for (p, exit) in t.container.exec_exits() {
                if p.io().has_terminal() {
                    p.io().wait_output_for(OUTPUT_GRACE);
                }
                events.push(ExitEvent { id: id.clone(), exec_id: p.id.clone(), pid: p.pid(), exit });
            }
            if t.exit.is_none() {
                if let Ok(Some(exit)) = t.container.init().try_wait() {
                    t.exit = Some(exit);
                } else if let Some(exit) = t.container.init().exit() {
                    t.exit = Some(exit);
                }
            }
            let execs_done = t.container.unreported_execs().is_empty();
            if let (Some(exit), false, true) = (t.exit, t.exit_sent, execs_done) {
                if t.terminal {
                    t.container.io().wait_output_for(OUTPUT_GRACE);
                }
                t.exit_sent = true;
                events.push(ExitEvent { id: id.clone(), exec_id: String::new(), pid: t.container.pid(), exit });
            }
        }
        for ev in &events {
            self.answer(&ev.id, &ev.exec_id, ev.exit);
        }
        events
    }

    /// Answers the Waits on (`id`, `exec_id`) with `exit`.
    pub fn answer(&mut self, id: &str, exec_id: &str, exit: Exit) {
        let (ready, rest): (Vec<Waiter>, Vec<Waiter>) =
            std::mem::take(&mut self.waiters).into_iter().partition(|w| w.id == id && w.exec_id == exec_id);
        self.waiters = rest;
        self.answered.extend(ready.into_iter().map(|w| (w.to, exit)));
    }

    /// The Waits answered since the last call.
    pub fn take_answered(&mut self) -> Vec<(ReplyTo, Exit)> {
        std::mem::take(&mut self.answered)
    }

    /// Forgets the Waits of a connection that is gone.
    pub fn forget_conn(&mut self, conn: u64) {
        self.waiters.retain(|w| w.to.conn != conn);
    }

    /// Wait: the exit if it was reported, else None and the Wait is answered when it is.
    /// The caller reaps first (and publishes what [`Tasks::reap`] returns).
    pub fn wait(&mut self, id: &str, exec_id: &str, to: ReplyTo) -> Result<Option<Exit>> {
        let t = self.get(id)?;
        let exit = if exec_id.is_empty() {
            if t.exit_sent {
                t.exit
            } else {
                None
            }
        } else {
            t.container.exec_info(exec_id).ok_or_else(|| exec_not_found(id, exec_id))?.reported
        };
        if exit.is_none() {
            self.waiters.push(Waiter { to, id: id.to_string(), exec_id: exec_id.to_string() });
        }
        Ok(exit)
    }

    /// State of the init (`exec_id` empty) or of an exec of task `id`.
    /// The caller reaps first.
    pub fn state(&self, id: &str, exec_id: &str) -> Result<ProcessState> {
        let t = self.get(id)?;
        if exec_id.is_empty() {
            return Ok(ProcessState {
                pid: t.container.pid(),
                status: init_status(t.exit, t.container.status()),
                stdio: t.stdio.clone(),
                terminal: t.terminal,
                exit: t.exit,
            });
        }
        let e = t.container.exec_info(exec_id).ok_or_else(|| exec_not_found(id, exec_id))?;
        Ok(ProcessState {
            pid: e.process.as_ref().map_or(0, |p| p.pid()),
            status: exec_status(e.process.is_some(), e.reported),
            terminal: e.stdio.terminal,
            stdio: e.stdio,
            exit: e.reported,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: i32) -> Exit {
        Exit { code, signal: None, at: SystemTime::now() }
    }

    #[test]
    fn an_init_with_a_known_exit_is_stopped_whatever_the_container_says() {
        assert_eq!(init_status(Some(exit(0)), Status::Running), TaskStatus::Stopped);
        assert_eq!(init_status(None, Status::Stopped), TaskStatus::Stopped);
        assert_eq!(init_status(None, Status::Created), TaskStatus::Created);
        assert_eq!(init_status(None, Status::Running), TaskStatus::Running);
        assert_eq!(init_status(None, Status::Paused), TaskStatus::Paused);
    }

    #[test]
    fn an_exec_runs_from_its_start_until_its_exit_is_reported() {
        assert_eq!(exec_status(false, None), TaskStatus::Created);
        assert_eq!(exec_status(true, None), TaskStatus::Running);
        assert_eq!(exec_status(true, Some(exit(3))), TaskStatus::Stopped);
    }

    #[test]
    fn waits_are_answered_per_process_and_dropped_with_their_connection() {
        let mut tasks = Tasks::default();
        let push = |tasks: &mut Tasks, conn, stream, id: &str, exec_id: &str| {
            tasks.waiters.push(Waiter { to: ReplyTo { conn, stream }, id: id.into(), exec_id: exec_id.into() })
        };
        push(&mut tasks, 1, 1, "a", "");
        push(&mut tasks, 1, 3, "a", "e1");
        push(&mut tasks, 2, 1, "a", "");
        push(&mut tasks, 3, 5, "b", "");
        tasks.forget_conn(2);
        tasks.answer("a", "", exit(7));
        let answered = tasks.take_answered();
        assert_eq!(answered.len(), 1, "conn 2's Wait went with it");
        assert_eq!((answered[0].0, answered[0].1.code), (ReplyTo { conn: 1, stream: 1 }, 7));
        assert!(tasks.take_answered().is_empty(), "answered once");
        tasks.answer("a", "e1", exit(1));
        tasks.answer("b", "", exit(0));
        let streams: Vec<u32> = tasks.take_answered().iter().map(|(to, _)| to.stream).collect();
        assert_eq!(streams, [3, 5]);
        assert!(tasks.waiters.is_empty());
    }

    #[test]
    fn unknown_tasks_are_not_found_by_name() {
        let mut tasks = Tasks::default();
        let e = tasks.state("nope", "").err().map(|e| (e.code(), e.to_string()));
        assert_eq!(e, Some((containerd_shim_protos::ttrpc::proto::Code::NOT_FOUND, "task \"nope\" not found".into())));
        assert!(tasks.wait("nope", "", ReplyTo { conn: 1, stream: 1 }).is_err());
        assert!(tasks.remove("nope").is_err());
        assert!(tasks.sandbox_of("pod").is_none() && tasks.pid_of("nope").is_none());
    }
}
