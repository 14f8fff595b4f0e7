//! Stop the meter: after a kill (with `--release-on end`, any ending but a stop; always when
//! the idle-box watchdog fired), release the box with the credential the
//! box already has — AWS `StopInstances`/`TerminateInstances` signed (SigV4, `aws-sigv4`) with
//! the instance role's credentials from IMDSv2, GCP `instances.stop`/`delete` with the default
//! service account's token, Azure `deallocate`/delete with the managed identity's token,
//! RunPod `podStop`/`podTerminate` with the pod's key, Vast's instance state with its key —
//! or `sh -c CMD` (`--release-command`) on any box. A plan is made and checked at the start;
//! the call is made once per run id, after the report and the kill alert are out.

use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use super::metadata::{self, Endpoints};
use super::{BoxInfo, Detection, Provider};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    None,
    Stop,
    Terminate,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" | "off" => Some(Mode::None),
            "stop" => Some(Mode::Stop),
            "terminate" => Some(Mode::Terminate),
            _ => None,
        }
    }
}

/// Which endings release the box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum On {
    /// Any ceiling or watchdog kill.
    #[default]
    Kill,
    /// Every ending except a stop by a person (Ctrl-C, `costguard stop`).
    End,
}

impl On {
    pub fn parse(s: &str) -> Option<On> {
        match s.trim().to_ascii_lowercase().as_str() {
            "kill" => Some(On::Kill),
            "end" => Some(On::End),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub mode: Mode,
    /// `--release-command`: run instead of a provider call (giving it turns release on).
    pub command: Option<String>,
    pub on: On,
    /// How long a failing release is retried (with backoff) before it is given up.
    pub retry_for: Duration,
}

impl Settings {
    pub fn enabled(&self) -> bool {
        self.mode != Mode::None || self.command.is_some()
    }
}

/// How the meter is stopped on this box.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    Command(String),
    Aws {
        instance_id: String,
        region: String,
        endpoint: String,
    },
    Gcp {
        project: String,
        zone: String,
        name: String,
        base: String,
    },
    Azure {
        resource_id: String,
        base: String,
    },
    Runpod {
        pod: String,
        url: String,
    },
    Vast {
        id: String,
        base: String,
    },
    /// Nothing to call: the scheduler ends what bills when costguard exits.
    Scheduler(&'static str),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub method: Method,
    pub terminate: bool,
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|s| !s.trim().is_empty())
}

fn base(var: &str, default: &str) -> String {
    env(var)
        .unwrap_or_else(|| default.to_string())
        .trim_end_matches('/')
        .to_string()
}

impl Plan {
    /// "aws StopInstances i-0abc in us-west-2", as the alert and `costguard check` say it.
    pub fn describe(&self) -> String {
        let t = self.terminate;
        match &self.method {
            Method::Command(c) => format!("`{}` (--release-command)", crate::redact::text(c)),
            Method::Aws {
                instance_id,
                region,
                ..
            } => format!(
                "aws {} {instance_id} in {region} with the instance role's credentials",
                if t {
                    "TerminateInstances"
                } else {
                    "StopInstances"
                }
            ),
            Method::Gcp {
                project,
                zone,
                name,
                ..
            } => format!(
                "gcp instances.{} {name} in {project}/{zone} with the default service account",
                if t { "delete" } else { "stop" }
            ),
            Method::Azure { resource_id, .. } => format!(
                "azure {} {} with the managed identity",
                if t { "delete" } else { "deallocate" },
                resource_id.rsplit('/').next().unwrap_or(resource_id)
            ),
            Method::Runpod { pod, .. } => format!(
                "runpod {} {pod} with the pod's RUNPOD_API_KEY",
                if t { "podTerminate" } else { "podStop" }
            ),
            Method::Vast { id, .. } => format!(
                "vast {} instance {id} with its CONTAINER_API_KEY",
                if t { "destroy" } else { "stop" }
            ),
            Method::Scheduler(s) => s.to_string(),
        }
    }

