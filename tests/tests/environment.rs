//! A bad environment gets one clear line naming the fix, never a bare `Operation not permitted`.
use std::{process::Command, time::Duration};

use tests::{bins, harness::Env, process::spawn_in};

fn agent_error(env: &Env, args: &[String], wrap: Option<&[&str]>) -> String {
    let bins = bins!();
    let mut cmd = match wrap {
        Some(w) => {
            let mut c = Command::new(w[0]);
            c.args(&w[1..]).arg(&bins.agent);
            c
        }
        None => Command::new(&bins.agent),
    };
    cmd.args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = spawn_in("agent", cmd, Some(env.node()), None).unwrap();
    let (status, _, err) = child.output_timeout(Duration::from_secs(20)).unwrap();
    assert!(!status.success(), "the agent must refuse to start");
    err.lines()
        .find(|l| l.starts_with("shunt: "))
        .unwrap_or_else(|| panic!("no `shunt:` error line in:\n{err}"))
        .to_string()
}

fn replace_flag(args: &mut [String], flag: &str, value: &str) {
    let i = args.iter().position(|a| a == flag).unwrap();
    args[i + 1] = value.to_string();
}

#[test]
fn non_cgroup_directory_is_named_with_the_fix() {
    let Some(env) = Env::new("non_cgroup_directory_is_named_with_the_fix", 1, bins!()) else {
        return;
    };
    let mut args = env.agent_args();
    replace_flag(&mut args, "--cgroup", "/tmp");
    let line = agent_error(&env, &args, None);
    assert!(
        line.contains("--cgroup /tmp: not a cgroup v2 directory"),
        "{line}"
    );
    assert!(
        line.contains("pass a path under the cgroup2 mount"),
        "{line}"
    );
}

#[test]
fn missing_capabilities_are_named_with_the_fix() {
    let Some(env) = Env::new("missing_capabilities_are_named_with_the_fix", 1, bins!()) else {
        return;
    };
    // Root without CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN (PERFMON is not required).
    let line = agent_error(
        &env,
        &env.agent_args(),
        Some(&[
            "setpriv",
            "--inh-caps=-all",
            "--bounding-set=-bpf,-perfmon,-sys_admin",
            "--",
        ]),
    );
    assert!(
        line.contains("missing capabilities CAP_BPF:") && !line.contains("PERFMON"),
        "{line}"
    );
    assert!(line.contains("run as root, or grant them"), "{line}");
    assert!(!line.contains("Operation not permitted"), "{line}");
}

#[test]
fn unmountable_bpffs_is_named_with_the_fix() {
    let Some(env) = Env::new("unmountable_bpffs_is_named_with_the_fix", 1, bins!()) else {
        return;
    };
    // A path under /proc cannot be created, let alone mounted on.
    let mut args = env.agent_args();
    replace_flag(&mut args, "--bpffs-dir", "/proc/shunt-no-such-dir");
    let line = agent_error(&env, &args, None);
    assert!(
        line.contains("preparing the bpffs pin directory /proc/shunt-no-such-dir"),
        "{line}"
    );
}
