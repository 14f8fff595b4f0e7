//! Each setting declared once, its origin carried to every error about its value: a flag
//! (`--x`), its variable (`--x (COSTGUARD_X)`), a config file key (`config file PATH line N,
//! key [section] name`); the layers ranked default < file < environment < flag; typos in
//! notification kinds and reasons refused with a suggestion, from every layer.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A config file `c.toml` in `dir` holding `text`.
fn config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("c.toml");
    std::fs::write(&p, text).expect("config");
    p
}

/// `costguard [args] -- true` with the config file `cfg` (when given): its exit code and stderr.
fn start(c: Command, cfg: Option<&Path>, args: &[&str]) -> (Option<i32>, String) {
    let mut c = c;
    if let Some(cfg) = cfg {
        c.arg("--config").arg(cfg);
    }
    c.args(args).args(["--", "true"]);
    let out = run(c);
    (out.status.code(), stderr(&out))
}

#[test]
fn a_bad_url_in_the_file_names_the_file_the_line_and_the_key() {
    let d = tempdir();
    let cfg = config(d.path(), "max-usd = 4\n\n[notify]\nwebhook = \"ftp://x\"\n");
    let (code, err) = start(costguard(), Some(&cfg), &[]);
    assert_eq!(code, Some(125), "{err}");
    let want = format!(
        "invalid config file {} line 4, key [notify] webhook \"ftp://x\": expected an http:// or https:// URL, not ftp://",
        cfg.display()
    );
    assert!(err.contains(&want), "{err}");
    assert!(!err.contains("--webhook"), "{err}");
}

#[test]
fn a_misspelt_kind_in_the_file_names_its_key_and_the_kind_meant() {
    let d = tempdir();
    let cfg = config(d.path(), "[notify]\non = \"killed,kiled\"\n");
    let (code, err) = start(costguard(), Some(&cfg), &[]);
    assert_eq!(code, Some(125), "{err}");
    let at = format!("config file {} line 2, key [notify] on", cfg.display());
    assert!(err.contains(&at), "{err}");
    assert!(err.contains("did you mean `killed`?"), "{err}");
    assert!(!err.contains("notify-on"), "{err}");
}

/// Every layer a filter comes from: the flag, the variable, `[notify] on` and
/// `[notify.on-channel]`; what the error must name for each.
fn filter_from(list: &str, layer: usize, dir: &Path) -> (Option<i32>, String, String) {
    let quoted = format!("{list:?}");
    match layer {
        0 => {
            let (c, e) = start(costguard(), None, &["--notify-on", list]);
            (c, e, "invalid --notify-on entry".into())
        }
        1 => {
            let mut cmd = costguard();
            cmd.env("COSTGUARD_NOTIFY_ON", list);
            let (c, e) = start(cmd, None, &[]);
            (
                c,
                e,
                "invalid --notify-on (COSTGUARD_NOTIFY_ON) entry".into(),
            )
        }
        2 => {
            let cfg = config(dir, &format!("quiet = true\n[notify]\non = {quoted}\n"));
            let (c, e) = start(costguard(), Some(&cfg), &[]);
            let at = format!("config file {} line 3, key [notify] on", cfg.display());
            (c, e, at)
        }
        _ => {
            let text = format!(
                "[notify]\ncommand = \"true\"\n[notify.on-channel]\ncommand = [{quoted}]\n"
            );
            let cfg = config(dir, &text);
            let (c, e) = start(costguard(), Some(&cfg), &[]);
            let at = format!(
                "config file {} line 4, key [notify.on-channel] command",
                cfg.display()
            );
            (c, e, at)
        }
    }
}

#[test]
fn a_misspelt_reason_or_kind_is_refused_from_every_layer_with_the_nearest_one() {
    let d = tempdir();
    let cases = [
        ("warning:budgett", "did you mean `budget`?"),
        ("killed:wal", "did you mean `wall`?"),
        ("agent-error:recrod", "did you mean `record`?"),
        ("phase-completed:kiled", "did you mean `killed`?"),
        ("warnng:budget", "did you mean `warning`?"),
        ("completed:usd", "completed events carry no reason"),
    ];
    for layer in 0..4 {
        for (list, hint) in cases {
            let (code, err, origin) = filter_from(list, layer, d.path());
            assert_eq!(code, Some(125), "{list} (layer {layer}): {err}");
            assert!(err.contains(&origin), "{list}: want {origin:?}: {err}");
            assert!(err.contains(hint), "{list}: want {hint:?}: {err}");
        }
    }
}

