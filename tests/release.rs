//! The release: `scripts/release` builds the x86_64 binary for glibc 2.17 and later with
//! cargo-zigbuild (Zig from PyPI), packs it with its SHA-256; the binary runs on the fake
//! NVML; `deploy/container/Containerfile` builds with Debian's buildah (offline: FROM a scratch
//! image holding the libraries `ldd` lists), and the image's root filesystem runs costguard as
//! its non-root user under `unshare` + `chroot` — `podman run` cannot start containers on this
//! kind of machine (crun: setrlimit RLIMIT_NOFILE: Operation not permitted). Needs root, as CI.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn sh(script: &str, envs: &[(&str, &Path)]) -> Output {
    let mut c = Command::new("bash");
    c.arg("-c").arg(script).current_dir(repo_root());
    c.env("COSTGUARD_PROVIDER", "none");
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().expect("bash")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// Runs scripts/release once per test binary; returns the released binary.
fn released() -> PathBuf {
    static DONE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let out = Command::new(repo_root().join("scripts/release"))
            .current_dir(repo_root())
            .env_remove("CARGO_TARGET_DIR")
            .output()
            .expect("scripts/release");
        assert!(out.status.success(), "scripts/release: {}", text(&out));
        let name = format!("costguard-{}-x86_64-linux-gnu", version());
        repo_root().join("dist").join(name).join("costguard")
    })
    .clone()
}

#[test]
#[ignore = "a release build with cargo-zigbuild and Zig (PyPI): scripts/test runs it"]
fn the_release_binary_needs_no_newer_glibc_than_2_17_and_is_summed() {
    let bin = released();
    let check = sh(
        "objdump -T \"$BIN\" | grep -o 'GLIBC_[0-9.]*' | sort -V | tail -1",
        &[("BIN", &bin)],
    );
    let highest = String::from_utf8_lossy(&check.stdout).trim().to_string();
    assert!(highest.starts_with("GLIBC_2."), "{}", text(&check));
    let minor: u32 = highest["GLIBC_2.".len()..]
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .expect("minor");
    assert!(minor <= 17, "the release binary needs {highest}");
    let name = format!("costguard-{}-x86_64-linux-gnu.tar.gz", version());
    let sum = sh(
        &format!("cd dist && sha256sum -c {name}.sha256 && tar -tzf {name}"),
        &[],
    );
    assert!(sum.status.success(), "{}", text(&sum));
    let listing = text(&sum);
    assert!(listing.contains(&format!("{name}: OK")), "{listing}");
    assert!(listing.contains("/costguard\n"), "{listing}");
}

#[test]
#[ignore = "a release build with cargo-zigbuild and Zig (PyPI): scripts/test runs it"]
fn the_release_binary_guards_a_job_on_the_fake_nvml() {
    let bin = released();
    let dir = tempdir();
    let scenario = serde_json::json!({"gpus": gpus(2, "NVIDIA A100-SXM4-80GB", 87)});
    let path = dir.path().join("scenario.json");
    std::fs::write(&path, scenario.to_string()).expect("scenario");
    let out = Command::new(&bin)
        // Priced from the built-in table by the model NVML reports: the started line names it.
        .args(["--gpu", "nvml", "--no-listen", "--max-wall", "1s"])
        .args(["--run-id", "release-check", "--", "sleep", "30"])
        .env("COSTGUARD_NVML_LIB", fake_nvml())
        .env("FAKE_NVML_SCENARIO", &path)
        .env("COSTGUARD_PROVIDER", "none")
        .env("COSTGUARD_STATE_DIR", dir.path().join("state"))
        .output()
        .expect("the release binary");
    let e = text(&out);
    assert_eq!(out.status.code(), Some(124), "{e}");
    assert!(e.contains("A100"), "the GPUs through NVML: {e}");
    assert_eq!(
        ledger(&dir.path().join("state"), "release-check")["state"],
        "killed"
    );
}

