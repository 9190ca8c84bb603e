//! CRI streaming against a real containerd (root): Exec, Attach and PortForward through the
//! URLs containerd's stream server hands out, with `podnet_tests::cri_stream` as the
//! WebSocket client (connecting from inside the node namespace, where the server listens on
//! 127.0.0.1), for the `runc` handler and the `podnet` handler, on containerd 2.x and 1.7
//! (`containerd_2::<scenario>`, `containerd_1_7::<scenario>`).
use std::time::{Duration, Instant};

use podnet_tests::cri::{container_config, v1 as cri, wait_container_state, ContainerConfigExt, CriNode, Flavour};
use podnet_tests::cri::{HANDLER_PODNET, HANDLER_RUNC};
use podnet_tests::cri_stream::{self, in_ns, Session, StreamOutput, CH_STDOUT};
use podnet_tests::on_each_containerd;

on_each_containerd!(runc_streams, podnet_streams);

const T: Duration = Duration::from_secs(30);

/// An Exec request. With a tty it always asks for stdin: containerd (2.1 and 1.7) closes a tty
/// exec's output as soon as its stdin stream ends, and without stdin that stream is empty (see
/// `cri_stream`'s module docs).
fn exec_req(ctr: &str, cmd: &[&str], stdin: bool, tty: bool) -> cri::ExecRequest {
    cri::ExecRequest {
        container_id: ctr.to_string(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin: stdin || tty,
        stdout: true,
        stderr: !tty,
    }
}

fn exec(n: &CriNode, ctr: &str, cmd: &[&str], stdin: Option<&[u8]>, tty: bool) -> StreamOutput {
    let url = n.client().exec(exec_req(ctr, cmd, stdin.is_some(), tty)).expect("Exec");
    cri_stream::exec(in_ns(n.node()), &url, stdin, tty, T)
        .unwrap_or_else(|e| panic!("exec {cmd:?} via {url}: {e}\n{}", n.c().log_tail(40)))
}

fn streams(f: Flavour, handler: &str) {
    let n = CriNode::on(f, handler);
    let c = n.client();
    let pod_cfg = n.pod_config("stream");
    let pod =
        c.run_pod_sandbox(&pod_cfg, handler).unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", n.c().log_tail(60)));

    // A shell container, and an httpd that starts once /www/index.html exists.
    let sh =
        c.create_container(&pod, &container_config("sh", &["sleep", "3600"]), &pod_cfg).expect("CreateContainer sh");
    c.start_container(&sh).expect("StartContainer sh");
    let web_cmd = "while [ ! -f /www/index.html ]; do sleep 0.05; done; exec httpd -f -p 8080 -h /www";
    let web = c
        .create_container(&pod, &container_config("web", &["sh", "-c", web_cmd]), &pod_cfg)
        .expect("CreateContainer web");
    c.start_container(&web).expect("StartContainer web");
    // Attach target: prints, then echoes its (kept open) stdin.
    let echo_cfg = container_config("echo", &["sh", "-c", "echo ready; cat"]).stdin(false);
    let echo = c.create_container(&pod, &echo_cfg, &pod_cfg).expect("CreateContainer echo");
    c.start_container(&echo).expect("StartContainer echo");

    // Exec: stdout, stderr and the exit code.
    let t = Instant::now();
    let o = exec(&n, &sh, &["sh", "-c", "echo out; echo err >&2; exit 3"], None, false);
    eprintln!("exec: {:?} {o:?}", t.elapsed());
    assert_eq!((o.stdout_str().as_str(), o.stderr_str().as_str(), o.exit_code), ("out\n", "err\n", 3));
    let o = exec(&n, &sh, &["true"], None, false);
    assert_eq!(o, StreamOutput { exit_code: 0, ..Default::default() });
    // A command that cannot start is an error on the error channel (no exit code).
    let url = c.exec(exec_req(&sh, &["/no/such/binary"], false, false)).expect("Exec");
    let e = cri_stream::exec(in_ns(n.node()), &url, None, false, T).expect_err("exec of a missing binary");
    eprintln!("missing binary: {e}");

    // Exec with stdin. containerd 2.1 and 1.7 serve v4 only, so stdin stays open until the
    // command ends: a command that reads one line works with `exec`...
    let o = exec(&n, &sh, &["sh", "-c", "read l; echo got:$l; exit 5"], Some(b"hello\n"), false);
    assert_eq!((o.stdout_str().as_str(), o.exit_code), ("got:hello\n", 5), "{o:?}");
    // ...and `cat` echoes through a session; closing the connection closes its stdin.
    let url = c.exec(exec_req(&sh, &["cat"], true, false)).expect("Exec cat");
    let mut s = Session::open(in_ns(n.node()), &url, T).expect("open exec session");
    eprintln!("exec subprotocol: {}", s.protocol());
    s.send_stdin(b"hello\n").unwrap();
    s.read_until(CH_STDOUT, b"hello\n").unwrap_or_else(|e| panic!("cat echo: {e}"));
    s.send_stdin(b"again\n").unwrap();
    s.read_until(CH_STDOUT, b"hello\nagain\n").unwrap_or_else(|e| panic!("cat echo: {e}"));
    let o = s.disconnect();
    assert_eq!(o.stdout_str(), "hello\nagain\n");

    // Attach: stdin goes to `cat`, its echo comes back; detaching leaves it running.
    let st = wait_container_state(c, &echo, cri::ContainerState::ContainerRunning, T).expect("status echo");
    assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32, "{st:?}");
    let attach_req =
        || cri::AttachRequest { container_id: echo.clone(), stdin: true, tty: false, stdout: true, stderr: true };
    let url = c.attach(attach_req()).expect("Attach");
    let out = cri_stream::attach_until(in_ns(n.node()), &url, Some(b"hello\n"), b"hello\n", T)
        .unwrap_or_else(|e| panic!("attach: {e}\n{}", n.c().log_tail(40)));
    assert_eq!(String::from_utf8_lossy(&out), "hello\n");
    let url = c.attach(attach_req()).expect("Attach again");
    let out = cri_stream::attach_until(in_ns(n.node()), &url, Some(b"second\n"), b"second\n", T)
        .unwrap_or_else(|e| panic!("attach again: {e}"));
    assert_eq!(String::from_utf8_lossy(&out), "second\n");
    // Attach until the container exits: stop it while attached.
    let url = c.attach(attach_req()).expect("Attach 3");
    let mut s = Session::open(in_ns(n.node()), &url, T).expect("open attach session");
    s.send_stdin(b"third\n").unwrap();
    s.read_until(CH_STDOUT, b"third\n").unwrap();
    c.stop_container(&echo, 0).expect("StopContainer echo");
    let o = s.finish().unwrap_or_else(|e| panic!("attach until exit: {e}"));
    assert_eq!((o.stdout_str().as_str(), o.exit_code), ("third\n", 0));

    // PortForward to busybox httpd in the pod (its files written through exec).
    let o = exec(
        &n,
        &web,
        &[
            "sh",
            "-c",
            "read l; mkdir -p /www; echo \"$l\" > /www/index.tmp; mv /www/index.tmp /www/index.html; ls /www",
        ],
        Some(b"hello from the pod\n"),
        false,
    );
    assert_eq!((o.stdout_str().as_str(), o.exit_code), ("index.html\n", 0), "{o:?}");
    let deadline = Instant::now() + T;
    let resp = loop {
        let url = c.port_forward(&pod, &[8080]).expect("PortForward");
        match cri_stream::port_forward(in_ns(n.node()), &url, 8080, b"GET / HTTP/1.0\r\n\r\n", T) {
            Ok(r) if !r.is_empty() => break r,
            // httpd not listening yet: the error channel says connection refused.
            r if Instant::now() < deadline => {
                eprintln!("port-forward not ready: {r:?}");
                std::thread::sleep(Duration::from_millis(100));
            }
            r => panic!("port-forward: {r:?}\n{}", n.c().log_tail(40)),
        }
    };
    let text = String::from_utf8_lossy(&resp);
    eprintln!("port-forward response: {text:?}");
    assert!(text.starts_with("HTTP/1.") && text.contains(" 200 "), "{text}");
    assert!(text.ends_with("\r\n\r\nhello from the pod\n"), "{text}");
    // A port nobody listens on: an error, not a hang.
    let url = c.port_forward(&pod, &[8081]).expect("PortForward 8081");
    let e = cri_stream::port_forward(in_ns(n.node()), &url, 8081, b"x", T).expect_err("port 8081 is closed");
    assert!(e.contains("8081"), "{e}");
    eprintln!("closed port: {e}");

    // Exec with a tty (last: the podnet shim's console socket path was too long at first):
    // the terminal is real, and ^D ends `cat`.
    let o = exec(&n, &sh, &["sh", "-c", "test -t 0 && test -t 1 && echo is-a-tty"], None, true);
    assert_eq!((o.stdout_str().as_str(), o.exit_code), ("is-a-tty\r\n", 0), "{o:?}");
    let o = exec(&n, &sh, &["cat"], Some(b"hello\n\x04"), true);
    assert_eq!(o.exit_code, 0, "{o:?}");
    // The terminal echoes the line, then cat prints it.
    assert_eq!(o.stdout_str().matches("hello\r\n").count(), 2, "{o:?}");
    let o = exec(&n, &sh, &["sh", "-c", "exit 7"], None, true);
    assert_eq!(o.exit_code, 7);

    for id in [&sh, &web, &echo] {
        c.stop_container(id, 0).expect("StopContainer");
        c.remove_container(id).expect("RemoveContainer");
    }
    c.stop_pod_sandbox(&pod).expect("StopPodSandbox");
    c.remove_pod_sandbox(&pod).expect("RemovePodSandbox");
    n.finish();
}

fn runc_streams(f: Flavour) {
    streams(f, HANDLER_RUNC);
}

fn podnet_streams(f: Flavour) {
    streams(f, HANDLER_PODNET);
}
