//! The web console (`/ui`) in a real browser: Debian's headless `chromium`, driven through
//! `chromedriver` (WebDriver, with fantoccini), against the real `eserveless` binary and the
//! real Docker engine. Without chromium/chromedriver or Docker the test prints "skipping" and
//! passes, except under `CI=true`, where it fails (`.ci/run` installs both packages).

#[macro_use]
mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// `chromium` and `chromedriver` on the PATH (Debian: packages `chromium`, `chromium-driver`).
fn browser_binaries() -> Result<(String, String), String> {
    let find = |name: &str| -> Option<String> {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.is_file()).map(|p| p.to_string_lossy().into_owned())
        })
    };
    match (find("chromium"), find("chromedriver")) {
        (Some(c), Some(d)) => Ok((c, d)),
        (c, d) => Err(format!(
            "missing {}{}; install Debian's `chromium` and `chromium-driver` packages",
            if c.is_none() { "chromium " } else { "" },
            if d.is_none() { "chromedriver" } else { "" }
        )),
    }
}

/// chromedriver on a free loopback port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start(binary: &str) -> Driver {
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let began = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(began.elapsed() < Duration::from_secs(20), "chromedriver did not listen on {port} within 20 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Driver { child, url: format!("http://127.0.0.1:{port}") }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver, chromium: &str) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900", "--no-first-run"],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector).capabilities(caps).connect(&driver.url).await.expect("a chromium session")
}

/// Polls `script` (a function body that returns a value) until it returns something truthy.
async fn wait_js(c: &Client, what: &str, script: &str, within: Duration) -> Value {
    let began = Instant::now();
    loop {
        let last = match c.execute(script, vec![]).await {
            Ok(v) if truthy(&v) => return v,
            Ok(v) => v,
            Err(e) => json!(format!("script error: {e}")),
        };
        if began.elapsed() > within {
            let text: String = c.execute("return document.body.innerText", vec![]).await.ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
            panic!("the console did not show {what} within {within:?} (last: {last}); the page says:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::String(s) => !s.is_empty(),
        Value::Number(n) => n.as_f64() != Some(0.0),
        _ => true,
    }
}

/// The text of the element `css`, once it exists and its text contains `want`.
async fn wait_text(c: &Client, css: &str, want: &str, within: Duration) -> String {
    let script = format!(
        "const e = document.querySelector({css}); return e && e.textContent.includes({want}) ? e.textContent : null;",
        css = json!(css),
        want = json!(want)
    );
    wait_js(c, &format!("`{want}` in {css}"), &script, within).await.as_str().unwrap_or_default().to_string()
}

async fn fill(c: &Client, css: &str, text: &str) {
    let e = c.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}"));
    e.clear().await.expect("clear");
    e.send_keys(text).await.expect("type");
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}")).click().await.unwrap_or_else(|e| panic!("click {css}: {e}"));
}

async fn go(c: &Client, base: &str, hash: &str) {
    c.goto(&format!("{base}/ui/{hash}")).await.expect("navigate");
}

async fn log_in(c: &Client, token: &str) {
    wait_js(c, "the login form", "return document.querySelector('#login input[name=token]') !== null", Duration::from_secs(10)).await;
    fill(c, "#login input[name=token]", token).await;
    click(c, "#login button[type=submit]").await;
}

/// With `ESERVELESS_CONSOLE_SCREENSHOTS=DIR`, the page as a PNG in DIR (to look at the console).
async fn shot(c: &Client, name: &str) {
    if let Some(dir) = std::env::var_os("ESERVELESS_CONSOLE_SCREENSHOTS") {
        let png = c.screenshot().await.expect("screenshot");
        std::fs::write(std::path::Path::new(&dir).join(format!("{name}.png")), png).expect("write the screenshot");
    }
}

/// Every input, select and textarea on the page has a label.
async fn assert_labelled(c: &Client, page: &str) {
    let unlabelled = c
        .execute(
            "return [...document.querySelectorAll('input, select, textarea')].filter(e => !e.labels || e.labels.length === 0).map(e => e.outerHTML)",
            vec![],
        )
        .await
        .expect("script");
    assert_eq!(unlabelled, json!([]), "inputs without a label on {page}");
}

const FUNCTIONS_JS: &str = "exports.Hello = (req, res) => {\n  console.log('console-test line ' + req.url);\n  res.setHeader('Content-Type', 'text/plain');\n  res.end('hello from the console test');\n};\nexports.Tick = () => { console.log('tick from the console test'); };\n";