#[test]
#[ignore = "a release build with cargo-zigbuild, buildah and root: scripts/test runs it"]
fn the_container_image_builds_and_its_binary_runs_as_a_non_root_user() {
    let bin = released();
    let dir = tempdir();
    let scenario = serde_json::json!({"gpus": gpus(1, "NVIDIA H100 80GB HBM3", 64)});
    std::fs::write(dir.path().join("scenario.json"), scenario.to_string()).expect("scenario");
    // A private buildah store (vfs: no overlay mounts to undo), the base FROM scratch with the
    // binary's libraries, then the Containerfile as an operator builds it.
    let script = r#"
set -euo pipefail
B=(buildah --root "$D/store" --runroot "$D/run" --storage-driver vfs)
base=$("${B[@]}" from scratch)
mnt=$("${B[@]}" mount "$base")
for l in $(ldd "$BIN" | grep -o '/[^ ]*'); do mkdir -p "$mnt$(dirname "$l")"; cp -L "$l" "$mnt$l"; done
mkdir -p "$mnt/tmp" "$mnt/proc" "$mnt/dev"; chmod 1777 "$mnt/tmp"
"${B[@]}" umount "$base" >/dev/null
"${B[@]}" commit -q "$base" localhost/costguard-base:test >/dev/null
mkdir -p "$D/ctx"; cp "$BIN" "$D/ctx/costguard"
"${B[@]}" bud -q --build-arg BASE=localhost/costguard-base:test --build-arg VERSION="$VERSION" \
  -f deploy/container/Containerfile -t localhost/costguard:test "$D/ctx" >/dev/null
"${B[@]}" inspect --type image localhost/costguard:test > "$D/inspect.json"
python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["OCIv1"]["config"]))' "$D/inspect.json" > "$D/config.json"
ctr=$("${B[@]}" from localhost/costguard:test)
root=$("${B[@]}" mount "$ctr")
[ -e "$root/bin/sh" ] && echo "SHELL IN IMAGE"
# The test's own fixtures beside the image's files: the fake NVML, a job to guard.
cp -a "$root" "$D/rootfs"
mkdir -p "$D/rootfs/test"
cp "$NVML" "$D/rootfs/test/libnvidia-ml.so"
for l in $(ldd "$NVML" /bin/sleep | grep -v ':$' | grep -o '/[^ ]*'); do mkdir -p "$D/rootfs$(dirname "$l")"; cp -nL "$l" "$D/rootfs$l"; done
cp /bin/sleep "$D/rootfs/test/sleep"
cp "$D/scenario.json" "$D/rootfs/test/scenario.json"
user=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["User"])' "$D/config.json")
entry=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["Entrypoint"][0])' "$D/config.json")
set +e
unshare --mount --pid --fork bash -c '
  mount -t proc proc "$1/proc" && mount --rbind /dev "$1/dev" || exit 97
  export COSTGUARD_STATE_DIR=/tmp/state FAKE_NVML_SCENARIO=/test/scenario.json
  exec chroot --userspec="$2" "$1" "$3" --gpu nvml --nvml-lib /test/libnvidia-ml.so \
    --no-listen --run-id image-check --max-wall 1s -- /test/sleep 30
' _ "$D/rootfs" "$user" "$entry"
echo "exit $?"
"${B[@]}" umount "$ctr" >/dev/null
"${B[@]}" rm -a >/dev/null
"${B[@]}" rmi -a -f >/dev/null
"#;
    let out = sh(
        script,
        &[
            ("D", dir.path()),
            ("BIN", &bin),
            ("NVML", &fake_nvml()),
            ("VERSION", Path::new(&version())),
        ],
    );
    let t = text(&out);
    assert!(
        out.status.success(),
        "buildah (Debian's, installed by scripts/test) and root: {t}"
    );
    assert!(!t.contains("SHELL IN IMAGE"), "no shell in the image: {t}");
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("config.json")).expect("cfg"),
    )
    .expect("config JSON");
    assert_eq!(cfg["User"], "65532:65532", "{cfg}");
    assert_eq!(cfg["Entrypoint"][0], "/usr/local/bin/costguard", "{cfg}");
    let labels = &cfg["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.version"],
        version().as_str()
    );
    assert_eq!(labels["org.opencontainers.image.title"], "costguard");
    assert!(
        labels["org.opencontainers.image.source"].is_string(),
        "{labels}"
    );
    assert!(
        t.contains("exit 124"),
        "a ceiling kill inside the image: {t}"
    );
    assert!(
        t.contains("H100"),
        "the fake NVML from inside the image: {t}"
    );
    let l = ledger(&dir.path().join("rootfs/tmp/state"), "image-check");
    assert_eq!(l["state"], "killed", "{l}\n{t}");
}
