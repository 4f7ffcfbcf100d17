"""Throwaway mail servers: aiosmtpd with STARTTLS or implicit TLS and AUTH, and Dovecot's IMAP.

Both check real passwords, so a test can rotate one (`set_password`) and see the old one fail.
Dovecot runs from Debian's binary with its whole state in a temporary folder (FACTS.md).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServerProtocol
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from tests.support.postgres import free_port
from tests.support.tls import ServingCert


def _wait_port(
    port: int, timeout: float = 15, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


# --- SMTP -------------------------------------------------------------------------------------


@dataclass
class _Recorder:
    """aiosmtpd handler: counts messages, which verification must never send."""

    messages: list[Envelope] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        self.messages.append(envelope)
        return "250 OK"


class SmtpServer:
    """aiosmtpd on 127.0.0.1: `security` "starttls" (STARTTLS required before AUTH) or "tls"
    (TLS from the first byte). AUTH PLAIN and LOGIN check `passwords`."""

    def __init__(
        self,
        cert: ServingCert,
        security: str,
        passwords: dict[str, str] | None = None,
        port: int | None = None,
        offer_starttls: bool = True,
    ) -> None:
        """`offer_starttls=False` makes a "starttls" server that never offers it, as a
        misconfigured or downgraded relay would."""
        self.security = security
        self.port = port or free_port()
        self.passwords: dict[str, str] = dict(passwords or {})
        self.auth_attempts: list[tuple[str, bool]] = []
        self._lock = threading.Lock()
        self._recorder = _Recorder()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert.cert, cert.key)
        kwargs: dict[str, Any] = {
            "authenticator": self._authenticate,
            "server_hostname": "mail.test",
        }
        if security == "tls":
            # TLS from the first byte; aiosmtpd's auth_require_tls only knows about STARTTLS.
            kwargs["ssl_context"] = context
            kwargs["auth_require_tls"] = False
        elif offer_starttls:
            kwargs["tls_context"] = context
            kwargs["require_starttls"] = True
            kwargs["auth_require_tls"] = True
        else:
            kwargs["auth_require_tls"] = False
        self._controller = Controller(
            self._recorder, hostname="127.0.0.1", port=self.port, **kwargs
        )

    @property
    def messages(self) -> list[Envelope]:
        return self._recorder.messages

    def set_password(self, user: str, password: str) -> None:
        with self._lock:
            self.passwords[user] = password

    def attempts_by(self, user: str) -> list[bool]:
        with self._lock:
            return [ok for login, ok in self.auth_attempts if login == user]

    def _authenticate(
        self,
        server: SMTPServerProtocol,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode()
        with self._lock:
            ok = self.passwords.get(login) == auth_data.password.decode()
            self.auth_attempts.append((login, ok))
        # handled=False: aiosmtpd then answers 535 itself (handled=True would leave it silent).
        return AuthResult(success=ok, handled=False)

    def start(self) -> SmtpServer:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()


# --- IMAP (Dovecot) -----------------------------------------------------------------------------

DOVECOT_CONF = """\
# A throwaway Dovecot: all state under {root}, TLS only, logins from a passwd-file.
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
{ssl_dh}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = yes
auth_failure_delay = 0
auth_mechanisms = plain login
mail_location = maildir:{root}/mail/%u
default_login_user = {login_user}
default_internal_user = {internal_user}
default_internal_group = {internal_group}
first_valid_uid = 0
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={mail_user} gid={mail_group} home={root}/home/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
  # No penalty delay after failed logins from 127.0.0.1: the tests fail logins on purpose.
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service pop3-login {{
  chroot =
}}
"""


@dataclass
class DovecotServer:
    root: Path
    imap_port: int  # STARTTLS
    imaps_port: int  # implicit TLS
    process: subprocess.Popen[bytes]
    passwords: dict[str, str]

    @property
    def log(self) -> Path:
        return self.root / "dovecot.log"

    def set_passwords(self, passwords: dict[str, str]) -> None:
        """Rewrite the passwd-file. Dovecot re-reads it when it changes, checking at most once a
        second, so wait that long before returning."""
        self.passwords.update(passwords)
        _write_passwd(self.root / "passwd", self.passwords)
        time.sleep(1.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        shutil.rmtree(self.root, ignore_errors=True)


def _write_passwd(path: Path, passwords: dict[str, str]) -> None:
    lines = []
    for user, password in passwords.items():
        if ":" in user or ":" in password or "\n" in password:
            raise ValueError("passwd-file fields can't hold ':' or newlines")
        lines.append(f"{user}:{{PLAIN}}{password}::::::\n")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(lines))
    tmp.chmod(0o644)
    # A new mtime is what makes Dovecot re-read the file; make sure it moves.
    stamp = time.time() + 1
    os.utime(tmp, (stamp, stamp))
    tmp.replace(path)


def start_dovecot(cert: ServingCert, passwords: dict[str, str]) -> DovecotServer:
    binary = shutil.which("dovecot") or "/usr/sbin/dovecot"
    if not Path(binary).exists():
        raise RuntimeError("dovecot is missing: install Debian's dovecot-imapd package")
    # Not under pytest's tmp_path: its 0700 folders are closed to the users Dovecot drops to.
    root = Path(tempfile.mkdtemp(prefix="numail-dovecot-"))
    root.chmod(0o755)
    for sub in ("mail", "home"):
        (root / sub).mkdir()
        (root / sub).chmod(0o1777)
    key_copy = root / "tls.key"
    shutil.copyfile(cert.key, key_copy)
    key_copy.chmod(0o600)
    if os.geteuid() == 0:
        login_user, internal_user, internal_group = "dovenull", "dovecot", "dovecot"
        mail_user, mail_group = "nobody", "nogroup"
    else:  # unprivileged: every process runs as us
        me = pwd.getpwuid(os.geteuid()).pw_name
        login_user = internal_user = mail_user = me
        internal_group = mail_group = str(os.getegid())
    dh = Path("/usr/share/dovecot/dh.pem")
    imap_port, imaps_port = free_port(), free_port()
    conf = root / "dovecot.conf"
    conf.write_text(
        DOVECOT_CONF.format(
            root=root,
            cert=cert.cert,
            key=key_copy,
            ssl_dh=f"ssl_dh = <{dh}" if dh.exists() else "",
            login_user=login_user,
            internal_user=internal_user,
            internal_group=internal_group,
            mail_user=mail_user,
            mail_group=mail_group,
            imap_port=imap_port,
            imaps_port=imaps_port,
        )
    )
    _write_passwd(root / "passwd", passwords)
    with (root / "stdout.log").open("wb") as out:
        process = subprocess.Popen(
            [binary, "-F", "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT
        )
    server = DovecotServer(root, imap_port, imaps_port, process, dict(passwords))
    try:
        _wait_port(imaps_port, process=process)
        _wait_port(imap_port, process=process)
    except RuntimeError as err:
        logs = "".join(
            p.read_text(errors="replace") for p in (root / "stdout.log", server.log) if p.exists()
        )
        server.stop()
        raise RuntimeError(f"dovecot did not start ({err}):\n{logs[-4000:]}") from None
    return server


def append_to_inbox(
    server: DovecotServer, ca: Path, user: str, raw: bytes, flags: str = ""
) -> None:
    """Deliver `raw` into `user`'s INBOX with IMAP APPEND, as a mail client or an MDA would
    (the reply detector's tests: replies, bounces and auto-replies arrive this way)."""
    import imaplib

    context = ssl.create_default_context(cafile=str(ca))
    client = imaplib.IMAP4_SSL("127.0.0.1", server.imaps_port, ssl_context=context)
    try:
        client.login(user, server.passwords[user])
        stamp = imaplib.Time2Internaldate(time.time())
        status, _ = client.append("INBOX", f"({flags})" if flags else None, stamp, raw)
        assert status == "OK", status
    finally:
        client.logout()
