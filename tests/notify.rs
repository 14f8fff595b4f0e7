//! Notifications end to end: local receivers scripted to fail, a real Alertmanager, the
//! outbox across restarts, secrets kept out of every output.

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::receiver::{Receiver, Reply};
use common::*;

/// costguard with its own state directory.
fn guard(state: &std::path::Path) -> Command {
    let mut c = costguard();
    c.env("COSTGUARD_STATE_DIR", state);
    c
}

fn ids(reqs: &[common::receiver::Request]) -> BTreeSet<String> {
    reqs.iter()
        .filter_map(|r| r.json()["id"].as_str().map(str::to_string))
        .collect()
}

fn outbox_files(state: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(state.join("outbox"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.path().is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_event_arrives_through_refused_503_429_and_a_hang() {
    let state = tempdir();
    // Nothing listens on the port at first: connection refused (the port held, so nothing
    // else takes it meanwhile).
    let held = hold_port();
    let port = held.port;
    let mut c = guard(state.path());
    c.args(["--webhook", &format!("http://127.0.0.1:{port}/hook")])
        .args(["--notify-on", "all", "--notify-timeout", "1s"])
        .args(["--notify-flush", "40s", "--usd-per-hour", "36"])
        .args(["--", "sleep", "1"])
        .stderr(Stdio::piped());
    let child = c.spawn().expect("spawn");
    std::thread::sleep(Duration::from_millis(700));
    let rx = Receiver::listen(
        held.listen(),
        vec![
            Reply::Status(503),
            Reply::TooMany(1),
            Reply::Hang(Duration::from_secs(3)),
        ],
    );
    let out = child.wait_with_output().expect("wait");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("not delivered"), "{err}");
    let all = rx.all();
    let answered: Vec<u16> = all.iter().map(|r| r.answered).collect();
    assert!(
        answered.starts_with(&[503, 429, 0]),
        "scripted failures seen: {answered:?}"
    );
    let accepted = rx.accepted();
    let kinds: BTreeSet<String> = accepted
        .iter()
        .filter_map(|r| r.json()["kind"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["started".to_string(), "completed".to_string()]),
        "{accepted:?}"
    );
    // Retries resend the same ids: every attempt's id is one of the delivered ones.
    assert_eq!(ids(&all), ids(&accepted), "{all:?}");
    let body = accepted[0].json();
    for key in [
        "schema",
        "id",
        "run_id",
        "kind",
        "reason",
        "evidence",
        "spend_dollars",
        "rate_dollars_per_hour",
        "budget_dollars",
        "elapsed_seconds",
        "host",
    ] {
        assert!(body.get(key).is_some(), "webhook body lacks {key}: {body}");
    }
    assert_eq!(body["schema"], "costguard.event.v1");
    assert!(outbox_files(state.path()).is_empty(), "outbox emptied");
}

#[test]
fn what_was_not_delivered_goes_out_on_the_next_start() {
    let state = tempdir();
    // Refused (held, nothing listening) for the first run; answered for the second.
    let held = hold_port();
    let url = format!("http://127.0.0.1:{}/hook", held.port);
    let mut c = guard(state.path());
    c.args(["--webhook", &url, "--notify-flush", "1s", "--", "true"]);
    let out = run(c);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("1 notifications not delivered within 1.000s"),
        "{err}"
    );
    let left = outbox_files(state.path());
    assert_eq!(left.len(), 1, "{left:?}");
    let first_id = left[0].trim_end_matches(".webhook.json").to_string();

    let rx = Receiver::listen(held.listen(), vec![]);
    let mut c = guard(state.path());
    c.args(["--webhook", &url, "--", "true"]);
    let out = run(c);
    let err = stderr(&out);
    assert!(
        err.contains("delivering 1 notifications left by an earlier run"),
        "{err}"
    );
    let got = ids(&rx.accepted());
    assert!(got.contains(&first_id), "{first_id} in {got:?}");
    assert_eq!(got.len(), 2, "the old completion and the new one: {got:?}");
    assert!(outbox_files(state.path()).is_empty());
}

#[test]
fn a_dead_endpoint_never_delays_a_kill() {
    let state = tempdir();
    let rx = Receiver::start(vec![Reply::Hang(Duration::from_secs(60)); 20]);
    let pid_file = state.path().join("job.pid");
    let mut c = guard(state.path());
    c.args(["--webhook", &rx.url("/hook"), "--notify-on", "all"])
        .args([
            "--notify-flush",
            "1s",
            "--max-wall",
            "1s",
            "--kill-grace",
            "1s",
        ])
        .args([
            "--",
            "sh",
            "-c",
            &format!("echo $$ > {}; exec sleep 30", pid_file.display()),
        ])
        .stderr(Stdio::piped());
    let start = Instant::now();
    let child = c.spawn().expect("spawn");
    let pid = read_pid(&pid_file);
    assert!(wait_until(Duration::from_secs(5), || !alive(pid)));
    let killed_after = start.elapsed();
    let out = child.wait_with_output().expect("wait");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(124), "{err}");
    assert!(
        killed_after < Duration::from_millis(1900),
        "the kill waited for the webhook: {killed_after:?}"
    );
    assert!(err.contains("notifications not delivered"), "{err}");
    assert!(!rx.all().is_empty(), "the hung endpoint was tried");
}

