//! The exit hook: `--on-exit CMD` runs after the run with its facts in the environment. It
//! must leave results somewhere known — never ship them: a command that pushes, deploys,
//! publishes or sends is refused (naming the pattern) unless `--allow-side-effects`.

use std::sync::OnceLock;

use regex::Regex;

/// (what it does, pattern). Matched case-insensitively at word boundaries anywhere in the
/// command (`make && git push` is found), the verb within the same simple command (so
/// `kubectl get pods && echo apply` is not).
pub const SIDE_EFFECTS: &[(&str, &str)] = &[
    ("git push", r"\bgit\s+(?:[^|;&\n]*\s)?push\b"),
    ("git send-email", r"\bgit\s+(?:[^|;&\n]*\s)?send-email\b"),
    (
        "kubectl apply/delete/create/replace/patch/scale/rollout",
        r"\bkubectl\s+(?:[^|;&\n]*\s)?(?:apply|delete|create|replace|patch|scale|rollout|set|edit)\b",
    ),
    (
        "helm install/upgrade/uninstall/rollback",
        r"\bhelm\s+(?:[^|;&\n]*\s)?(?:install|upgrade|uninstall|delete|rollback)\b",
    ),
    (
        "terraform/tofu apply/destroy",
        r"\b(?:terraform|tofu)\s+(?:[^|;&\n]*\s)?(?:apply|destroy|import)\b",
    ),
    (
        "pulumi up/destroy",
        r"\bpulumi\s+(?:[^|;&\n]*\s)?(?:up|destroy|update)\b",
    ),
    (
        "docker/podman push",
        r"\b(?:docker|podman|buildah)\s+(?:[^|;&\n]*\s)?push\b",
    ),
    ("cargo publish", r"\bcargo\s+(?:[^|;&\n]*\s)?publish\b"),
    (
        "npm/yarn/pnpm publish",
        r"\b(?:npm|yarn|pnpm)\s+(?:[^|;&\n]*\s)?publish\b",
    ),
    ("twine upload", r"\btwine\s+(?:[^|;&\n]*\s)?upload\b"),
    (
        "poetry/uv/flit/hatch publish",
        r"\b(?:poetry|uv|flit|hatch)\s+(?:[^|;&\n]*\s)?publish\b",
    ),
    (
        "gh release/pr create",
        r"\bgh\s+(?:release|pr\s+create|pr\s+merge)\b",
    ),
    (
        "huggingface-cli upload",
        r"\b(?:huggingface-cli|hf)\s+upload\b",
    ),
    (
        "mail/sendmail/mutt/mailx",
        r"\b(?:sendmail|mail|mailx|mutt|msmtp|swaks)\b",
    ),
    (
        "curl/wget sending data",
        r"\b(?:curl\s+(?:[^|;&\n]*\s)?(?:-d|--data\S*|-F|--form|-T|--upload-file|-X\s*(?:POST|PUT|PATCH|DELETE))|wget\s+(?:[^|;&\n]*\s)?--post-(?:data|file))\b",
    ),
    ("ssh to a remote command", r"\bssh\s+\S+\s+\S"),
    (
        "aws/gcloud deploy",
        r"\b(?:aws\s+(?:[^|;&\n]*\s)?(?:deploy|lambda\s+update|ecs\s+update|sns\s+publish|ses\s+send)|gcloud\s+(?:[^|;&\n]*\s)?deploy)\b",
    ),
];

fn compiled() -> &'static Vec<(&'static str, Regex)> {
    static RE: OnceLock<Vec<(&'static str, Regex)>> = OnceLock::new();
    RE.get_or_init(|| {
        SIDE_EFFECTS
            .iter()
            .map(|(name, re)| {
                (
                    *name,
                    Regex::new(&format!("(?i){re}")).expect("valid pattern"),
                )
            })
            .collect()
    })
}

/// The side-effect pattern `cmd` matches, if any.
pub fn side_effect(cmd: &str) -> Option<&'static str> {
    compiled()
        .iter()
        .find(|(_, re)| re.is_match(cmd))
        .map(|(name, _)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipping_commands_are_refused_and_local_ones_pass() {
        for (cmd, want) in [
            ("git push origin main", "git push"),
            ("make && git -C out push", "git push"),
            (
                "kubectl -n ml apply -f job.yaml",
                "kubectl apply/delete/create/replace/patch/scale/rollout",
            ),
            (
                "kubectl delete pod x",
                "kubectl apply/delete/create/replace/patch/scale/rollout",
            ),
            (
                "helm upgrade --install x ./chart",
                "helm install/upgrade/uninstall/rollback",
            ),
            (
                "terraform apply -auto-approve",
                "terraform/tofu apply/destroy",
            ),
            ("docker push registry/x:1", "docker/podman push"),
            ("cargo publish", "cargo publish"),
            ("npm publish --access public", "npm/yarn/pnpm publish"),
            ("twine upload dist/*", "twine upload"),
            ("gh release create v1", "gh release/pr create"),
            ("mail -s done me@x < report.md", "mail/sendmail/mutt/mailx"),
            ("sendmail me@x", "mail/sendmail/mutt/mailx"),
            ("curl -X POST https://x", "curl/wget sending data"),
            (
                "curl --data-binary @r.md https://x",
                "curl/wget sending data",
            ),
        ] {
            assert_eq!(side_effect(cmd), Some(want), "{cmd}");
        }
        for ok in [
            "cp -r outputs /mnt/results/$COSTGUARD_RUN_ID",
            "tar czf /data/runs/$COSTGUARD_RUN_ID.tgz checkpoints",
            "git status && git log -1",
            "kubectl get pods",
            "helm list",
            "terraform plan",
            "docker images",
            "curl -s https://example/health",
            "python summarize.py --email-less",
            "echo pushed=no >> notes.txt",
            "kubectl get pods && echo apply",
        ] {
            assert_eq!(side_effect(ok), None, "{ok}");
        }
    }
}
