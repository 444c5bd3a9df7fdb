//! How deployments build, against the real engine: one shared image per deployment with thin
//! per-function images on top, dependencies installed once and not again after a change to
//! the code alone, the Go caches handed from one deployment to the next, and the images of
//! old deployments pruned beyond the last N. Build *speed* is measured by
//! `scripts/bench --deploy`, not asserted here.
//!
//! Without a reachable Docker engine the tests print "skipping: ..." and pass, except when
//! `CI=true`, where they fail.

#[macro_use]
mod common;

use std::time::Duration;

use bollard::Docker;
use common::*;
use serde_json::Value;

/// `rm` of the project through the API: nothing of it is left, shared and cache images included.
async fn remove_project(http: &reqwest::Client, base: &str, project: &str) {
    let a = answer(http.delete(format!("{base}/api/projects/{project}")).send().await.expect("DELETE")).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    assert_project_gone(project).await;
    let left = tags_of(&docker(), project).await;
    assert!(left.is_empty(), "left after rm: {left:?}");
}

/// The layers of an image, bottom first.
async fn layers(d: &Docker, image: &str) -> Vec<String> {
    let i = d.inspect_image(image).await.unwrap_or_else(|e| panic!("inspect {image}: {e}"));
    i.root_fs.and_then(|r| r.layers).unwrap_or_default()
}

/// Image tags of the project now on the engine.
async fn tags_of(d: &Docker, project: &str) -> Vec<String> {
    let mut v: Vec<String> = images_of(d, project).await.into_iter().flat_map(|(_, tags)| tags).collect();
    v.sort();
    v
}

fn function_image(d: &Value, name: &str) -> String {
    let f = d["functions"].as_array().into_iter().flatten().find(|f| f["name"] == name).unwrap_or_else(|| panic!("{name} in {d:#}"));
    f["image"].as_str().unwrap_or_else(|| panic!("image of {name}: {f:#}")).to_string()
}

/// The lines of a deployment's log that follow the build step matching `step`, up to the next step.
fn after_step<'a>(log: &'a str, step: &str) -> Vec<&'a str> {
    let mut lines = log.lines().skip_while(|l| !(l.contains("Step ") && l.contains(step)));
    let mut out: Vec<&str> = lines.next().into_iter().collect();
    out.extend(lines.take_while(|l| !l.contains("Step ")));
    out
}