#[test]
fn a_refusal_is_not_retried_and_is_kept_aside() {
    let state = tempdir();
    let rx = Receiver::start(vec![Reply::Status(400)]);
    let mut c = guard(state.path());
    c.args(["--webhook", &rx.url("/hook"), "--", "true"]);
    let out = run(c);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rx.all().len(), 1, "one attempt only: {:?}", rx.all());
    assert!(err.contains("webhook refused"), "{err}");
    assert!(err.contains("HTTP 400"), "{err}");
    let failed = std::fs::read_dir(state.path().join("outbox/failed"))
        .expect("failed dir")
        .count();
    assert_eq!(failed, 1);
}

#[test]
fn slack_and_pagerduty_payloads_have_their_documented_shapes() {
    let state = tempdir();
    let slack = Receiver::start(vec![]);
    let pd = Receiver::start(vec![]);
    // PagerDuty on a run that spends 10 % of its budget (a budget warning), then completes.
    let pager = || {
        let mut c = guard(state.path());
        c.env("COSTGUARD_PAGERDUTY_ROUTING_KEY", "routing-key-0123456789")
            .args(["--pagerduty-url", &pd.url("/v2/enqueue")])
            .args([
                "--usd-per-hour",
                "3600",
                "--max-usd",
                "10",
                "--warn-at",
                "10%",
            ]);
        c
    };
    // PagerDuty's own default leaves budget warnings to chat: nothing is triggered, so the
    // completion has nothing to resolve.
    let mut quiet = pager();
    quiet.args(["--", "sleep", "1.5"]);
    let out = run(quiet);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(pd.accepted().is_empty(), "no incident for a budget warning");
    // Asked for, the warning goes to PagerDuty too (the shapes below).
    let mut c = pager();
    c.env("COSTGUARD_SLACK_WEBHOOK", slack.url("/services/T0/B0/x"))
        .args(["--notify-on", "killed,failed,completed,warning:budget"])
        .args(["--", "sleep", "1.5"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let msgs = slack.accepted();
    assert_eq!(msgs.len(), 2, "budget warning and completion: {msgs:?}");
    for m in &msgs {
        let v = m.json();
        let text = v["text"].as_str().expect("text: the preview");
        assert!(
            text.contains(" on ") && text.contains(" of $10.00"),
            "{text}"
        );
        assert!(text.contains("| ran "), "{text}");
        for b in v["blocks"].as_array().expect("blocks") {
            let t = b["type"].as_str().expect("block type");
            assert!(["header", "section", "context"].contains(&t), "{b}");
        }
        assert_eq!(v["blocks"][0]["text"]["type"], "plain_text");
        assert!(v["blocks"][0]["text"]["text"].as_str().expect("h").len() <= 150);
    }
    assert!(msgs[0].json()["text"]
        .as_str()
        .unwrap()
        .contains("warning (budget)"));
    assert!(msgs[1].json()["text"]
        .as_str()
        .unwrap()
        .contains("completed"));

    let evs = pd.accepted();
    assert_eq!(evs.len(), 2, "a trigger, then its resolve: {evs:?}");
    let (t, r) = (evs[0].json(), evs[1].json());
    assert_eq!(t["routing_key"], "routing-key-0123456789");
    assert_eq!(t["event_action"], "trigger");
    assert!(t["payload"]["summary"].as_str().expect("summary").len() <= 1024);
    assert!(!t["payload"]["source"].as_str().expect("source").is_empty());
    assert!(["critical", "error", "warning", "info"]
        .contains(&t["payload"]["severity"].as_str().expect("severity")));
    assert!(t["dedup_key"].as_str().expect("key").ends_with("/budget"));
    assert_eq!(r["event_action"], "resolve");
    assert_eq!(r["dedup_key"], t["dedup_key"]);
    assert!(pd.all().iter().all(|x| x.path == "/v2/enqueue"));
}

#[test]
fn notify_test_reports_each_channel() {
    let ok = Receiver::start(vec![]);
    let bad = Receiver::start(vec![Reply::Status(500)]);
    let mut c = costguard();
    c.args(["notify", "test", "--webhook", &ok.url("/hook")])
        .args(["--slack-webhook", &bad.url("/services/T/B/secretpart")]);
    let out = run(c);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    assert!(text.contains("webhook: ok"), "{text}");
    assert!(text.contains("slack: FAILED: HTTP 500"), "{text}");
    let sent = ok.accepted();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].json()["test"], true);

    let mut c = costguard();
    c.args(["notify", "test"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("no notification channel configured"));
}

#[test]
fn secrets_never_appear_in_any_output() {
    let state = tempdir();
    let slack = Receiver::start(vec![Reply::Status(404)]);
    let pd = Receiver::start(vec![Reply::Status(503); 50]);
    let hook = Receiver::start(vec![]);
    let slack_url = slack.url("/services/T000/B000/SLACKSECRET123");
    let key_file = state.path().join("pd.key");
    std::fs::write(&key_file, "PDSECRETKEY42\n").expect("key file");
    let mut c = guard(state.path());
    c.env("COSTGUARD_SLACK_WEBHOOK", &slack_url)
        .env("COSTGUARD_PAGERDUTY_ROUTING_KEY_FILE", &key_file)
        .args(["--listen", "127.0.0.1:0", "--run-id", "secrets"])
        .args(["--pagerduty-url", &pd.url("/v2/enqueue")])
        .args(["--webhook", &hook.url("/hook"), "--notify-on", "all"])
        .args(["--notify-flush", "1s", "--max-wall", "2s"])
        .args(["--", "env", "HF_TOKEN=ENVSECRET88", "sh", "-c"])
        .args([
            "sleep 30 # --api-key JOBSECRET77",
            "--db-password",
            "PWSECRET99",
        ])
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn");
    let port = bound_port(state.path(), "secrets", &mut child, Duration::from_secs(5));
    let mut status = String::new();
    assert!(wait_until(Duration::from_secs(5), || {
        status = http_get(port, "/status").unwrap_or_default();
        status.contains("run_id")
    }));
    let metrics = http_get(port, "/metrics").unwrap_or_default();
    let out = child.wait_with_output().expect("wait");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(124), "{err}");
    let mut outbox = String::new();
    for dir in ["outbox", "outbox/failed"] {
        for e in std::fs::read_dir(state.path().join(dir))
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.path().is_file() {
                outbox += &std::fs::read_to_string(e.path()).unwrap_or_default();
            }
        }
    }
    // The run's own record: ledger, events, config snapshot, report, output.
    let mut record = String::new();
    for run in std::fs::read_dir(state.path().join("runs"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for f in std::fs::read_dir(run.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            record += &std::fs::read_to_string(f.path()).unwrap_or_default();
        }
    }
    assert!(record.contains("report"), "the run directory was written");
    let payloads: String = [&hook, &slack, &pd]
        .iter()
        .flat_map(|r| r.all())
        .map(|r| r.body)
        .collect();
    let secrets = [
        "SLACKSECRET123",
        "PDSECRETKEY42",
        "ENVSECRET88",
        "JOBSECRET77",
        "PWSECRET99",
    ];
    for (name, text) in [
        ("stderr", err.as_str()),
        ("/status", status.as_str()),
        ("/metrics", metrics.as_str()),
        ("outbox", outbox.as_str()),
        (
            "the run directory (ledger, events, config, report)",
            record.as_str(),
        ),
    ] {
        for s in secrets {
            assert!(!text.contains(s), "{s} leaked into {name}: {text}");
        }
    }
    // Receivers see their own key (PagerDuty's routing key is the payload's point), never
    // another's, and never the job's secrets.
    for s in ["SLACKSECRET123", "ENVSECRET88", "JOBSECRET77", "PWSECRET99"] {
        assert!(!payloads.contains(s), "{s} leaked into a payload");
    }
    assert!(
        status.contains("HF_TOKEN=[redacted]") && status.contains("--db-password [redacted]"),
        "the command line is shown, masked: {status}"
    );
    assert!(err.contains("slack refused"), "{err}");
    assert!(
        !outbox.is_empty(),
        "the refused and undelivered items were on disk to search"
    );

    // A bad secret value is reported without the value.
    let mut c = costguard();
    c.args(["--slack-webhook", "not-a-url-SECRETVALUE", "--", "true"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("invalid --slack-webhook"));
    assert!(!stderr(&out).contains("SECRETVALUE"), "{}", stderr(&out));
}

#[test]
#[ignore = "prometheus-alertmanager: scripts/test runs it"]
fn a_real_alertmanager_receives_the_kill_and_delivers_it() {
    let dir = tempdir();
    let hook = Receiver::start(vec![]);
    let cfg = dir.path().join("alertmanager.yml");
    std::fs::write(
        &cfg,
        format!(
            "route:\n  receiver: hook\n  group_by: ['alertname', 'run']\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: '{}'\n",
            hook.url("/am")
        ),
    )
    .expect("config");
    let mut am = Command::new("prometheus-alertmanager")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("data").display()
        ))
        .arg("--web.listen-address=127.0.0.1:0")
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("alertmanager.log")).expect("log file"))
        .spawn()
        .expect(
            "prometheus-alertmanager (Debian package) must be installed: scripts/test installs it",
        );
    let am_port = logged_port(
        &dir.path().join("alertmanager.log"),
        &mut am,
        Duration::from_secs(20),
    );
    let ready = wait_until(Duration::from_secs(20), || {
        http_get(am_port, "/-/ready").is_some()
    });
    let mut c = guard(dir.path());
    c.args(["--alertmanager", &format!("http://127.0.0.1:{am_port}")])
        .args(["--max-wall", "1s", "--", "sleep", "30"]);
    let out = run(c);
    let delivered = wait_until(Duration::from_secs(20), || !hook.accepted().is_empty());
    let api = http_get(am_port, "/api/v2/alerts").unwrap_or_default();
    end(am);
    assert!(ready, "Alertmanager never became ready");
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    assert!(
        delivered,
        "Alertmanager delivered nothing; its alerts: {api}"
    );
    let body = hook.accepted()[0].json();
    let alert = &body["alerts"][0];
    assert_eq!(alert["labels"]["alertname"], "CostguardKilled", "{body}");
    assert_eq!(alert["labels"]["reason"], "wall", "{body}");
    assert_eq!(alert["status"], "firing", "{body}");
    assert!(
        alert["annotations"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("killed (wall)")),
        "{body}"
    );
}

