//! Cloud boxes simulated in network namespaces: the helpers of tests/cloud.rs and
//! tests/stop_meter.rs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::*;

/// The Python that runs the provider API fakes: the test venv's (scripts/test installs
/// botocore there, to check EC2 signatures independently), else python3.
pub fn python_with_botocore() -> PathBuf {
    let venv = repo_root().join("target/test-venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// One line of a fake's request log per request.
pub fn log_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

pub fn fake() -> PathBuf {
    repo_root().join("tests/cloud/fake_box.py")
}

/// What a namespace run left behind.
pub struct Ran {
    pub out: Output,
    pub dir: PathBuf,
}

impl Ran {
    pub fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }
    pub fn stderr(&self) -> String {
        stderr(&self.out)
    }
    /// The metadata server's request log.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        self.file("requests.jsonl")
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
    pub fn ledger(&self, id: &str) -> serde_json::Value {
        ledger(&self.dir.join("state"), id)
    }
}

/// Runs `script` (costguard is `$CG`, the work dir `$D`) in a fresh network and mount
/// namespace whose 169.254.169.254 is served by the fake box `fake_args` (None: no server,
/// and no such address: the metadata server is unreachable).
pub fn in_box(dir: &Path, fake_args: Option<&str>, script: &str, env: &[(&str, &str)]) -> Ran {
    in_box_with_api(dir, fake_args, None, script, env)
}

/// `in_box` with a provider API (`fake_box.py MODE …` on 127.0.0.1 inside the namespace,
/// its URL in `$API`, its requests in `$D/api.jsonl`).
pub fn in_box_with_api(
    dir: &Path,
    fake_args: Option<&str>,
    api: Option<&str>,
    script: &str,
    env: &[(&str, &str)],
) -> Ran {
    let server = match fake_args {
        Some(args) => format!(
            "ip addr add 169.254.169.254/32 dev lo || exit 97
python3 \"$FAKE\" {args} --bind 169.254.169.254 --port 80 --log \"$D/requests.jsonl\" --ready \"$D/ready\" &
fake=$!
while [ ! -s \"$D/ready\" ]; do kill -0 $fake 2>/dev/null || exit 98; sleep 0.01; done"
        ),
        None => "fake=".into(),
    };
    let api = match api {
        Some(args) => format!(
            "\"$PY\" \"$FAKE\" {args} --log \"$D/api.jsonl\" --ready \"$D/api.ready\" &
api=$!
while [ ! -s \"$D/api.ready\" ]; do kill -0 $api 2>/dev/null || exit 98; sleep 0.01; done
export API=http://127.0.0.1:$(cat \"$D/api.ready\")"
        ),
        None => "api=".into(),
    };
    let full = format!(
        "set -u
ip link set lo up || exit 97
{server}
{api}
( {script} )
rc=$?
[ -n \"$fake\" ] && kill $fake
[ -n \"$api\" ] && kill $api
exit $rc"
    );
    let mut c = Command::new("unshare");
    default_signals(&mut c);
    c.args([
        "--net",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &full,
    ]);
    for (k, _) in std::env::vars() {
        if k.starts_with("COSTGUARD_")
            || k.starts_with("AWS_")
            || k.starts_with("RUNPOD_")
            || k.starts_with("CONTAINER_")
            || k == "GCE_METADATA_HOST"
            || k == "KUBERNETES_SERVICE_HOST"
            || k == "SLURM_JOB_ID"
        {
            c.env_remove(k);
        }
    }
    c.env("CG", bin())
        .env("FAKE", fake())
        .env("PY", python_with_botocore())
        .env("D", dir)
        .env("COSTGUARD_PROVIDER", "auto")
        .env("COSTGUARD_GPU", "none")
        .env("COSTGUARD_LISTEN", "127.0.0.1:0")
        .env("COSTGUARD_STATE_DIR", dir.join("state"))
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c
        .output()
        .expect("unshare (util-linux) must be installed: scripts/test runs as root, as CI does");
    let e = stderr(&out);
    assert!(
        !e.contains("unshare failed") && out.status.code() != Some(97),
        "network namespaces need root (CI runs as root): {e}"
    );
    assert_ne!(
        out.status.code(),
        Some(98),
        "the fake box did not start: {e}"
    );
    Ran {
        out,
        dir: dir.to_path_buf(),
    }
}
