//! The shunt-validate skill names only what exists: every tool it mentions (`name(...)`) is in
//! the MCP server's tools/list, every `shunt ...` command and flag in `shunt --help`.
use std::{collections::BTreeSet, process::Command};

use serde_json::json;
use tests::mcp_world::RawSession;

fn shunt() -> &'static str {
    env!("CARGO_BIN_EXE_shunt-under-test")
}

fn help(args: &[&str]) -> String {
    let out = Command::new(shunt())
        .args(args)
        .arg("--help")
        .output()
        .expect("shunt --help");
    assert!(out.status.success(), "shunt {args:?} --help failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The subcommand names `--help` lists under "Commands:".
fn subcommands(help: &str) -> BTreeSet<String> {
    help.split("Commands:")
        .nth(1)
        .unwrap_or("")
        .split("\n\n")
        .next()
        .unwrap_or("")
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn skill_names_only_existing_tools_and_commands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(shunt())
        .args(["skill", "install", "--dir"])
        .arg(dir.path())
        .output()
        .expect("shunt skill install");
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(dir.path().join("shunt-validate/SKILL.md")).expect("skill");

    // Front matter: name and description, in the agent-skills format.
    let rest = text.strip_prefix("---\n").expect("front matter first");
    let (front, body) = rest.split_once("\n---\n").expect("front matter closed");
    let front: serde_json::Value = serde_saphyr::from_str(front).expect("front matter YAML");
    assert_eq!(front["name"], "shunt-validate");
    assert!(front["description"].as_str().is_some_and(|d| d.len() > 40));

    // The tools the server lists.
    let routes = dir.path().join("routes.yaml");
    std::fs::write(&routes, "services: []\n").expect("routes file");
    let server = [
        shunt().to_string(),
        "mcp".into(),
        "--routes".into(),
        routes.display().to_string(),
    ];
    let mut session = RawSession::start(&server);
    let listed = session.call("tools/list", json!({}));
    let tools: BTreeSet<String> = listed["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str().map(str::to_string))
        .collect();
    session.end_with(libc::SIGTERM);

    // Code spans: tools as `name(...)`, commands as `shunt ...`.
    let spans: Vec<String> = body
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    let mut named_tools = BTreeSet::new();
    let mut commands = 0;
    for span in &spans {
        if let Some((name, _)) = span.split_once('(')
            && !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        {
            assert!(
                tools.contains(name),
                "the skill names tool {name}, not in tools/list: {tools:?}"
            );
            named_tools.insert(name.to_string());
        }
        if let Some(cmd) = span.strip_prefix("shunt ") {
            commands += 1;
            let words: Vec<&str> = cmd.split(' ').collect();
            let top = subcommands(&help(&[]));
            assert!(
                top.contains(words[0]),
                "`shunt {}`: not a command of shunt --help: {top:?}",
                words[0]
            );
            let mut path = vec![words[0]];
            let second = help(&path);
            if let Some(w) = words.get(1).filter(|w| !w.starts_with('-'))
                && !subcommands(&second).is_empty()
            {
                assert!(
                    subcommands(&second).contains(*w),
                    "`shunt {} {w}` does not exist",
                    words[0]
                );
                path.push(w);
            }
            let h = help(&path);
            for flag in words.iter().filter(|w| w.starts_with("--")) {
                assert!(
                    h.contains(&format!("{flag} ")) || h.contains(&format!("{flag}\n")),
                    "`shunt {}` has no flag {flag}",
                    path.join(" ")
                );
            }
        }
    }
    // It teaches the loop with the tools, not a subset of them.
    for t in [
        "list_services",
        "resolve_port",
        "create_sandbox",
        "get_sandbox",
        "send_test_request",
        "get_logs",
        "delete_sandbox",
        "compare_with_baseline",
        "run_tests",
    ] {
        assert!(named_tools.contains(t), "the skill does not use {t}");
    }
    // Key injection: when it helps, and what it does not cover.
    for phrase in [
        "`key_injected`",
        "The sandbox drops the key",
        "Tests cannot add headers",
        "a **baseline** service that drops the key",
    ] {
        assert!(body.contains(phrase), "the skill does not say {phrase:?}");
    }
    assert!(commands >= 2, "{spans:?}");
}