    /// What keeps billing after the release, in words for the report.
    pub fn still_bills(&self) -> &'static str {
        match (&self.method, self.terminate) {
            (Method::Aws { .. }, false) => {
                "the instance's EBS volumes (and any Elastic IP) keep billing while it is stopped"
            }
            (Method::Aws { .. }, true) => {
                "EBS volumes not marked DeleteOnTermination, snapshots and Elastic IPs keep billing"
            }
            (Method::Gcp { .. }, false) => {
                "persistent disks and static IPs keep billing while the instance is stopped"
            }
            (Method::Gcp { .. }, true) => {
                "disks not set to auto-delete, snapshots and static IPs keep billing"
            }
            (Method::Azure { .. }, false) => {
                "managed disks and public IPs keep billing while the VM is deallocated"
            }
            (Method::Azure { .. }, true) => {
                "managed disks, public IPs and NICs of the VM keep billing until deleted"
            }
            (Method::Runpod { .. }, false) => {
                "the pod's volume disk keeps billing while it is stopped"
            }
            (Method::Runpod { .. }, true) => "network volumes attached to the pod keep billing",
            (Method::Vast { .. }, false) => {
                "the instance's storage keeps billing while it is stopped"
            }
            (Method::Vast { .. }, true) => "nothing of the instance (destroyed with its storage)",
            (Method::Command(_), _) => "whatever the release command leaves running",
            (Method::Scheduler(_), _) => {
                "whatever the scheduler keeps: the node is its own to release"
            }
        }
    }

    /// What `terminate` destroys, for `costguard check` (None for a stop).
    pub fn destroys(&self) -> Option<&'static str> {
        if !self.terminate {
            return None;
        }
        Some(match &self.method {
            Method::Aws { .. } => "the instance and its EBS volumes marked DeleteOnTermination (the root volume by default): their data is gone",
            Method::Gcp { .. } => "the instance and its disks set to auto-delete (the boot disk by default): their data is gone",
            Method::Azure { .. } => "the VM (its disks stay unless set to delete with it)",
            Method::Runpod { .. } => "the pod and its volume disk: its data is gone",
            Method::Vast { .. } => "the instance and its storage: its data is gone",
            Method::Command(_) | Method::Scheduler(_) => "whatever the command destroys",
        })
    }
}

/// The plan for this box, or why there is none (an error the start refuses with, exit 125).
pub fn plan(s: &Settings, d: &Detection) -> Result<Option<Plan>, String> {
    if !s.enabled() {
        return Ok(None);
    }
    let terminate = s.mode == Mode::Terminate;
    if let Some(c) = &s.command {
        return Ok(Some(Plan {
            method: Method::Command(c.clone()),
            terminate,
        }));
    }
    let flag = if terminate { "terminate" } else { "stop" };
    let instead = "or give --release-command CMD (e.g. 'sudo shutdown -h now') to stop it your way";
    if d.info.context.contains(&"kubernetes") {
        return Ok(Some(Plan {
            method: Method::Scheduler("nothing to call on Kubernetes: the pod completes when costguard exits (a Job with backoffLimit: 0 is not restarted); the node is the autoscaler's to release"),
            terminate: false,
        }));
    }
    if d.info.context.contains(&"slurm") {
        return Ok(Some(Plan {
            method: Method::Scheduler("nothing to call under Slurm: the allocation ends with the job step when costguard exits"),
            terminate: false,
        }));
    }
    let i = &d.info;
    let need = |what: &str| format!("--release {flag}: {what}; {instead}");
    let method = match i.provider {
        None => return Err(need("this box named no provider (no metadata server answered, no provider in the environment)")),
        Some(Provider::Lambda) => return Err(need("Lambda Cloud gives the box no credential to stop itself")),
        Some(Provider::Aws) => aws_method(i).ok_or_else(|| need("the metadata server gave no instance id or region"))?,
        Some(Provider::Gcp) => match (&i.project, &i.zone, &i.name) {
            (Some(p), Some(z), Some(n)) => Method::Gcp {
                project: p.clone(),
                zone: z.clone(),
                name: n.clone(),
                base: base("COSTGUARD_GCP_COMPUTE_URL", "https://compute.googleapis.com"),
            },
            _ => return Err(need("the metadata server gave no project, zone or instance name")),
        },
        Some(Provider::Azure) => match &i.resource_id {
            Some(r) => Method::Azure {
                resource_id: r.clone(),
                base: base("COSTGUARD_AZURE_ARM_URL", "https://management.azure.com"),
            },
            None => return Err(need("IMDS gave no subscription, resource group or VM name")),
        },
        Some(Provider::Runpod) => match (&i.instance_id, env("RUNPOD_API_KEY")) {
            (Some(pod), Some(_)) => Method::Runpod {
                pod: pod.clone(),
                url: super::pods::runpod_url(),
            },
            _ => return Err(need("RUNPOD_API_KEY is not set (RunPod sets it in the pod's environment)")),
        },
        Some(Provider::Vast) => match (&i.instance_id, env("CONTAINER_API_KEY")) {
            (Some(id), Some(_)) => Method::Vast {
                id: id.clone(),
                base: super::pods::vast_url(),
            },
            _ => return Err(need("CONTAINER_API_KEY is not set (Vast's docs: export it from /etc/environment)")),
        },
    };
    Ok(Some(Plan { method, terminate }))
}

