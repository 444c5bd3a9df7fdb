//! The Python runtime's own suite (`tests/runtimes/python/`, Python's unittest): the HTTP
//! wrapper (plain functions, WSGI, ASGI, streaming, large bodies, signals), the cron wrapper,
//! the build-time check, and the templates built into images with the real engine (the
//! wrapper suite runs again inside the image as uid 65534 on a read-only root, with Flask and
//! Starlette from PyPI). Run here so that the README's one test command runs it too; its
//! Docker tests fail, never skip, when `CI=true`.

use std::process::Command;

#[test]
fn the_python_runtime_suite_passes() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("python3")
        .args(["-m", "unittest", "discover", "-v", "-s", "tests/runtimes/python", "-t", "tests/runtimes/python"])
        .current_dir(root)
        .output()
        .expect("python3 runs (apt-get install python3 python3-h11)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{text}");
    assert!(out.status.success(), "the Python runtime suite failed:\n{text}");
    let ran = text.lines().find(|l| l.starts_with("Ran ")).unwrap_or("");
    assert!(ran.starts_with("Ran ") && !ran.starts_with("Ran 0 "), "the suite ran no test: {ran}");
}