#[tokio::test]
async fn the_console_in_a_real_browser() {
    let (chromium, chromedriver) = match browser_binaries() {
        Ok(b) => b,
        Err(why) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{why}; CI=true requires them for the console's browser test");
            }
            eprintln!("skipping: {why}");
            return;
        }
    };
    require_docker!();
    let Stage { _serial, t0, project, scene: _scene, server, http } = stage("ui").await;
    let step = |m: &str| eprintln!("[{:>5.1}s] {m}", t0.elapsed().as_secs_f64());
    let base = server.url.clone();
    let driver = Driver::start(&chromedriver).await;
    let c = browser(&driver, &chromium).await;
    let wait = Duration::from_secs(30);

    // A wrong token: the API's own message, and no way in.
    go(&c, &base, "").await;
    log_in(&c, "esl_1_wrong").await;
    let want = client_with_token("esl_1_wrong").get(format!("{base}/api/whoami")).send().await.expect("whoami");
    let want: Value = want.json().await.expect("json");
    let message = want["error"]["message"].as_str().expect("the API's message").to_string();
    let shown = wait_text(&c, "#login .error", &message, wait).await;
    assert!(shown.contains("token_invalid"), "{shown}");
    shot(&c, "login-error").await;
    step("a wrong token shows the API's message");

    // The admin logs in with the keyboard only (Enter submits); no projects yet.
    fill(&c, "#login input[name=token]", &format!("{}\u{E007}", server.token)).await;
    wait_text(&c, "#who", "admin", wait).await;
    wait_text(&c, "#projects", "No projects yet", wait).await;
    step("logged in");

    // Deploy from the console: first a bad repository (the API's message as is), then a real one.
    go(&c, &base, "#/deploy").await;
    wait_js(&c, "the deploy form", "return document.querySelector('#deploy-form') !== null", wait).await;
    fill(&c, "#deploy-form input[name=repository]", "ftp://example.invalid/x.git").await;
    click(&c, "#deploy-form button[type=submit]").await;
    let api = http.post(format!("{base}/api/projects")).json(&json!({"repository": "ftp://example.invalid/x.git"})).send().await.expect("deploy");
    let api: Value = api.json().await.expect("json");
    let bad = api["error"]["message"].as_str().expect("message").to_string();
    wait_text(&c, "#deploy-form .error", &bad, wait).await;
    step("a bad repository shows the API's message");

    let repo = repo_with(&[
        (".eserveless.yaml", "runtime: node\nfunctions:\n  - {name: Hello, type: http}\n  - {name: Tick, type: cron, schedule: \"0 0 1 1 *\"}\n".to_string()),
        ("functions.js", FUNCTIONS_JS.to_string()),
    ]);
    fill(&c, "#deploy-form input[name=repository]", repo.path().to_str().expect("utf8")).await;
    fill(&c, "#deploy-form input[name=name]", &project).await;
    click(&c, "#deploy-form button[type=submit]").await;
    // The console moves to the deployment and follows it until it is live.
    let mut seen = Vec::<String>::new();
    let began = Instant::now();
    loop {
        let s = c
            .execute("const e = document.querySelector('#deployment-status'); return e ? e.textContent : null;", vec![])
            .await
            .expect("script");
        if let Some(s) = s.as_str() {
            if seen.last().map(String::as_str) != Some(s) {
                seen.push(s.to_string());
            }
            if s.starts_with("ready") || s.starts_with("failed") {
                break;
            }
        }
        assert!(began.elapsed() < Duration::from_secs(300), "the deployment did not finish in 5 min: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen.last().map(String::as_str), Some("ready (live)"), "statuses shown: {seen:?}");
    assert!(seen.iter().any(|s| s.starts_with("queued") || s.starts_with("building")), "the page showed the build going: {seen:?}");
    wait_js(&c, "Hello's build log", "return document.querySelector('#build-logs pre[data-function=Hello]') !== null", wait).await;
    shot(&c, "deployment").await;
    step(&format!("watched the deployment go live: {seen:?}"));

    // The projects list shows it.
    go(&c, &base, "#/projects").await;
    wait_text(&c, "#projects", &project, wait).await;
    click(&c, &format!("#projects a[href='#/projects/{project}']")).await;
    wait_text(&c, "#functions", "Hello", wait).await;
    step("the project and its function are listed");

    // Invoke from the function's page: status, Server-Timing and body; the log line follows.
    click(&c, &format!("#functions a[href='#/projects/{project}/functions/Hello']")).await;
    wait_js(&c, "the invoke form", "return document.querySelector('#invoke-form') !== null", wait).await;
    fill(&c, "#invoke-form input[name=path]", "/from-the-browser?x=1").await;
    click(&c, "#invoke-form button[type=submit]").await;
    wait_text(&c, "#invoke-status", "200", Duration::from_secs(60)).await;
    wait_text(&c, "#invoke-body", "hello from the console test", wait).await;
    let timing = wait_text(&c, "#invoke-timing", "dur=", wait).await;
    assert!(timing.contains("cold") || timing.contains("warm") || timing.contains("resume"), "{timing}");
    step(&format!("invoked: 200, Server-Timing {timing}"));
    assert_labelled(&c, "the function page").await;
    wait_text(&c, "#log-lines", "console-test line /from-the-browser?x=1", wait).await;
    step("the function's log line is shown");

    // A cron function: a run by hand from its page, then in its history with its output.
    go(&c, &base, &format!("#/projects/{project}/functions/Tick")).await;
    wait_js(&c, "the Run now button", "return [...document.querySelectorAll('#runs button')].some(b => b.textContent === 'Run now')", wait).await;
    c.execute("[...document.querySelectorAll('#runs button')].find(b => b.textContent === 'Run now').click()", vec![]).await.expect("click");
    wait_text(&c, "#runs", "succeeded", Duration::from_secs(60)).await;
    wait_text(&c, "#runs", "manual", wait).await;
    step("a cron run by hand shows in the run history");
    go(&c, &base, &format!("#/projects/{project}/functions/Hello")).await;

    // Some requests; the charts show a point with a rate.
    for _ in 0..20 {
        let r = client().get(server.invoke_url(&project, "Hello", "")).send().await.expect("invoke");
        assert_eq!(r.status(), 200);
    }
    wait_js(
        &c,
        "a point with requests in the rps chart",
        "return [...document.querySelectorAll('#chart-rps circle')].some(c => Number(c.dataset.value) > 0)",
        Duration::from_secs(25),
    )
    .await;
    wait_js(&c, "a latency point", "return document.querySelectorAll('#chart-latency circle').length > 0", wait).await;
    shot(&c, "function").await;
    step("the charts show the requests");

    // A secret: set from the project page, its name listed, its value never shown again.
    go(&c, &base, &format!("#/projects/{project}")).await;
    wait_js(&c, "the secret form", "return document.querySelector('#secret-form') !== null", wait).await;
    fill(&c, "#secret-form input[name=secret-name]", "CONSOLE_SECRET").await;
    fill(&c, "#secret-form input[name=secret-value]", "s3cret-value-42").await;
    click(&c, "#secret-form button[type=submit]").await;
    wait_text(&c, "#secret-list", "CONSOLE_SECRET", wait).await;
    let source = c.source().await.expect("source");
    assert!(!source.contains("s3cret-value-42"), "the value is not on the page");
    let listed: Value = http.get(format!("{base}/api/projects/{project}/secrets")).send().await.expect("secrets").json().await.expect("json");
    assert_eq!(listed["secrets"][0]["name"], "CONSOLE_SECRET", "{listed}");
    shot(&c, "project").await;
    step("a secret set, its name listed");
    assert_labelled(&c, "the project page").await;

    // A second commit goes live (through the API); the console rolls back to the first.
    let first: Value = http.get(format!("{base}/api/projects/{project}")).send().await.expect("project").json().await.expect("json");
    let first = first["live"]["deployment"].as_i64().unwrap_or_else(|| panic!("a live deployment: {first}"));
    std::fs::write(repo.path().join("functions.js"), FUNCTIONS_JS.replace("hello from", "v2 hello from")).expect("edit");
    commit_all(repo.path(), "v2");
    let d = deploy_and_wait(&http, &base, repo.path(), &project).await;
    assert_eq!(d["status"], "ready", "{d}");
    go(&c, &base, "#/projects").await;
    go(&c, &base, &format!("#/projects/{project}")).await;
    let button = format!("Roll back to #{first}");
    wait_text(&c, "#history", &button, wait).await;
    let clicked = c
        .execute(
            "const b = [...document.querySelectorAll('#history button')].find(b => b.textContent === arguments[0]); if (b) b.focus(); return !!b;",
            vec![json!(button)],
        )
        .await
        .expect("script");
    assert_eq!(clicked, json!(true));
    // A button is a button: Enter on the focused one.
    c.active_element().await.expect("focus").send_keys("\u{E007}").await.expect("enter");
    wait_text(&c, "#status", &format!("serves #{first}"), wait).await;
    let live: Value = http.get(format!("{base}/api/projects/{project}/deployments")).send().await.expect("history").json().await.expect("json");
    let now_live = live["deployments"].as_array().and_then(|l| l.iter().find(|x| x["live"] == true).cloned()).unwrap_or_default();
    assert_eq!(now_live["rollback_of"], first, "{live}");
    let answer = client().get(server.invoke_url(&project, "Hello", "")).send().await.expect("invoke").text().await.expect("text");
    assert_eq!(answer, "hello from the console test", "the first commit serves again");
    step(&format!("rolled back to #{first} from the history"));

    // Log out: the token is forgotten. A plain user sees none of the admin's projects.
    click(&c, "#logout").await;
    wait_js(&c, "the login form", "return document.querySelector('#login') !== null", wait).await;
    let kept = c.execute("return sessionStorage.getItem('eserveless.token')", vec![]).await.expect("script");
    assert!(kept.is_null(), "logging out forgets the token: {kept}");
    log_in(&c, &server.token).await;
    wait_text(&c, "#who", "admin", wait).await;
    // The admin makes a plain user on the Users page; its token is shown once.
    go(&c, &base, "#/users").await;
    wait_js(&c, "the user form", "return document.querySelector('#user-form') !== null", wait).await;
    assert_labelled(&c, "the users page").await;
    fill(&c, "#user-form input[name=user-name]", "viewer").await;
    click(&c, "#user-form button[type=submit]").await;
    let viewer = wait_text(&c, "#new-token", "esl_", wait).await;
    wait_text(&c, "#users", "viewer", wait).await;
    click(&c, "#logout").await;
    log_in(&c, &viewer).await;
    wait_text(&c, "#who", "viewer", wait).await;
    wait_text(&c, "#projects", "No projects yet", wait).await;
    let source = c.source().await.expect("source");
    assert!(!source.contains(&project), "a plain user does not see the admin's project");
    let hidden = c.execute("return document.querySelector('.admin-only').hidden", vec![]).await.expect("script");
    assert_eq!(hidden, json!(true), "no Users link for a plain user");
    go(&c, &base, &format!("#/projects/{project}")).await;
    wait_text(&c, "main .error", "project_not_found", wait).await;
    step("a plain user sees none of the admin's projects");

    // A phone-sized screen: the page fits its width.
    c.set_window_size(375, 812).await.expect("resize");
    go(&c, &base, "#/tokens").await;
    wait_text(&c, "#tokens", "viewer", wait).await;
    let fit = c
        .execute("return [document.documentElement.scrollWidth, window.innerWidth]", vec![])
        .await
        .expect("script");
    let (scroll, inner) = (fit[0].as_f64().unwrap_or(f64::MAX), fit[1].as_f64().unwrap_or(0.0));
    assert!(inner <= 400.0, "the window is phone-sized: {fit}");
    assert!(scroll <= inner + 1.0, "no sideways scrolling at 375 px: {fit}");
    shot(&c, "tokens-phone").await;
    go(&c, &base, "#/projects").await;
    wait_text(&c, "#projects", "No projects yet", wait).await;
    shot(&c, "projects-phone").await;
    step(&format!("fits a phone-sized screen: {fit}"));

    // The server's own sampler (every 10 s) kept the requests: a kept point, not only the one up to now.
    let began = Instant::now();
    loop {
        let m: Value = http.get(format!("{base}/api/projects/{project}/functions/Hello/metrics")).send().await.expect("metrics").json().await.expect("json");
        let points = m["points"].as_array().cloned().unwrap_or_default();
        let kept = &points[..points.len().saturating_sub(1)];
        if kept.iter().any(|p| p["requests_per_second"].as_f64().unwrap_or(0.0) > 0.0 && p["p99_ms"].as_f64().is_some()) {
            assert!(kept.iter().all(|p| (p["seconds"].as_f64().unwrap_or(0.0) - 10.0).abs() < 1.5 || p == &kept[0]), "10 s apart: {m}");
            break;
        }
        assert!(began.elapsed() < Duration::from_secs(25), "no sampled point with requests: {m}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    step("the history's sampler kept the requests");

    c.close().await.expect("close the browser");
    drop(server);
}