fn aws_method(i: &BoxInfo) -> Option<Method> {
    let region = i.region.clone()?;
    let endpoint = env("AWS_ENDPOINT_URL_EC2")
        .or_else(|| env("AWS_ENDPOINT_URL"))
        .unwrap_or_else(|| format!("https://ec2.{region}.amazonaws.com"))
        .trim_end_matches('/')
        .to_string();
    Some(Method::Aws {
        instance_id: i.instance_id.clone()?,
        region,
        endpoint,
    })
}

/// One attempt's failure: whether trying again may help.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub message: String,
    pub retry: bool,
}

impl Failure {
    fn retry(m: impl Into<String>) -> Failure {
        Failure {
            message: m.into(),
            retry: true,
        }
    }
}

type Attempt = Result<String, Failure>;

/// Classifies an HTTP answer: 2xx done; 429 and 5xx worth another try; the rest (401, 403,
/// 404: a credential without the right, a box that is not there) are reported as they are
/// and tried again too, within the bounded retry time (a role's policy can be fixed).
async fn answer(what: &str, r: reqwest::Response) -> Attempt {
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    if status.is_success() {
        return Ok(format!("{what}: HTTP {}", status.as_u16()));
    }
    let detail: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    let detail: String = detail.chars().take(300).collect();
    Err(Failure::retry(
        crate::redact::text(&format!(
            "{what} answered HTTP {}: {detail}",
            status.as_u16()
        ))
        .into_owned(),
    ))
}

/// GraphQL answers 200 with `errors` when the call failed.
async fn graphql(what: &str, r: reqwest::Response) -> Attempt {
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if let Some(e) = v["errors"][0]["message"].as_str() {
        return Err(Failure::retry(format!("{what}: {e}")));
    }
    if !status.is_success() {
        return Err(Failure::retry(format!(
            "{what} answered HTTP {}",
            status.as_u16()
        )));
    }
    Ok(format!("{what}: HTTP {}", status.as_u16()))
}

fn send_error(what: &str, e: reqwest::Error) -> Failure {
    Failure::retry(crate::redact::text(&format!("{what}: {e}")).into_owned())
}

