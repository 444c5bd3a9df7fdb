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

/// Reads `child`'s stdout until a line contains `needle`, for at most `within`.
async fn wait_line(lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>, needle: &str, within: std::time::Duration) -> Option<String> {
    tokio::time::timeout(within, async {
        while let Ok(Some(l)) = lines.next_line().await {
            eprintln!("  logs -f | {l}");
            if l.contains(needle) {
                return Some(l);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

/// The loop, as a person types it: new → validate → deploy . → invoke → edit without
/// committing → deploy . → deployments → rollback (no build) → logs -f → cron run → -o json.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_developer_loop_through_the_cli() {
    use std::time::{Duration, Instant};
    use tokio::io::AsyncBufReadExt;
    require_docker!();
    let Stage { _serial, t0, project, scene, server, http } = stage("loop").await;
    let step = |what: &str| eprintln!("[{:>5.1}s] {what}", t0.elapsed().as_secs_f64());
    std::fs::create_dir_all(&scene.scratch).expect("scratch");
    let dir = scene.scratch.join(&project);
    let dir_s = dir.to_str().expect("utf8").to_string();

    step("new and validate");
    let (code, out, err) = server.cli(&["new", &project, "--runtime", "node", "--dir", &dir_s]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(dir.join(".git").is_dir() && dir.join(".gitignore").is_file(), "new made a git repository with a .gitignore");
    let (code, out, err) = server.cli(&["validate", &dir_s]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("valid") && out.contains("hello") && out.contains("tick"), "{out}");
    commit_all(&dir, "first");

    step("deploy the directory");
    let (code, out, err) = server.cli(&["deploy", &dir_s]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("live"), "{out}");
    assert!(!out.contains("invoke key"), "no private function, so no key: {out}");
    let (code, out, err) = server.cli(&["invoke", &format!("{project}/hello"), "?name=one"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Hello, one!"), "{out}");

    step("edit without committing, deploy again");
    let js = dir.join("functions.js");
    let text = std::fs::read_to_string(&js).expect("functions.js");
    std::fs::write(&js, text.replace("process.env.ESERVELESS_GREETING || 'Hello'", "'Howdy'")).expect("edit");
    let (code, out, err) = server.cli(&["deploy", &dir_s]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("dirty"), "the upload of a checkout with uncommitted changes says so: {out}");
    let (_, out, _) = server.cli(&["invoke", &format!("{project}/hello"), "?name=two"]).await;
    assert!(out.contains("Howdy, two!"), "the uncommitted edit is served: {out}");

    step("deploy -o json: the submit answer and the outcome, one document");
    std::fs::write(dir.join("notes.txt"), "changes the upload").expect("write");
    let (code, out, err) = server.cli(&["deploy", &dir_s, "-o", "json"]).await;
    assert_eq!(code, 0, "{err}");
    let v = json_of(&out);
    assert_eq!((&v["submit"]["source"], &v["deployment"]["status"]), (&serde_json::json!("upload"), &serde_json::json!("ready")), "{v:#}");

    step("deployments and rollback");
    let (code, out, err) = server.cli(&["deployments", &project, "-o", "json"]).await;
    assert_eq!(code, 0, "{err}");
    let list = json_of(&out);
    let deployments = list["deployments"].as_array().unwrap_or_else(|| panic!("deployments: {list:#}"));
    assert!(deployments.len() >= 2, "{list:#}");
    let first = deployments.last().expect("first")["id"].as_i64().expect("id");
    let (code, out, err) = server.cli(&["deployments", &project]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("upload") && out.contains("admin"), "{out}");
    let before = images_of(&docker(), &project).await.len();
    let began = Instant::now();
    let (code, out, err) = server.cli(&["rollback", &project, &first.to_string()]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&first.to_string()), "rollback names the deployment it made live: {out}");
    step(&format!("rollback took {:?}", began.elapsed()));
    assert_eq!(images_of(&docker(), &project).await.len(), before, "a rollback whose images exist builds nothing");
    let (_, out, _) = server.cli(&["invoke", &format!("{project}/hello"), "?name=three"]).await;
    assert!(out.contains("Hello, three!"), "the first version is served again: {out}");

    step("logs -f shows a line the function writes, within 2 s");
    let home = tempfile::tempdir().expect("home");
    let mut follow = tokio::process::Command::new(env!("CARGO_BIN_EXE_eserveless"))
        .args(["logs", &format!("{project}/hello"), "-f", "--since", "1s"])
        .env("ESERVELESS_URL", &server.url)
        .env("ESERVELESS_TOKEN", &server.token)
        .env("HOME", home.path())
        .env_remove("XDG_CONFIG_HOME")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("logs -f");
    let mut lines = tokio::io::BufReader::new(follow.stdout.take().expect("stdout")).lines();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let marker = format!("marker{}", std::process::id());
    let sent = Instant::now();
    let a = answer(http.get(format!("{}/invoke/{project}/hello?name={marker}", server.url)).send().await.expect("invoke")).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    let line = wait_line(&mut lines, &marker, Duration::from_secs(2)).await;
    let line = line.unwrap_or_else(|| panic!("logs -f did not show `{marker}` within 2 s of the request"));
    step(&format!("line seen {:?} after the request: {line}", sent.elapsed()));
    // The wrapper gives Node handlers the client's address (the template logs it).
    assert!(line.contains("hello from 127.0.0.1"), "{line}");
    // Each line carries its time (RFC 3339) and revision.
    assert!(line.contains("T") && line.contains('Z'), "{line}");
    let _ = follow.kill().await;

    step("cron run by hand");
    let (code, out, err) = server.cli(&["cron", "run", &format!("{project}/tick"), "--wait"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("tick for world"), "{out}");
    let (code, out, err) = server.cli(&["runs", &format!("{project}/tick"), "-o", "json"]).await;
    assert_eq!(code, 0, "{err}");
    // The scaffold's schedule may fire during the test too: count the run by hand.
    let manual = json_of(&out)["runs"].as_array().map(|r| r.iter().filter(|r| r["trigger"] == "manual").count());
    assert_eq!(manual, Some(1), "{out}");

    step("-o json for each command");
    for args in [
        vec!["ls"],
        vec!["show", &project],
        vec!["whoami"],
        vec!["deployments", &project],
        vec!["secrets", "ls", &project],
        vec!["tokens", "ls"],
        vec!["users", "ls"],
    ] {
        let mut args: Vec<&str> = args;
        args.extend(["-o", "json"]);
        let (code, out, err) = server.cli(&args).await;
        assert_eq!(code, 0, "{args:?}: {err}");
        json_of(&out);
    }
    let (_, out, _) = server.cli(&["show", &project, "-o", "json"]).await;
    let show = json_of(&out);
    let tick = show["functions"].as_array().and_then(|f| f.iter().find(|f| f["name"] == "tick")).cloned().expect("tick");
    assert!(tick["next_run"].is_string() && tick["last_run"]["status"].is_string(), "{tick:#}");
    let (_, out, _) = server.cli(&["show", &project]).await;
    assert!(out.contains("memory") && out.contains("scaling") && out.contains("next run") && out.contains("last run"), "{out}");

    step("a wrong case gets the name that was meant");
    let (code, _, err) = server.cli(&["invoke", &format!("{project}/Hello")]).await;
    assert_eq!(code, 1);
    assert!(err.contains("did you mean `hello`?"), "{err}");

    let (code, _, err) = server.cli(&["rm", &project]).await;
    assert_eq!(code, 0, "{err}");
}
