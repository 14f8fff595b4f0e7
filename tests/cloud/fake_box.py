#!/usr/bin/env python3
"""A cloud box's metadata server (or a rented pod's price API) for tests/cloud.rs.

Answers as the provider's own server does — headers enforced, the other providers' paths
404 — and logs every request as one JSON line. Usage:

    fake_box.py MODE --bind ADDR --port N --log FILE --ready FILE [--spot]
                [--type T] [--region R] [--notice-file F] [--fail N]

MODE: aws, gcp, azure (metadata servers, with the instance's credentials); runpod, vast
(price and stop APIs); ec2, compute, arm (AWS EC2, GCP Compute and Azure Resource Manager:
the stop calls, each checked — EC2's SigV4 signature by botocore's own signer, an
implementation independent of costguard's); silent (accepts connections and never answers).
--deny: the stop API answers 403 forever; --no-role: no instance role / identity. --notice-file: the spot reclaim notice is served once that
file exists. --fail N: the first N price-API calls answer 500 (N < 0: every call).
The ready file gets the bound port once the server listens.
"""
import argparse
import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from os.path import exists

TOKEN = "AQAEAtoken-SEKRET-imds-0123456789"
ROLE = "costguard-test-role"
AWS_KEY, AWS_SECRET, AWS_SESSION = "ASIATESTACCESSKEY01", "SEKRET-aws-secret-key-0123456789", "SEKRET-aws-session-token-0123"
GCP_TOKEN = "ya29.SEKRET-gcp-access-token"
AZURE_TOKEN = "eyJ0eXAi.SEKRET-azure-access-token"
FLAVOR = {"Metadata-Flavor": "Google"}


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("mode")
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--log", required=True)
    p.add_argument("--ready", required=True)
    p.add_argument("--spot", action="store_true")
    p.add_argument("--type", default="")
    p.add_argument("--region", default="")
    p.add_argument("--notice-file", default="")
    p.add_argument("--fail", type=int, default=0)
    p.add_argument("--price", default="2.99")
    p.add_argument("--deny", action="store_true")
    p.add_argument("--no-role", action="store_true")
    return p.parse_args()


ARGS = parse()
LOCK = threading.Lock()
CALLS = {"price": 0}


def log(entry):
    entry["t"] = time.time()
    with LOCK, open(ARGS.log, "a") as f:
        f.write(json.dumps(entry) + "\n")