#[test]
fn every_kind_and_reason_spelt_right_is_taken_from_every_layer() {
    let d = tempdir();
    let list = "started:target,warning:budget,warning:checkpoint,warning:preemption,\
                warning:idle-suspected,warning:stall-suspected,idle:idle,stalled:stall,\
                killed:usd,killed:gpu_mem,killed:signal,phase-completed:completed,\
                phase-completed:wall,completed,failed:stopped,agent-error:release,\
                agent-error:holder-lost,agent-error:gpu-not-freed";
    for layer in 0..4 {
        let (code, err, _) = filter_from(list, layer, d.path());
        assert_eq!(code, Some(0), "layer {layer}: {err}");
    }
}

#[test]
fn the_file_beats_a_default_the_environment_beats_the_file_and_a_flag_beats_both() {
    let d = tempdir();
    let cfg = config(d.path(), "# a comment\nkill_grace = \"-1s\"\n");
    // The file over the flag's declared default (10s).
    let (code, err) = start(costguard(), Some(&cfg), &[]);
    assert_eq!(code, Some(125), "{err}");
    let at = format!(
        "(from config file {} line 2, key kill_grace)",
        cfg.display()
    );
    assert!(err.contains(&at), "{err}");
    // The environment over the file.
    let mut c = costguard();
    c.env("COSTGUARD_KILL_GRACE", "-2s");
    let (code, err) = start(c, Some(&cfg), &[]);
    assert_eq!(code, Some(125), "{err}");
    assert!(
        err.contains("\"-2s\": must not be negative (from --kill-grace (COSTGUARD_KILL_GRACE))"),
        "{err}"
    );
    // The flag over both: the file's and the environment's values are not used.
    let mut c = costguard();
    c.env("COSTGUARD_KILL_GRACE", "-2s");
    let (code, err) = start(c, Some(&cfg), &["--kill-grace", "-3s"]);
    assert_eq!(code, Some(125), "{err}");
    assert!(
        err.contains("\"-3s\": must not be negative (from --kill-grace)"),
        "{err}"
    );
    let mut c = costguard();
    c.env("COSTGUARD_KILL_GRACE", "-2s");
    let (code, err) = start(c, Some(&cfg), &["--kill-grace", "2s"]);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn each_kind_of_value_names_its_origin_from_the_file() {
    let d = tempdir();
    for (text, line, key, what) in [
        (
            "gpu = \"cuda\"\n",
            1,
            "gpu",
            "value \"cuda\": expected auto, nvml or none",
        ),
        (
            "provider = \"ibm\"\n",
            1,
            "provider",
            "value \"ibm\": expected auto, none",
        ),
        ("\nmax_usd = \"lots\"\n", 2, "max_usd", "invalid amount"),
        (
            "progress-regex = \"step \\\\d+\"\n",
            1,
            "progress-regex",
            "needs a capture group",
        ),
        ("listen = \"nowhere\"\n", 1, "listen", "expected HOST:PORT"),
        (
            "release = \"reboot\"\n",
            1,
            "release",
            "expected none, stop or terminate",
        ),
        (
            "[notify]\nflush = \"-1s\"\n",
            2,
            "[notify] flush",
            "must not be negative",
        ),
        (
            "[notify]\ntimeout = \"0s\"\n",
            2,
            "[notify] timeout",
            "must be greater than zero",
        ),
        (
            "[notify]\nemail-from = \"me@x\"\n",
            2,
            "[notify] email-from",
            "is for the email channel",
        ),
    ] {
        let cfg = config(d.path(), text);
        let mut c = costguard();
        // The test helper's own variables would win over the file's key (nothing starts:
        // every case is refused before the run).
        let var = format!("COSTGUARD_{}", key.to_uppercase().replace('-', "_"));
        c.env_remove(var);
        let (code, err) = start(c, Some(&cfg), &[]);
        assert_eq!(code, Some(125), "{text}: {err}");
        let at = format!("config file {} line {line}, key {key}", cfg.display());
        assert!(err.contains(&at), "{text}: want {at:?}: {err}");
        assert!(err.contains(what), "{text}: want {what:?}: {err}");
    }
}

#[test]
fn a_secret_file_named_by_the_file_is_named_with_its_key() {
    let d = tempdir();
    let missing = d.path().join("nope");
    let cfg = config(
        d.path(),
        &format!("[notify]\nslack_webhook_file = {:?}\n", path_str(&missing)),
    );
    let (code, err) = start(costguard(), Some(&cfg), &[]);
    assert_eq!(code, Some(125), "{err}");
    let want = format!(
        "cannot read config file {} line 2, key [notify] slack_webhook_file {}",
        cfg.display(),
        missing.display()
    );
    assert!(err.contains(&want), "{err}");
}

#[test]
fn the_config_file_itself_is_named_by_the_layer_that_gave_it() {
    let d = tempdir();
    let missing = d.path().join("missing.toml");
    let mut c = costguard();
    c.env("COSTGUARD_CONFIG", &missing);
    let (code, err) = start(c, None, &[]);
    assert_eq!(code, Some(125), "{err}");
    let want = format!(
        "cannot read --config (COSTGUARD_CONFIG) {}",
        missing.display()
    );
    assert!(err.contains(&want), "{err}");
    let cfg = config(
        d.path(),
        "[notify]\ncommand = \"true\"\n\n[notify.on-channel]\nslak = \"all\"\n",
    );
    let (code, err) = start(costguard(), Some(&cfg), &[]);
    assert_eq!(code, Some(125), "{err}");
    let want = format!(
        "invalid channel \"slak\" at config file {} line 5, key [notify.on-channel] slak",
        cfg.display()
    );
    assert!(err.contains(&want), "{err}");
}

#[test]
fn settings_that_need_each_other_name_where_each_came_from() {
    let d = tempdir();
    let cfg = config(d.path(), "max-wall = \"1h\"\nwarn-signal = \"USR1\"\n");
    let (code, err) = start(costguard(), Some(&cfg), &[]);
    assert_eq!(code, Some(125), "{err}");
    let want = format!(
        "config file {} line 2, key warn-signal needs --warn-before",
        cfg.display()
    );
    assert!(err.contains(&want), "{err}");
    let mut c = costguard();
    c.env("COSTGUARD_WARN_BEFORE", "2h")
        .env("COSTGUARD_WARN_SIGNAL", "USR1");
    let (code, err) = start(c, Some(&cfg), &[]);
    assert_eq!(code, Some(125), "{err}");
    let want = format!(
        "invalid --warn-before (COSTGUARD_WARN_BEFORE) 2h00m00s: the warning lead is not shorter than config file {} line 1, key max-wall 1h00m00s",
        cfg.display()
    );
    assert!(err.contains(&want), "{err}");
    let mut c = costguard();
    c.env("COSTGUARD_RELEASE", "terminate");
    let (code, err) = start(c, None, &[]);
    assert_eq!(code, Some(125), "{err}");
    assert!(
        err.contains("--release (COSTGUARD_RELEASE) terminate destroys the box"),
        "{err}"
    );
}

#[test]
fn the_agents_own_settings_name_their_layer_too() {
    let mut c = costguard();
    c.args(["agent", "--release", "stop"])
        .env("COSTGUARD_IDLE_BOX", "0s");
    let out = run(c);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("invalid --idle-box (COSTGUARD_IDLE_BOX) 0s: must be greater than zero"),
        "{err}"
    );
    let mut c = costguard();
    c.args(["agent", "--idle-box", "-1s"]);
    let out = run(c);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("must not be negative (from --idle-box)"),
        "{err}"
    );
}