#[test]
fn notify_command_gets_the_event_on_stdin_and_a_failing_one_is_retried() {
    let state = tempdir();
    let seen = state.path().join("seen.jsonl");
    let tries = state.path().join("tries");
    // Fails the first time it runs, then appends each event it is given.
    let cmd = format!(
        "if [ ! -e {t} ]; then touch {t}; exit 3; fi; cat >> {s}; echo >> {s}",
        t = tries.display(),
        s = seen.display()
    );
    let mut c = guard(state.path());
    c.args(["--notify-command", &cmd, "--notify-on", "killed,completed"])
        .args(["--max-wall", "500ms", "--", "sleep", "5"]);
    let out = run(c);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(124), "{err}");
    assert!(err.contains("command: delivery of"), "{err}");
    let text = std::fs::read_to_string(&seen).expect("the command ran");
    let events: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect();
    assert_eq!(events.len(), 1, "{text}");
    assert_eq!(events[0]["kind"], "killed");
    assert_eq!(events[0]["reason"], "wall");
}

/// Asserts that no request any of `receivers` got carried a `Referer`.
fn no_referer(receivers: &[&Receiver]) {
    for r in receivers.iter().flat_map(|r| r.all()) {
        assert_eq!(
            r.header("referer"),
            None,
            "a Referer reached a receiver: {r:?}"
        );
    }
}

