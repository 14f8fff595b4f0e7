//! A real Slurm: a single-node cluster on 127.0.0.1 (munged with a generated key, slurmctld,
//! slurmd, proctrack/linuxproc; `tests/slurm/cluster`), and `deploy/slurm/train.sbatch` as
//! submitted through `sbatch` — its costguard line, with only the site's details swapped (the
//! binary's path, a one-minute --time, no GPUs to ask for). Needs root and Debian's slurmctld,
//! slurmd, slurm-client and munge, as `scripts/test` installs them: fails, not skips, without.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
    /// slurmctld's and slurmd's ports, held by the test for as long as the cluster lives:
    /// nothing else takes them before the daemons bind them (with SO_REUSEADDR, which the
    /// held sockets allow).
    _ports: [HeldPort; 2],
}

impl Cluster {
    fn up(dir: &Path) -> Cluster {
        let ports = [hold_port(), hold_port()];
        let out = Command::new(repo_root().join("tests/slurm/cluster"))
            .args(["up", &path_str(dir)])
            .arg(ports[0].port.to_string())
            .arg(ports[1].port.to_string())
            .output()
            .expect("tests/slurm/cluster");
        let log = |f: &str| std::fs::read_to_string(dir.join("log").join(f)).unwrap_or_default();
        assert!(
            out.status.success(),
            "no Slurm here (needs root and slurmctld, slurmd, slurm-client, munge; scripts/test \
             installs them): {}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            log("slurmctld.log"),
            log("slurmd.log")
        );
        Cluster {
            dir: dir.to_path_buf(),
            conf: PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()),
            _ports: ports,
        }
    }

    fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        for (k, _) in std::env::vars() {
            if k.starts_with("COSTGUARD_") || k.starts_with("SLURM_") {
                c.env_remove(k);
            }
        }
        c.env("SLURM_CONF", &self.conf);
        // The job's costguard never asks this machine's network about itself.
        c.env("COSTGUARD_PROVIDER", "none");
        c
    }

    fn sbatch(&self, script: &Path, home: &Path) -> String {
        let out = self
            .cmd("sbatch")
            .arg("--parsable")
            .arg(script)
            .env("HOME", home)
            .current_dir(home)
            .output()
            .expect("sbatch");
        assert!(out.status.success(), "sbatch: {}", stderr(&out));
        out_text(&out).trim().to_string()
    }

    fn queued(&self) -> Vec<String> {
        let out: Output = self
            .cmd("squeue")
            .args(["-h", "-o", "%i"])
            .output()
            .expect("squeue");
        out_text(&out).lines().map(str::to_string).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Whatever a failed assertion left running ends with the cluster.
        let left = self.queued();
        if !left.is_empty() {
            let _ = self.cmd("scancel").args(&left).status();
            wait_until(Duration::from_secs(15), || self.queued().is_empty());
        }
        let _ = Command::new(repo_root().join("tests/slurm/cluster"))
            .args(["down", &path_str(&self.dir)])
            .status();
    }
}

/// The job: a step counter that checkpoints on USR1 and says where.
const JOB: &str = r#"
import os, signal, sys, time
name = sys.argv[1]
open(name + ".pid", "w").write(str(os.getpid()))
def checkpoint(sig, frame):
    print("checkpoint on USR1", flush=True)
    open(name + ".usr1", "w").write("saved")
signal.signal(signal.SIGUSR1, checkpoint)
for i in range(100000):
    print(f"step {i}", flush=True)
    time.sleep(0.5)
"#;

/// `deploy/slurm/train.sbatch` with the site's details swapped: this binary, one minute of
/// --time with the signal 55 s before its end (in `form`), no GRES, `job.py NAME` as the job.
fn batch_script(form: &str, name: &str) -> String {
    let sb =
        std::fs::read_to_string(repo_root().join("deploy/slurm/train.sbatch")).expect("sbatch");
    assert!(sb.contains("srun --ntasks=1 costguard \\"));
    assert!(sb.contains("#SBATCH --signal=B:USR1@300"));
    sb.replace("#SBATCH --time=06:30:00", "#SBATCH --time=1")
        .replace(
            "#SBATCH --signal=B:USR1@300",
            &format!("#SBATCH --signal={form}"),
        )
        .replace("#SBATCH --gres=gpu:8\n", "")
        .replace(
            "#SBATCH --job-name=bert-sweep",
            &format!("#SBATCH --job-name={name}"),
        )
        .replace(
            "srun --ntasks=1 costguard",
            &format!("srun --ntasks=1 {}", bin()),
        )
        .replace(
            "python train.py --config configs/bert.yaml",
            &format!("python3 job.py {name}"),
        )
}

