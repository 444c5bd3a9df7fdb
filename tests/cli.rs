//! The developer's loop through the real CLI binary against a real server and engine: what a
//! person types, what they read back, and the errors that must say what to type next.

#[macro_use]
mod common;

use common::*;
use serde_json::Value;

/// Parses a command's `-o json` output, or fails with what it printed.
fn json_of(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("`-o json` printed something that is not JSON ({e}):\n{out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_errors_name_the_value_and_the_next_step() {
    require_docker!();
    let Stage { _serial, t0: _, project: _, scene, server, http: _ } = stage("cli-errors").await;
    let port = server.port.to_string();

    // A server URL without its scheme: the value, where it came from, and the fix.
    let bare = format!("127.0.0.1:{port}");
    let (code, _, err) = cli(&["ls", "--server", &bare]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("`{bare}`")) && err.contains("--server flag") && err.contains(&format!("`http://{bare}`")), "{err}");
    let (code, _, err) = cli_env(&["ls"], &[("ESERVELESS_URL", &bare)]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("ESERVELESS_URL environment variable") && err.contains(&format!("`http://{bare}`")), "{err}");

    // A refused token says where it came from: flag, environment, or saved login.
    let (code, _, err) = cli_env(&["ls"], &[("ESERVELESS_URL", &server.url), ("ESERVELESS_TOKEN", "esl_1_bogus")]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("ESERVELESS_TOKEN environment variable") && err.contains("refused") && err.contains("eserveless login"), "{err}");
    let (code, _, err) = cli_env(&["ls", "--token", "esl_1_bogus"], &[("ESERVELESS_URL", &server.url)]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("the --token flag"), "{err}");
    let config = scene.scratch.join("config");
    std::fs::create_dir_all(config.join("eserveless")).expect("config dir");
    std::fs::write(config.join("eserveless/login.toml"), format!("server = \"{}\"\ntoken = \"esl_1_bogus\"\n", server.url)).expect("login");
    let (code, _, err) = cli_env(&["ls"], &[("XDG_CONFIG_HOME", config.to_str().expect("utf8"))]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("the saved login (") && err.contains("login.toml"), "{err}");

    // Invoking what is not there: the platform's message, not its JSON, and what to type.
    let (code, out, err) = server.cli(&["invoke", "no-such-project/API"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(!out.contains("{\"error\"") && !err.contains("{\"error\""), "raw JSON printed: {out}{err}");
    assert!(err.contains("no project `no-such-project` is live") && err.contains("eserveless ls") && err.contains("HTTP 404"), "{err}");
    // `-o json` keeps the whole answer for programs.
    let (code, out, _) = server.cli(&["invoke", "no-such-project/API", "-o", "json"]).await;
    assert_eq!(code, 1);
    let v = json_of(&out);
    assert_eq!(v["status"], 404, "{v:#}");
    assert!(v["body"].as_str().unwrap_or_default().contains("function_not_found"), "{v:#}");

    // A mistyped project, through the API.
    let (code, _, err) = server.cli(&["show", "no-such-projet"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("no project `no-such-projet`") && err.contains("eserveless ls"), "{err}");

    // What only admins may do, said for the command that was typed.
    let (code, out, err) = server.cli(&["users", "create", "bob", "-o", "json"]).await;
    assert_eq!(code, 0, "{err}");
    let bob = json_of(&out)["token"]["token"].as_str().expect("bob's token").to_string();
    let (code, _, err) = cli_env(&["tokens", "ls", "--all"], &[("ESERVELESS_URL", &server.url), ("ESERVELESS_TOKEN", &bob)]).await;
    assert_eq!(code, 1);
    assert!(err.contains("only admins list every user's tokens") && err.contains("without --all"), "{err}");
    assert!(!err.contains("manage users"), "{err}");
    let (code, out, _) = cli_env(&["tokens", "ls", "-o", "json"], &[("ESERVELESS_URL", &server.url), ("ESERVELESS_TOKEN", &bob)]).await;
    assert_eq!(code, 0);
    assert_eq!(json_of(&out)["tokens"][0]["user"], "bob", "{out}");

    // Commands that need no server.
    let (code, out, _) = cli(&["completions", "bash"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("_eserveless") && out.contains("deploy") && out.contains("rollback"), "not a bash completion script");
    let (code, _, err) = cli(&["new", "Bad_Name", "--runtime", "node"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("`Bad_Name` cannot be a project name"), "{err}");
    let broken = scene.scratch.join("broken");
    std::fs::create_dir_all(&broken).expect("dir");
    std::fs::write(broken.join("functions.js"), "module.exports = {};").expect("js");
    std::fs::write(broken.join(".eserveless.yaml"), "functions:\n  - name: A\n    type: htp\n").expect("manifest");
    let (code, _, err) = cli(&["validate", broken.to_str().expect("utf8")]).await;
    assert_eq!(code, 1);
    assert!(err.contains("htp"), "{err}");
}