#[test]
fn a_redirect_is_not_followed_and_the_delivery_stays_undelivered() {
    let state = tempdir();
    let elsewhere = Receiver::start(vec![]);
    let hook = Receiver::start(vec![Reply::Redirect(302, elsewhere.url("/elsewhere")); 100]);
    let stop = state.path().join("stop");
    let mut c = guard(state.path());
    c.args(["--listen", "127.0.0.1:0", "--run-id", "redirected"])
        .args(["--webhook", &hook.url("/hook/T0/B0/HOOKSECRET")])
        .args(["--notify-on", "all", "--notify-flush", "1s"])
        .args([
            "--",
            "sh",
            "-c",
            &format!("while [ ! -e {} ]; do sleep 0.05; done", stop.display()),
        ])
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn");
    let port = bound_port(
        state.path(),
        "redirected",
        &mut child,
        Duration::from_secs(10),
    );
    // The started event's first answer is a failure, counted while the job still runs.
    let failed = r#"costguard_notifications_failed_total{channel="webhook"}"#;
    let mut metrics = String::new();
    let counted = wait_until(Duration::from_secs(10), || {
        metrics = http_get(port, "/metrics").unwrap_or_default();
        metrics
            .lines()
            .any(|l| l.starts_with(failed) && !l.ends_with(" 0"))
    });
    std::fs::write(&stop, "").expect("stop file");
    let out = child.wait_with_output().expect("wait");
    let err = stderr(&out);
    assert!(counted, "no failure counted in /metrics: {metrics}");
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        elsewhere.all().is_empty(),
        "the redirect was followed: {:?}",
        elsewhere.all()
    );
    let tried = hook.all();
    assert!(!tried.is_empty());
    assert!(
        tried
            .iter()
            .all(|r| r.method == "POST" && r.answered == 302),
        "{tried:?}"
    );
    let why = "(HTTP 302 Found (redirects are not followed))";
    assert!(
        err.contains(&format!("failed {why}; retrying")),
        "the first failure is told: {err}"
    );
    assert!(
        err.contains("2 notifications not delivered within 1.000s"),
        "started and completed are not counted delivered: {err}"
    );
    let listed = err
        .lines()
        .filter(|l| l.starts_with("costguard:   webhook: ") && l.ends_with(why))
        .count();
    assert_eq!(listed, 2, "each listed with its last error: {err}");
    let left = outbox_files(state.path());
    assert_eq!(left.len(), 2, "both stay in the outbox: {left:?}");
    assert!(!err.contains("HOOKSECRET"), "{err}");
    no_referer(&[&hook, &elsewhere]);
}