/// The page's port a run printed in its `started` line (`page http://127.0.0.1:PORT/`).
fn metrics_port(out: &str) -> Option<u16> {
    let at = out.find("page http://127.0.0.1:")? + "page http://127.0.0.1:".len();
    out[at..].split('/').next()?.parse().ok()
}

#[test]
#[ignore = "root and a real Slurm (slurmctld, slurmd, sbatch, munged): scripts/test runs it"]
fn the_sbatch_example_runs_on_a_real_slurm() {
    let dir = tempdir();
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join(".config/costguard")).expect("home");
    // The example reads its Slack webhook from this file: a local port nothing answers on,
    // held for the test (the notifications queue in the outbox; this test is about Slurm).
    let slack = hold_port();
    std::fs::write(
        home.join(".config/costguard/slack-webhook"),
        format!("http://127.0.0.1:{}/slack", slack.port),
    )
    .expect("webhook file");
    std::fs::write(home.join("job.py"), JOB).expect("job.py");
    let cluster = Cluster::up(&dir.path().join("slurm"));

    // Both forms of the checkpoint signal, two jobs at once on the one node.
    let forms = [("USR1@55", "all-tasks"), ("B:USR1@55", "batch-shell")];
    let mut jobs = Vec::new();
    for (form, name) in forms {
        let script = home.join(format!("{name}.sbatch"));
        std::fs::write(&script, batch_script(form, name)).expect("script");
        jobs.push((name, cluster.sbatch(&script, &home)));
    }
    let out_of = |name: &str, id: &str| {
        std::fs::read_to_string(home.join(format!("{name}-{id}.out"))).unwrap_or_default()
    };

    // Slurm checks signal times every 30 s or so: allow two rounds.
    for (name, id) in &jobs {
        let marker = home.join(format!("{name}.usr1"));
        assert!(
            wait_until(Duration::from_secs(90), || marker.exists()),
            "{name}: the job never saw USR1 from --signal; its output:\n{}",
            out_of(name, id)
        );
    }
    let ports: Vec<Option<u16>> = jobs
        .iter()
        .map(|(n, id)| metrics_port(&out_of(n, id)))
        .collect();
    assert!(
        ports.iter().all(Option::is_some) && ports[0] != ports[1],
        "two jobs on one node must both serve metrics, on different ports: {ports:?}\n{}\n{}",
        out_of(jobs[0].0, &jobs[0].1),
        out_of(jobs[1].0, &jobs[1].1)
    );
    for p in ports.iter().flatten() {
        let m = http_get(*p, "/metrics").unwrap_or_default();
        assert!(m.contains("costguard_spend_dollars"), "port {p}: {m}");
    }

    // scancel ends each whole tree, and costguard records it as stopped, not failed.
    let status = cluster
        .cmd("scancel")
        .args(jobs.iter().map(|(_, id)| id))
        .status();
    assert!(status.map(|s| s.success()).unwrap_or(false), "scancel");
    assert!(
        wait_until(Duration::from_secs(30), || cluster.queued().is_empty()),
        "jobs still queued after scancel: {:?}",
        cluster.queued()
    );
    let state = home.join(".local/state/costguard");
    for (name, id) in &jobs {
        let run_id = format!("{name}-{id}");
        let job_pid: i32 = std::fs::read_to_string(home.join(format!("{name}.pid")))
            .expect("the job wrote its pid")
            .trim()
            .parse()
            .expect("pid");
        assert!(
            wait_until(Duration::from_secs(10), || !alive(job_pid)),
            "{name}: the job {job_pid} outlived scancel"
        );
        let l = ledger(&state, &run_id);
        assert_eq!(
            l["state"],
            "stopped",
            "{name}: the run id is the job's name and SLURM_JOB_ID, and scancel is a stop: {l}\n{}",
            out_of(name, id)
        );
        let out = out_of(name, id);
        assert!(out.contains("checkpoint on USR1"), "{name}: {out}");
        assert!(
            out.contains(&format!("run {run_id} started")),
            "{name}: {out}"
        );
    }
}