/// One release attempt. `ledger` gives the release command its environment.
pub async fn attempt(plan: &Plan, ledger: &crate::ledger::Ledger) -> Attempt {
    let client = metadata::client();
    match &plan.method {
        Method::Command(c) => command(c, ledger).await,
        Method::Scheduler(s) => Ok(s.to_string()),
        Method::Aws { .. } => aws(&client, plan, false).await,
        Method::Gcp { .. } => gcp(&client, plan).await,
        Method::Azure { .. } => azure(&client, plan).await,
        Method::Runpod { pod, url } => {
            let key = env("RUNPOD_API_KEY").unwrap_or_default();
            let op = if plan.terminate {
                "podTerminate"
            } else {
                "podStop"
            };
            let q = format!(
                "mutation {{ {op}(input: {{podId: {}}}) }}",
                serde_json::to_string(pod).unwrap_or_default()
            );
            let r = client
                .post(url)
                .bearer_auth(key)
                .json(&json!({ "query": q }))
                .send()
                .await
                .map_err(|e| send_error("RunPod API", e))?;
            graphql(&format!("runpod {op} {pod}"), r).await
        }
        Method::Vast { id, base } => {
            let key = env("CONTAINER_API_KEY").unwrap_or_default();
            let url = format!("{base}/api/v0/instances/{id}/");
            let req = if plan.terminate {
                client.delete(url)
            } else {
                client.put(url).json(&json!({ "state": "stopped" }))
            };
            let r = req
                .bearer_auth(key)
                .send()
                .await
                .map_err(|e| send_error("Vast API", e))?;
            answer(&format!("vast instance {id}"), r).await
        }
    }
}

/// `sh -c CMD` with the run's variables, bounded.
async fn command(c: &str, ledger: &crate::ledger::Ledger) -> Attempt {
    let mut cmd = crate::shell::with_run_facts(c, ledger);
    cmd.kill_on_drop(true).process_group(0);
    let status = tokio::time::timeout(Duration::from_secs(120), cmd.status()).await;
    match status {
        Ok(Ok(s)) if s.success() => Ok(format!("`{}` exited 0", crate::redact::text(c))),
        Ok(Ok(s)) => Err(Failure::retry(format!("the release command {s}"))),
        Ok(Err(e)) => Err(Failure::retry(format!(
            "the release command could not start: {e}"
        ))),
        Err(_) => Err(Failure::retry("the release command did not end within 2m")),
    }
}

/// AWS: the instance role's credentials from IMDSv2, then a SigV4-signed EC2 query call.
/// `dry_run` asks EC2 whether the call would be allowed (412 DryRunOperation: yes).
async fn aws(client: &reqwest::Client, plan: &Plan, dry_run: bool) -> Attempt {
    let Method::Aws {
        instance_id,
        region,
        endpoint,
    } = &plan.method
    else {
        return Err(Failure::retry("not an AWS plan"));
    };
    let creds = aws_credentials(client).await?;
    let action = if plan.terminate {
        "TerminateInstances"
    } else {
        "StopInstances"
    };
    let mut body = format!("Action={action}&InstanceId.1={instance_id}&Version=2016-11-15");
    if dry_run {
        body += "&DryRun=true";
    }
    let url = format!("{endpoint}/");
    let headers = sigv4(&creds, region, &url, body.as_bytes())?;
    let mut req = client
        .post(&url)
        .header(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        )
        .body(body);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let r = req.send().await.map_err(|e| send_error("EC2", e))?;
    let what = format!("aws {action} {instance_id}");
    if dry_run {
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        return if text.contains("DryRunOperation") {
            Ok(format!("{what}: allowed (EC2 DryRun)"))
        } else if text.contains("UnauthorizedOperation") {
            Err(Failure {
                message: format!(
                    "{what}: not allowed for the instance role (EC2 DryRun: UnauthorizedOperation)"
                ),
                retry: false,
            })
        } else {
            Err(Failure::retry(format!(
                "{what}: EC2 DryRun answered HTTP {status}"
            )))
        };
    }
    answer(&what, r).await
}

struct AwsCreds {
    key: String,
    secret: String,
    token: Option<String>,
}