#[test]
fn a_permanent_redirect_is_refused_and_kept_aside() {
    let state = tempdir();
    let elsewhere = Receiver::start(vec![]);
    let hook = Receiver::start(vec![Reply::Redirect(301, elsewhere.url("/new"))]);
    let mut c = guard(state.path());
    c.args(["--webhook", &hook.url("/hook"), "--", "true"]);
    let out = run(c);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        elsewhere.all().is_empty(),
        "followed: {:?}",
        elsewhere.all()
    );
    assert_eq!(hook.all().len(), 1, "one attempt only: {:?}", hook.all());
    assert!(
        err.contains("webhook refused")
            && err.contains("(HTTP 301 Moved Permanently (redirects are not followed))"),
        "{err}"
    );
    let failed = std::fs::read_dir(state.path().join("outbox/failed"))
        .expect("failed dir")
        .count();
    assert_eq!(failed, 1);
    no_referer(&[&hook, &elsewhere]);
}

#[test]
fn no_channel_follows_a_redirect_or_sends_a_referer() {
    let elsewhere = Receiver::start(vec![]);
    let to = elsewhere.url("/elsewhere?from=redirect");
    let slack = Receiver::start(vec![Reply::Redirect(302, to.clone())]);
    let hook = Receiver::start(vec![Reply::Redirect(307, to.clone())]);
    let am = Receiver::start(vec![Reply::Redirect(303, to.clone())]);
    let pd = Receiver::start(vec![Reply::Redirect(308, to.clone())]);
    let mut c = costguard();
    c.args(["notify", "test"])
        .args(["--slack-webhook", &slack.url("/services/T/B/SLACKSECRET")])
        .args(["--webhook", &hook.url("/hook")])
        .args(["--alertmanager", &am.url("")])
        .args(["--pagerduty-url", &pd.url("/v2/enqueue")])
        .env("COSTGUARD_PAGERDUTY_ROUTING_KEY", "routing-key-0123456789");
    let out = run(c);
    let text = out_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    for line in [
        "slack: FAILED: HTTP 302 Found (redirects are not followed)",
        "webhook: FAILED: HTTP 307 Temporary Redirect (redirects are not followed)",
        "alertmanager: FAILED: HTTP 303 See Other (redirects are not followed)",
        "pagerduty: FAILED: HTTP 308 Permanent Redirect (redirects are not followed)",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
    assert!(
        elsewhere.all().is_empty(),
        "followed: {:?}",
        elsewhere.all()
    );
    for r in [&slack, &hook, &am, &pd] {
        assert_eq!(r.all().len(), 1, "{:?}", r.all());
    }
    no_referer(&[&slack, &hook, &am, &pd, &elsewhere]);
}

#[test]
fn a_malformed_url_is_refused_at_start_naming_where_it_came_from() {
    let dir = tempdir();
    // `after` is what follows the origin in the error, exactly.
    let refused = |c: &mut Command, origin: &str, after: &str| {
        c.args(["--", "true"]);
        let out = c.output().expect("run costguard");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(125), "{origin}: {err}");
        let want = format!("costguard: error: invalid {origin}{after}\n");
        assert!(err.contains(&want), "{want:?} in {err:?}");
        assert!(!err.contains("URLSECRET"), "{origin}: {err}");
    };
    let file = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let bad = [
        ("http://[::1", r#" "http://[::1": invalid IPv6 address"#),
        (
            "http://host:99999/x/URLSECRET",
            r#" "http://host:99999/[redacted]": invalid port number"#,
        ),
        (
            "ftp://x/URLSECRET",
            r#" "ftp://x/[redacted]": expected an http:// or https:// URL, not ftp://"#,
        ),
        (
            "not a url URLSECRET",
            ": expected an http:// or https:// URL (relative URL without a base; \
             the value is not shown: it may be a secret)",
        ),
    ];
    for (i, (url, after)) in bad.into_iter().enumerate() {
        refused(costguard().args(["--webhook", url]), "--webhook", after);
        let mut c = costguard();
        c.env("COSTGUARD_WEBHOOK", url);
        refused(&mut c, "--webhook (COSTGUARD_WEBHOOK)", after);
        let cfg = file(
            &format!("{i}.toml"),
            format!("[notify]\nwebhook = {url:?}\n"),
        );
        let mut c = costguard();
        c.arg("--config").arg(&cfg);
        let at = format!("config file {} line 2, key [notify] webhook", cfg.display());
        refused(&mut c, &at, after);
    }
    // Every other URL setting, each from one of its origins.
    let (url, after) = bad[1];
    let mut c = costguard();
    c.env("COSTGUARD_SLACK_WEBHOOK", url);
    refused(&mut c, "--slack-webhook (COSTGUARD_SLACK_WEBHOOK)", after);
    let hook = file("hook.url", format!("{url}\n"));
    let mut c = costguard();
    c.arg("--webhook-file").arg(&hook);
    refused(&mut c, &format!("--webhook-file {}", hook.display()), after);
    let cfg = file(
        "slack.toml",
        format!(
            "[notify]\nslack-webhook-file = {:?}\n",
            hook.display().to_string()
        ),
    );
    let mut c = costguard();
    c.arg("--config").arg(&cfg);
    refused(
        &mut c,
        &format!(
            "config file {} line 2, key [notify] slack-webhook-file {}",
            cfg.display(),
            hook.display()
        ),
        after,
    );
    refused(
        costguard().args(["--alertmanager", url]),
        "--alertmanager",
        after,
    );
    let cfg = file(
        "pd.toml",
        format!("[notify]\npagerduty-routing-key = \"k-0123456789\"\npagerduty-url = {url:?}\n"),
    );
    let mut c = costguard();
    c.arg("--config").arg(&cfg);
    let at = format!(
        "config file {} line 3, key [notify] pagerduty-url",
        cfg.display()
    );
    refused(&mut c, &at, after);
    let mut c = costguard();
    c.args(["--fleet-max-usd", "10", "--prometheus-url", url]);
    refused(&mut c, "--prometheus-url", after);
}