/// How many times a build step matching `step` ran (rather than being taken from the cache).
fn runs_of(log: &str, step: &str) -> usize {
    let lines: Vec<&str> = log.lines().collect();
    lines
        .iter()
        .enumerate()
        .filter(|(i, l)| l.contains("Step ") && l.contains(step) && lines.get(i + 1).is_some_and(|n| n.contains("Running in")))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_functions_share_one_image_and_a_code_change_installs_nothing() {
    require_docker!();
    let Stage { _serial, t0, project, scene: _scene, server, http } = stage("b-node").await;
    let d = docker();
    let repo = fixture_repo("node-app");
    let first = deploy_and_wait(&http, &server.url, repo.path(), &project).await;
    assert_eq!(first["status"], "ready", "{first:#}");
    let log = first["log"].as_str().unwrap_or_default();
    // The build's own steps reached the deployment's log (as they ran: `deploy` prints them).
    assert!(log.contains("npm install"), "the build's steps are in the deployment's log:\n{log}");
    assert_eq!(runs_of(log, "npm install --omit=dev"), 1, "one dependency install for all functions:\n{log}");

    // Every function's image is the shared image plus metadata: no layer of its own.
    let sha = git(repo.path(), &["rev-parse", "HEAD"]);
    let base = format!("eserveless/{project}.base:{}", &sha[..12]);
    let base_layers = layers(&d, &base).await;
    assert!(!base_layers.is_empty(), "no shared image {base}: {:?}", tags_of(&d, &project).await);
    let names: Vec<String> = first["functions"].as_array().into_iter().flatten().filter_map(|f| f["name"].as_str().map(String::from)).collect();
    assert!(names.len() >= 2, "{first:#}");
    for name in &names {
        let image = function_image(&first, name);
        assert_eq!(layers(&d, &image).await, base_layers, "{image} adds files to the shared image");
    }
    let a = answer(http.post(format!("{}/invoke/{project}/API", server.url)).body("x").send().await.expect("invoke")).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    assert_eq!(a.body["version"], "v1", "{}", a.raw);
    eprintln!("[{:>5.1}s] first deployment live", t0.elapsed().as_secs_f64());

    // A one-line change: the dependency step is taken from the cache.
    let path = repo.path().join("functions.js");
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text.contains("\"v1\""), "the fixture's version line moved");
    std::fs::write(&path, text.replace("const VERSION = \"v1\"", "const VERSION = \"v2\"")).expect("write");
    commit_all(repo.path(), "v2");
    let second = deploy_and_wait(&http, &server.url, repo.path(), &project).await;
    assert_eq!(second["status"], "ready", "{second:#}");
    let log = second["log"].as_str().unwrap_or_default();
    let install = after_step(log, "npm install");
    assert!(install.iter().any(|l| l.contains("Using cache")), "the dependency install ran again after a code change:\n{log}");
    let copy = after_step(log, "COPY . .");
    assert!(!copy.iter().any(|l| l.contains("Using cache")), "the code was not copied anew:\n{log}");
    let a = answer(http.post(format!("{}/invoke/{project}/API", server.url)).body("x").send().await.expect("invoke")).await;
    assert_eq!(a.body["version"], "v2", "{}", a.raw);
    eprintln!("[{:>5.1}s] one-line change live", t0.elapsed().as_secs_f64());

    // The dependency files change: npm installs again, from the cache of the last install.
    let path = repo.path().join("package.json");
    let text = std::fs::read_to_string(&path).expect("read");
    std::fs::write(&path, text.replace("\"version\": \"1.0.0\"", "\"version\": \"1.0.1\"")).expect("write");
    commit_all(repo.path(), "package.json changed");
    let third = deploy_and_wait(&http, &server.url, repo.path(), &project).await;
    assert_eq!(third["status"], "ready", "{third:#}");
    let log = third["log"].as_str().unwrap_or_default();
    assert_eq!(runs_of(log, "npm install"), 1, "the changed dependency files were not installed anew:\n{log}");
    assert!(log.contains(&format!("COPY --from=eserveless/{project}.deps:")), "the install did not start from the last one's npm cache:\n{log}");
    let a = answer(http.post(format!("{}/invoke/{project}/API", server.url)).body("x").send().await.expect("invoke")).await;
    assert_eq!((a.status, a.body["version"].as_str()), (200, Some("v2")), "{}", a.raw);
    eprintln!("[{:>5.1}s] dependency change live", t0.elapsed().as_secs_f64());

    remove_project(&http, &server.url, &project).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_compiles_once_per_deployment_and_the_next_starts_from_its_caches() {
    require_docker!();
    let Stage { _serial, t0, project, scene: _scene, server, http } = stage("b-go").await;
    let d = docker();
    let repo = fixture_repo("go-app");
    let first = deploy_and_wait(&http, &server.url, repo.path(), &project).await;
    assert_eq!(first["status"], "ready", "{first:#}");
    let log = first["log"].as_str().unwrap_or_default();
    assert_eq!(runs_of(log, "go build -trimpath -ldflags"), 1, "one go build for the three functions:\n{log}");
    assert!(!log.contains(&format!("COPY --from=eserveless/{project}.cache")), "a first deployment has no cache:\n{log}");
    let cache = format!("eserveless/{project}.cache:latest");
    let cache_id = d.inspect_image(&cache).await.unwrap_or_else(|e| panic!("no cache image {cache} after a deployment: {e}")).id;
    eprintln!("[{:>5.1}s] first deployment live", t0.elapsed().as_secs_f64());

    let path = repo.path().join("functions.go");
    let text = std::fs::read_to_string(&path).expect("read");
    std::fs::write(&path, text.replace("const Version = \"v1\"", "const Version = \"v2\"")).expect("write");
    commit_all(repo.path(), "v2");
    let second = deploy_and_wait(&http, &server.url, repo.path(), &project).await;
    assert_eq!(second["status"], "ready", "{second:#}");
    let log = second["log"].as_str().unwrap_or_default();
    let first_cache = cache_id.clone().unwrap_or_default();
    assert!(log.contains(&format!("COPY --from={first_cache} /project-cache/ /cache/")), "the second deployment did not start from the first's caches:\n{log}");
    // The cache stage is built first on its own, then the whole image reuses it: one go build.
    assert_eq!(runs_of(log, "go build -trimpath -ldflags"), 1, "the shared image built the functions again:\n{log}");
    let a = answer(http.get(format!("{}/invoke/{project}/API", server.url)).send().await.expect("invoke")).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    assert_eq!(a.body["version"], "v2", "{}", a.raw);
    // One cache image per project: the previous one is gone.
    let now = d.inspect_image(&cache).await.expect("cache image").id;
    assert_ne!(now, cache_id, "the cache image was not renewed");
    assert!(d.inspect_image(cache_id.as_deref().unwrap_or("-")).await.is_err(), "the previous cache image was left behind");
    eprintln!("[{:>5.1}s] one-line change live", t0.elapsed().as_secs_f64());

    remove_project(&http, &server.url, &project).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_of_deployments_older_than_the_last_n_are_pruned() {
    require_docker!();
    let _serial = SERIAL.lock().await;
    let project = unique("b-keep");
    let scene = Scene::new(&[&project]).await;
    let server = Server::start_with_args(&scene.data, &scene.images, &["--keep-deployments", "2"]).await;
    let http = server.http();
    let d = docker();
    let repo = repo_with(&[
        (".eserveless.yaml", "runtime: node\nfunctions:\n  - name: API\n    type: http\n".to_string()),
        ("functions.js", "exports.API = (req, res) => res.end('1');\n".to_string()),
    ]);
    let mut commits = vec![git(repo.path(), &["rev-parse", "HEAD"])];
    let first = deploy_and_wait(&http, &server.url, repo.path(), &project).await;
    assert_eq!(first["status"], "ready", "{first:#}");
    for n in 2..=3 {
        std::fs::write(repo.path().join("functions.js"), format!("exports.API = (req, res) => res.end('{n}');\n")).expect("write");
        commits.push(commit_all(repo.path(), &format!("v{n}")));
        let dn = deploy_and_wait(&http, &server.url, repo.path(), &project).await;
        assert_eq!(dn["status"], "ready", "{dn:#}");
    }
    let tags = tags_of(&d, &project).await;
    let has = |c: &str| tags.iter().any(|t| t.ends_with(&format!(":{}", &c[..12])));
    assert!(!has(&commits[0]), "the first deployment's images outlived --keep-deployments 2: {tags:?}");
    assert!(has(&commits[1]) && has(&commits[2]), "the last two deployments' images are kept: {tags:?}");
    let base_of = |c: &str| format!("eserveless/{project}.base:{}", &c[..12]);
    assert!(tags.contains(&base_of(&commits[1])) && !tags.contains(&base_of(&commits[0])), "{tags:?}");
    remove_project(&http, &server.url, &project).await;
}

/// A `container` project: the repository's own Dockerfiles, run under the same sandbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_project_serves_its_own_image_on_port_under_the_sandbox() {
    require_docker!();
    let Stage { _serial, t0, project, scene, server, http } = stage("b-ctr").await;
    let node = scene.images.iter().find(|(k, _)| *k == "ESERVELESS_NODE_IMAGE").map(|(_, v)| v.clone()).expect("a node base image");
    // A small static file server (any image serving HTTP on $PORT would do), and a job.
    let server_js = r#"const http = require('http'), fs = require('fs'), path = require('path');
http.createServer((req, res) => {
  if (req.url === '/hang') return;
  if (req.url === '/crash') process.exit(3);
  if (req.url === '/who') {
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith('ESERVELESS_')));
    return res.end(JSON.stringify({ uid: process.getuid(), port: process.env.PORT, env, greeting: process.env.GREETING }));
  }
  const file = path.join('/srv', path.normalize(req.url).replace(/^(\.\.[/\\])+/, ''));
  fs.readFile(file, (err, data) => { if (err) { res.statusCode = 404; return res.end('not found'); } res.end(data); });
}).listen(process.env.PORT);
"#;
    let repo = repo_with(&[
        (
            ".eserveless.yaml",
            "runtime: container\nfunctions:\n  - name: Web\n    type: http\n    timeout: 2s\n    meta:\n      colour: blue\n  - name: Job\n    type: cron\n    schedule: \"*/2 * * * * *\"\n    dockerfile: jobs/Dockerfile\n    meta:\n      target: world\n  - name: Root\n    type: http\n    dockerfile: root/Dockerfile\n"
                .to_string(),
        ),
        ("Dockerfile", format!("FROM {node}\nCOPY site/ /srv/\nCOPY server.js /srv-bin/server.js\nCMD [\"node\", \"/srv-bin/server.js\"]\n")),
        ("server.js", server_js.to_string()),
        (".dockerignore", "secret.txt\n".to_string()),
        ("secret.txt", "not for the image".to_string()),
    ]);
    for (dir, file, text) in [
        ("site", "index.html", "<h1>static hello</h1>\n".to_string()),
        ("jobs", "Dockerfile", format!("FROM {node}\nCMD [\"sh\", \"-c\", \"echo JOB target=$ESERVELESS_TARGET uid=$(id -u)\"]\n")),
        // An image made to run as root and write outside /tmp.
        ("root", "Dockerfile", format!("FROM {node}\nCMD [\"sh\", \"-c\", \"echo started > /var/run-state && exec node -e 'require(`http`).createServer((q,s)=>s.end()).listen(process.env.PORT)'\"]\n")),
    ] {
        std::fs::create_dir_all(repo.path().join(dir)).expect("mkdir");
        std::fs::write(repo.path().join(dir).join(file), text).expect("write");
    }
    commit_all(repo.path(), "container project");
    let d = deploy_and_wait(&http, &server.url, repo.path(), &project).await;
    assert_eq!(d["status"], "ready", "{d:#}");
    assert_eq!(d["runtime"], "container");
    eprintln!("[{:>5.1}s] container project live", t0.elapsed().as_secs_f64());

    let a = answer(http.get(format!("{}/invoke/{project}/Web/index.html", server.url)).send().await.expect("invoke")).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    assert_eq!(a.raw, "<h1>static hello</h1>\n");
    let a = answer(http.get(format!("{}/invoke/{project}/Web/secret.txt", server.url)).send().await.expect("invoke")).await;
    assert_eq!(a.status, 404, "a file the .dockerignore leaves out: {}", a.raw);
    let a = answer(http.get(format!("{}/invoke/{project}/Web/who", server.url)).send().await.expect("invoke")).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    assert_eq!(a.body["uid"], 65534, "the image's process runs as the sandbox user: {}", a.raw);
    assert_eq!(a.body["port"], "8080", "{}", a.raw);
    assert_eq!(a.body["env"]["ESERVELESS_COLOUR"], "blue", "{}", a.raw);

    let a = answer(http.get(format!("{}/invoke/{project}/Web/hang", server.url)).send().await.expect("invoke")).await;
    let m = assert_error(&a, 504, "function_timeout");
    assert!(m.contains("Web"), "{m}");
    let a = answer(http.get(format!("{}/invoke/{project}/Web/crash", server.url)).send().await.expect("invoke")).await;
    assert!(a.status == 502 || a.status == 503, "{}", a.raw);
    // A secret reaches the image's process like meta does.
    let a = answer(
        http.post(format!("{}/api/projects/{project}/secrets", server.url)).json(&serde_json::json!({"set": {"GREETING": "psst"}})).send().await.expect("secrets"),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.raw);
    let began = std::time::Instant::now();
    loop {
        let a = answer(http.get(format!("{}/invoke/{project}/Web/who", server.url)).send().await.expect("invoke")).await;
        if a.status == 200 && a.raw.contains("psst") {
            break;
        }
        assert!(began.elapsed() < Duration::from_secs(30), "the secret never reached the container: {}", a.raw);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let run = wait_run(&http, &server.url, &project, "Job", 0, Duration::from_secs(60), |r| r["status"] == "succeeded").await;
    let output = run["output"].as_str().unwrap_or_default();
    assert!(output.contains("JOB target=world uid=65534"), "{run:#}");

    // The image that wants root's file system fails at start, and says why and what to do.
    let a = answer(http.get(format!("{}/invoke/{project}/Root", server.url)).send().await.expect("invoke")).await;
    assert!(a.status >= 500, "{}", a.raw);
    assert!(a.raw.contains("/var/run-state") && a.raw.contains("user 65534") && a.raw.contains("/tmp"), "{}", a.raw);
    eprintln!("[{:>5.1}s] sandbox refusal: {}", t0.elapsed().as_secs_f64(), a.raw);

    // A redeploy: the new site is served.
    std::fs::write(repo.path().join("site/index.html"), "<h1>static v2</h1>\n").expect("write");
    commit_all(repo.path(), "v2");
    let d2 = deploy_and_wait(&http, &server.url, repo.path(), &project).await;
    assert_eq!(d2["status"], "ready", "{d2:#}");
    let a = answer(http.get(format!("{}/invoke/{project}/Web/index.html", server.url)).send().await.expect("invoke")).await;
    assert_eq!(a.raw, "<h1>static v2</h1>\n");

    // A Dockerfile that is not there: the deployment fails, naming it; the live one serves on.
    std::fs::remove_file(repo.path().join("jobs/Dockerfile")).expect("rm");
    commit_all(repo.path(), "no job Dockerfile");
    let bad = deploy_and_wait(&http, &server.url, repo.path(), &project).await;
    assert_eq!(bad["status"], "failed", "{bad:#}");
    let error = bad["error"].as_str().unwrap_or_default();
    assert!(error.contains("jobs/Dockerfile is not a file in the repository") && error.contains("`dockerfile:` of `Job`"), "{error}");
    let a = answer(http.get(format!("{}/invoke/{project}/Web/index.html", server.url)).send().await.expect("invoke")).await;
    assert_eq!(a.status, 200, "{}", a.raw);

    remove_project(&http, &server.url, &project).await;
}