async fn aws_credentials(client: &reqwest::Client) -> Result<AwsCreds, Failure> {
    let ep = Endpoints::from_env();
    let base = ep
        .aws
        .ok_or_else(|| Failure::retry("AWS_EC2_METADATA_DISABLED: no instance role credentials"))?;
    let token = metadata::aws_token(client, &base)
        .await
        .ok_or_else(|| Failure::retry("IMDSv2 gave no session token"))?;
    crate::redact::install([token.clone()]);
    let role = metadata::aws_get(client, &base, &token, "iam/security-credentials/")
        .await
        .and_then(|r| r.lines().next().map(str::to_string))
        .ok_or_else(|| Failure {
            message: "no instance role is attached (IMDS iam/security-credentials/ is empty): attach an instance profile allowing ec2:StopInstances on this instance, or give --release-command".into(),
            retry: false,
        })?;
    let doc = metadata::aws_get(
        client,
        &base,
        &token,
        &format!("iam/security-credentials/{role}"),
    )
    .await
    .ok_or_else(|| Failure::retry(format!("IMDS gave no credentials for role {role}")))?;
    let v: Value = serde_json::from_str(&doc)
        .map_err(|_| Failure::retry("the instance role's credentials are not JSON"))?;
    let s = |k: &str| v[k].as_str().map(str::to_string);
    let (Some(key), Some(secret)) = (s("AccessKeyId"), s("SecretAccessKey")) else {
        return Err(Failure::retry(
            "the instance role's credentials lack AccessKeyId/SecretAccessKey",
        ));
    };
    crate::redact::install([secret.clone()].into_iter().chain(s("Token")));
    Ok(AwsCreds {
        key,
        secret,
        token: s("Token"),
    })
}

/// The SigV4 headers (Authorization, X-Amz-Date, X-Amz-Security-Token) for a POST of
/// `body` to `url`, by the maintained signer rather than a hand-written one.
fn sigv4(
    c: &AwsCreds,
    region: &str,
    url: &str,
    body: &[u8],
) -> Result<Vec<(String, String)>, Failure> {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    let identity = aws_credential_types::Credentials::new(
        &c.key,
        &c.secret,
        c.token.clone(),
        None,
        "instance-role",
    )
    .into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("ec2")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| Failure::retry(format!("SigV4: {e}")))?
        .into();
    let ctype = [(
        "content-type",
        "application/x-www-form-urlencoded; charset=utf-8",
    )];
    let req = SignableRequest::new("POST", url, ctype.into_iter(), SignableBody::Bytes(body))
        .map_err(|e| Failure::retry(format!("SigV4: {e}")))?;
    let (instructions, _) = sign(req, &params)
        .map_err(|e| Failure::retry(format!("SigV4: {e}")))?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// A bearer token from the metadata server (GCP's service account, Azure's identity).
async fn bearer(client: &reqwest::Client, provider: Provider) -> Result<String, Failure> {
    let ep = Endpoints::from_env();
    let doc = match provider {
        Provider::Gcp => {
            metadata::gcp_get(client, &ep.gcp, "instance/service-accounts/default/token")
                .await
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        }
        _ => metadata::azure_get(
            client,
            &ep.azure,
            "identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/",
        )
        .await,
    };
    let token = doc
        .and_then(|v| v["access_token"].as_str().map(str::to_string))
        .ok_or_else(|| Failure {
            message: match provider {
                Provider::Gcp => "the metadata server gave no service-account token: give the instance a service account with compute.instances.stop on itself, or --release-command".into(),
                _ => "IMDS gave no managed-identity token: assign the VM an identity with rights to deallocate itself, or --release-command".into(),
            },
            retry: false,
        })?;
    crate::redact::install([token.clone()]);
    Ok(token)
}