def notice():
    return bool(ARGS.notice_file) and exists(ARGS.notice_file)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def reply(self, code, body="", headers=None, ctype="text/plain"):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n).decode(errors="replace") if n else ""

    def record(self, body=""):
        log({
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body,
        })

    def do_PUT(self):
        body = self.body()
        self.record(body)
        if ARGS.mode == "vast":
            return self.bearer_api()
        if ARGS.mode == "aws" and self.path == "/latest/api/token":
            if not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                return self.reply(400, "missing ttl")
            return self.reply(200, TOKEN)
        self.reply(404, "not found")

    def do_POST(self):
        body = self.body()
        self.record(body)
        if ARGS.mode == "runpod":
            return self.runpod(body)
        if ARGS.mode == "ec2":
            return self.ec2(body)
        if ARGS.mode in ("compute", "arm"):
            return self.bearer_api()
        self.reply(404, "not found")

    def do_DELETE(self):
        self.record()
        if ARGS.mode in ("compute", "arm", "vast"):
            return self.bearer_api()
        self.reply(404, "not found")

    # --- the providers' stop calls ---
    def stop_refused(self):
        if ARGS.deny:
            self.reply(403, json.dumps({"error": {"code": "AuthorizationFailed", "message": "denied"}}),
                       ctype="application/json")
            return True
        if self.failing():
            self.reply(500, json.dumps({"error": {"code": "InternalError"}}), ctype="application/json")
            return True
        return False

    def bearer_api(self):
        want = {"compute": GCP_TOKEN, "arm": AZURE_TOKEN, "vast": ARGS.type}[ARGS.mode]
        if self.headers.get("Authorization") != "Bearer " + want:
            return self.reply(401, json.dumps({"error": "unauthorized"}), ctype="application/json")
        if self.stop_refused():
            return
        self.reply(200, json.dumps({"kind": "compute#operation", "status": "RUNNING"}),
                   ctype="application/json")

    def ec2(self, body):
        valid = sigv4_valid(self, body)
        log({"method": "SIGV4", "path": self.path, "headers": {}, "body": str(valid)})
        if valid is not True:
            return self.reply(403, "<Response><Errors><Error><Code>SignatureDoesNotMatch</Code></Error></Errors></Response>")
        if "DryRun=true" in body:
            if ARGS.deny:
                return self.reply(403, "<Response><Errors><Error><Code>UnauthorizedOperation</Code></Error></Errors></Response>")
            return self.reply(412, "<Response><Errors><Error><Code>DryRunOperation</Code><Message>Request would have succeeded, but DryRun flag is set.</Message></Error></Errors></Response>")
        if self.stop_refused():
            return
        self.reply(200, "<StopInstancesResponse><instancesSet><item><currentState><name>stopping</name></currentState></item></instancesSet></StopInstancesResponse>",
                   ctype="text/xml")

    def do_GET(self):
        self.record()
        handler = {"aws": self.aws, "gcp": self.gcp, "azure": self.azure, "vast": self.vast}
        h = handler.get(ARGS.mode)
        if h is None:
            return self.reply(404, "not found")
        h()

    # --- AWS IMDSv2 ---
    def aws(self):
        prefix = "/latest/meta-data/"
        if not self.path.startswith(prefix):
            return self.reply(404, "not found")
        if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
            return self.reply(401, "")
        key = self.path[len(prefix):]
        values = {
            "instance-type": ARGS.type,
            "placement/region": ARGS.region,
            "placement/availability-zone": ARGS.region + "a",
            "instance-id": "i-0123456789abcdef0",
            "instance-life-cycle": "spot" if ARGS.spot else "on-demand",
        }
        if key == "spot/instance-action":
            if ARGS.spot and notice():
                return self.reply(200, json.dumps({"action": "terminate", "time": "2026-11-29T12:00:00Z"}))
            return self.reply(404, "not found")
        if key in values:
            return self.reply(200, values[key])
        if key == "iam/security-credentials/" and not ARGS.no_role:
            return self.reply(200, ROLE)
        if key == "iam/security-credentials/" + ROLE and not ARGS.no_role:
            return self.reply(200, json.dumps({
                "Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": AWS_KEY,
                "SecretAccessKey": AWS_SECRET, "Token": AWS_SESSION,
                "Expiration": "2099-01-01T00:00:00Z"}))
        self.reply(404, "not found")

    # --- GCP ---
    def gcp(self):
        if not self.path.startswith("/computeMetadata/v1/"):
            return self.reply(404, "not found")
        if self.headers.get("Metadata-Flavor") != "Google":
            return self.reply(403, "Missing Metadata-Flavor:Google header.", FLAVOR)
        rest = self.path[len("/computeMetadata/v1/"):]
        if rest.startswith("instance/?recursive=true") or rest == "instance/?recursive=True":
            doc = {
                "id": 4520031799277581759,
                "machineType": "projects/123456789/machineTypes/" + ARGS.type,
                "zone": "projects/123456789/zones/" + ARGS.region + "-a",
                "name": "trainer-1",
                "scheduling": {
                    "automaticRestart": "FALSE" if ARGS.spot else "TRUE",
                    "preemptible": "TRUE" if ARGS.spot else "FALSE",
                    "provisioningModel": "SPOT" if ARGS.spot else "STANDARD",
                },
            }
            return self.reply(200, json.dumps(doc), FLAVOR, "application/json")
        if rest == "project/project-id":
            return self.reply(200, "costguard-test-project", FLAVOR)
        if rest == "instance/service-accounts/default/token" and not ARGS.no_role:
            return self.reply(200, json.dumps({"access_token": GCP_TOKEN, "expires_in": 3599,
                                               "token_type": "Bearer"}), FLAVOR, "application/json")
        if rest == "instance/preempted":
            return self.reply(200, "TRUE" if notice() else "FALSE", FLAVOR)
        self.reply(404, "not found", FLAVOR)

    # --- Azure IMDS ---
    def azure(self):
        if not self.path.startswith("/metadata/"):
            return self.reply(404, "not found")
        if self.headers.get("Metadata") != "true" or "api-version=" not in self.path:
            return self.reply(400, json.dumps({"error": "Bad request"}), ctype="application/json")
        if self.path.startswith("/metadata/instance"):
            doc = {"compute": {
                "vmSize": ARGS.type,
                "location": ARGS.region,
                "priority": "Spot" if ARGS.spot else "Regular",
                "name": "trainer-1",
                "vmId": "02aab8a4-74ef-476e-8182-f6d2ba4166a6",
                "resourceGroupName": "rg",
                "subscriptionId": "sub",
            }}
            return self.reply(200, json.dumps(doc), ctype="application/json")
        if self.path.startswith("/metadata/identity/oauth2/token") and not ARGS.no_role:
            if "resource=https://management.azure.com/" not in self.path:
                return self.reply(400, json.dumps({"error": "invalid_resource"}), ctype="application/json")
            return self.reply(200, json.dumps({"access_token": AZURE_TOKEN, "expires_in": "86399",
                                               "token_type": "Bearer"}), ctype="application/json")
        if self.path.startswith("/metadata/scheduledevents"):
            events = []
            if notice():
                events.append({"EventId": "A1", "EventType": "Preempt", "ResourceType": "VirtualMachine",
                               "Resources": ["trainer-1"], "EventStatus": "Scheduled",
                               "NotBefore": "Sun, 29 Nov 2026 12:00:30 GMT"})
            return self.reply(200, json.dumps({"DocumentIncarnation": 1, "Events": events}),
                              ctype="application/json")
        self.reply(404, "not found")

    # --- rented pods ---
    def failing(self):
        CALLS["price"] += 1
        return ARGS.fail < 0 or CALLS["price"] <= ARGS.fail

    def runpod(self, body):
        if self.failing():
            return self.reply(500, json.dumps({"errors": [{"message": "internal"}]}), ctype="application/json")
        if self.headers.get("Authorization") != "Bearer " + ARGS.type:
            return self.reply(401, json.dumps({"errors": [{"message": "unauthorized"}]}), ctype="application/json")
        if "mutation" in body:
            if ARGS.deny:
                return self.reply(200, json.dumps({"errors": [{"message": "forbidden"}]}), ctype="application/json")
            return self.reply(200, json.dumps({"data": {"podStop": {"id": ARGS.region, "desiredStatus": "EXITED"}}}),
                              ctype="application/json")
        doc = {"data": {"pod": {"id": ARGS.region, "costPerHr": float(ARGS.price)}}}
        self.reply(200, json.dumps(doc), ctype="application/json")

    def vast(self):
        if self.failing():
            return self.reply(500, "error")
        if self.headers.get("Authorization") != "Bearer " + ARGS.type:
            return self.reply(401, "unauthorized")
        self.reply(200, json.dumps({"instances": {"id": 1, "dph_total": float(ARGS.price)}}),
                   ctype="application/json")