/// The errors found once the box is looked at (no price for the dollar ceiling, no NVML for
/// `--gpu nvml` or for energy pricing) name where the setting came from, as the ones found
/// while reading the settings do.
#[test]
fn errors_found_at_the_start_name_the_setting_where_it_was_given() {
    let d = tempdir();
    let state = d.path().join("state");
    let with_state = || {
        let mut c = costguard();
        c.env("COSTGUARD_STATE_DIR", &state);
        c
    };
    let cfg = config(d.path(), "# the budget\nmax-usd = 5\n");
    let (code, err) = start(with_state(), Some(&cfg), &[]);
    assert_eq!(code, Some(125), "{err}");
    let want = format!(
        "max-usd = $5.00 (config file {} line 2) needs a price",
        cfg.display()
    );
    assert!(err.contains(&want), "{err}");
    assert!(!err.contains("--max-usd"), "{err}");

    let mut c = with_state();
    c.env("COSTGUARD_MAX_USD", "7");
    let (code, err) = start(c, None, &[]);
    assert_eq!(code, Some(125), "{err}");
    assert!(
        err.contains("--max-usd $7.00 (COSTGUARD_MAX_USD) needs a price"),
        "{err}"
    );

    let cfg = config(d.path(), "usd-per-kwh = 0.3\n");
    let (code, err) = start(with_state(), Some(&cfg), &[]);
    assert_eq!(code, Some(125), "{err}");
    let want = format!(
        "usd-per-kwh = $0.3000 (config file {} line 1) needs GPU energy readings from NVML",
        cfg.display()
    );
    assert!(err.contains(&want), "{err}");

    let mut c = with_state();
    c.env("COSTGUARD_GPU", "nvml").env(
        "COSTGUARD_NVML_LIB",
        d.path().join("no-such-libnvidia-ml.so"),
    );
    let (code, err) = start(c, None, &[]);
    assert_eq!(code, Some(125), "{err}");
    assert!(err.contains("--gpu nvml (COSTGUARD_GPU): "), "{err}");
}