async fn gcp(client: &reqwest::Client, plan: &Plan) -> Attempt {
    let Method::Gcp {
        project,
        zone,
        name,
        base,
    } = &plan.method
    else {
        return Err(Failure::retry("not a GCP plan"));
    };
    let token = bearer(client, Provider::Gcp).await?;
    let url = format!("{base}/compute/v1/projects/{project}/zones/{zone}/instances/{name}");
    let (req, op) = if plan.terminate {
        (client.delete(&url), "delete")
    } else {
        (client.post(format!("{url}/stop")), "stop")
    };
    let r = req
        .bearer_auth(token)
        .header("content-length", "0")
        .send()
        .await
        .map_err(|e| send_error("Compute API", e))?;
    answer(&format!("gcp instances.{op} {name}"), r).await
}

async fn azure(client: &reqwest::Client, plan: &Plan) -> Attempt {
    let Method::Azure { resource_id, base } = &plan.method else {
        return Err(Failure::retry("not an Azure plan"));
    };
    let token = bearer(client, Provider::Azure).await?;
    let api = "api-version=2023-03-01";
    let (req, op) = if plan.terminate {
        (
            client.delete(format!("{base}{resource_id}?{api}")),
            "delete",
        )
    } else {
        (
            client.post(format!("{base}{resource_id}/deallocate?{api}")),
            "deallocate",
        )
    };
    let r = req
        .bearer_auth(token)
        .header("content-length", "0")
        .send()
        .await
        .map_err(|e| send_error("ARM", e))?;
    answer(
        &format!(
            "azure {op} {}",
            resource_id.rsplit('/').next().unwrap_or("")
        ),
        r,
    )
    .await
}

/// Whether the credential the release needs is on the box (no provider call is made): the
/// instance role's keys, the service account's or managed identity's token, the API key.
pub async fn credential(plan: &Plan) -> Result<(), Failure> {
    let client = metadata::client();
    match &plan.method {
        Method::Aws { .. } => aws_credentials(&client).await.map(|_| ()),
        Method::Gcp { .. } => bearer(&client, Provider::Gcp).await.map(|_| ()),
        Method::Azure { .. } => bearer(&client, Provider::Azure).await.map(|_| ()),
        _ => Ok(()),
    }
}

/// What `costguard check` proves of the credential before any run: AWS asks EC2 with
/// DryRun; GCP and Azure get a token; the others only need their key present.
pub async fn prove(plan: &Plan) -> Result<String, String> {
    let client = metadata::client();
    let r = match &plan.method {
        Method::Aws { .. } => aws(&client, plan, true).await,
        Method::Gcp { .. } => bearer(&client, Provider::Gcp).await.map(|_| {
            "a service-account token was issued (the API call itself is not tried)".into()
        }),
        Method::Azure { .. } => bearer(&client, Provider::Azure).await.map(|_| {
            "a managed-identity token was issued (the API call itself is not tried)".into()
        }),
        Method::Runpod { .. } | Method::Vast { .. } => Ok("the box's API key is present".into()),
        Method::Command(_) => Ok("the command is run as given at the end".into()),
        Method::Scheduler(_) => Ok("nothing to call".into()),
    };
    r.map_err(|f| f.message)
}

/// Attempts with backoff (1 s, 2 s, 4 s … capped at 30 s) until one succeeds, a failure
/// says trying again cannot help, or `retry_for` has passed. Each failure is handed to
/// `on_fail` (the first becomes the alert).
pub async fn with_retries(
    plan: &Plan,
    ledger: &crate::ledger::Ledger,
    retry_for: Duration,
    mut on_fail: impl FnMut(&Failure, u32),
) -> (Result<String, String>, u32) {
    let until = tokio::time::Instant::now() + retry_for;
    let mut wait = Duration::from_secs(1);
    let mut n = 0;
    loop {
        n += 1;
        match attempt(plan, ledger).await {
            Ok(done) => return (Ok(done), n),
            Err(f) => {
                on_fail(&f, n);
                let next = tokio::time::Instant::now() + wait;
                if !f.retry || next > until {
                    return (Err(f.message), n);
                }
                tokio::time::sleep_until(next).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
}