def sigv4_valid(h, body):
    """Recomputes the request's SigV4 signature with botocore (True when it matches)."""
    try:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials
    except ImportError:
        return "botocore missing"
    auth_header = h.headers.get("Authorization", "")
    try:
        parts = dict(p.strip().split("=", 1) for p in auth_header.split(" ", 1)[1].split(","))
    except (IndexError, ValueError):
        return "no Authorization"
    scope = parts["Credential"].split("/")
    if scope[0] != AWS_KEY or scope[3] != "ec2":
        return "wrong key or service: " + parts["Credential"]
    signed = parts["SignedHeaders"].split(";")
    if h.headers.get("X-Amz-Security-Token") != AWS_SESSION or "x-amz-security-token" not in signed:
        return "session token missing or unsigned"
    region = scope[2]
    url = "http://" + h.headers["Host"] + h.path
    headers = {k: h.headers[k] for k in signed if k in h.headers}
    req = AWSRequest(method=h.command, url=url, data=body.encode(), headers=headers)
    req.context["timestamp"] = h.headers["X-Amz-Date"]
    a = SigV4Auth(Credentials(AWS_KEY, AWS_SECRET, AWS_SESSION), "ec2", region)
    canonical = a.canonical_request(req)
    want = a.signature(a.string_to_sign(req, canonical), req)
    return True if want == parts["Signature"] else "signature mismatch"


def silent(sock):
    """Accepts every connection and never answers (a metadata address that drops)."""
    held = []
    while True:
        conn, _ = sock.accept()
        held.append(conn)
        log({"method": "ACCEPT", "path": "", "headers": {}, "body": ""})


def ready(port):
    """The port, written whole (rename) once the server listens."""
    with open(ARGS.ready + ".tmp", "w") as f:
        f.write(str(port))
    os.rename(ARGS.ready + ".tmp", ARGS.ready)


def main():
    if ARGS.mode == "silent":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((ARGS.bind, ARGS.port))
        sock.listen(64)
        ready(sock.getsockname()[1])
        silent(sock)
        return
    srv = ThreadingHTTPServer((ARGS.bind, ARGS.port), Handler)
    srv.daemon_threads = True
    ready(srv.server_address[1])
    srv.serve_forever()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
