#!/usr/bin/python3
"""An SMTP server for tests/email.rs (Debian's python3-aiosmtpd): AUTH PLAIN/LOGIN checked
against one user and password, STARTTLS offered when a certificate is given, each message
stored in a Maildir and described as one JSON line in the log (with the AUTH attempts).

usage: server.py PORT MAILDIR LOG USER PASSWORD [CERT KEY [implicit]]
With CERT and KEY it offers STARTTLS, or with `implicit` speaks TLS from the first byte.
PORT 0: a port of the kernel's choosing. Writes the port it listens on into LOG.ready once it
accepts connections; runs until killed."""

import os

import email
import email.policy
import json
import mailbox
import ssl
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

port, maildir, log, user, password = sys.argv[1:6]
cert = sys.argv[6:8]
implicit = sys.argv[8:9] == ["implicit"]
box = mailbox.Maildir(maildir, create=True)
lock = threading.Lock()


def tls(server):
    """Whether the session is under TLS, by STARTTLS or from the first byte."""
    return server.transport.get_extra_info("ssl_object") is not None


def note(doc):
    with lock, open(log, "a") as f:
        f.write(json.dumps(doc) + "\n")


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login.decode() == user
        and auth_data.password.decode() == password
    )
    # The attempt, never the password tried.
    login = auth_data.login.decode() if isinstance(auth_data, LoginPassword) else None
    note({"auth": mechanism, "user": login, "ok": ok, "tls": tls(server)})
    # handled=False: aiosmtpd answers 535 itself (its default, True, answers nothing).
    return AuthResult(success=ok, handled=False)


class Handler:
    async def handle_DATA(self, server, session, envelope):
        box.add(envelope.original_content)
        m = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        note({
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "tls": tls(server),
            "authenticated": bool(session.authenticated),
            "subject": str(m["subject"]),
            "from": str(m["from"]),
            "to": str(m["to"]),
            "message_id": str(m["message-id"]),
            "body": m.get_content(),
        })
        return "250 OK"


context = None
if cert:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert[0], cert[1])
class Bound(Controller):
    """A Controller whose port may be 0: before its first connection to itself (which starts
    the server's protocol) it learns the port the kernel chose."""

    def _trigger_server(self):
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


c = Bound(
    Handler(),
    hostname="127.0.0.1",
    port=int(port),
    authenticator=authenticator,
    auth_require_tls=False,
    tls_context=None if implicit else context,
    ssl_context=context if implicit else None,
    require_starttls=False,
)
c.start()
# Whole or not at all: a reader that sees the file sees the port.
with open(log + ".ready.new", "w") as f:
    f.write(f"{c.port}\n")
os.rename(log + ".ready.new", log + ".ready")
threading.Event().wait()
