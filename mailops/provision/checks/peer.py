"""Mail to another server, read back there (``verify.remote_mailboxes``): the proof
that a message from here arrives signed and checked — DKIM, SPF and DMARC pass at the
other side, as its own Authentication-Results header says — and came over TLS, as its
Received header for the hop from here says."""
from __future__ import annotations

import email
import email.policy
import imaplib
import re
import time
import uuid

from mailops.core.secrets import resolve
from .clients import Target, message, take
from .result import CheckFailed, require

METHOD_RE = re.compile(r"^\s*([a-z0-9-]+)=([a-z]+)\b(.*)$", re.I | re.S)


def auth_results(header: str) -> list[tuple[str, str, dict[str, str]]]:
    """(method, result, properties) of one Authentication-Results header (RFC 8601),
    its comments dropped (pure)."""
    text = re.sub(r"\([^()]*\)", " ", " ".join(header.split()))
    out = []
    for part in text.split(";")[1:]:           # the first part is the authserv-id
        m = METHOD_RE.match(part)
        if m:
            props = dict(re.findall(r"([a-z]+\.[a-z-]+)=(\S+)", m[3], re.I))
            out.append((m[1].lower(), m[2].lower(), props))
    return out


def verdict(msg, sender_domain: str) -> dict[str, str]:
    """dkim (for ``sender_domain``), spf, dmarc as the receiving server found them (its
    topmost Authentication-Results header: the one it added last)."""
    headers = msg.get_all("Authentication-Results") or []
    require(headers, "the other server added no Authentication-Results header")
    found = {"dkim": "none", "spf": "none", "dmarc": "none"}
    for method, result, props in auth_results(str(headers[0])):
        if method == "dkim":
            if props.get("header.d", "").lower() == sender_domain and found["dkim"] != "pass":
                found["dkim"] = result
        elif method in found and found[method] == "none":
            found[method] = result
    return found


def tls_hop(msg, our_name: str) -> str | None:
    """The TLS version of the hop from ``our_name`` as the other side recorded it, ""
    when that hop was in clear, None when there is no such hop."""
    for h in msg.get_all("Received") or []:
        line = " ".join(str(h).split())
        if line.startswith(f"from {our_name} "):
            m = re.search(r"using (TLSv[0-9.]+)", line)
            return m[1] if m else ""
    return None


def remote_target(params, remote) -> Target:
    cafile = str(params.path(remote.ca_file)) if remote.ca_file else None
    return Target(str(remote.dial or remote.imap_host), remote.imap_host, cafile,
                  {remote.address: resolve(remote.password, params.base_dir)},
                  imap_port=remote.imap_port)


def arrives(t: Target, params, sender: str, remote) -> str:
    """``sender`` (a mailbox here) sends to ``remote`` through 587; the message is read
    back there, its verdicts checked, and deleted."""
    token = uuid.uuid4().hex
    t0 = time.monotonic()
    with t.smtp(587) as s:
        s.login(sender, t.passwords[sender].reveal())
        s.send_message(message(sender, remote.address, token))
    there = remote_target(params, remote)
    raw = take(there, remote.address, token, wait=remote.wait_s)
    if raw is None:
        try:
            junk = take(there, remote.address, token, wait=0, folder="Junk")
        except imaplib.IMAP4.error:
            junk = None
        if junk is not None:
            msg = email.message_from_bytes(junk, policy=email.policy.default)
            raise CheckFailed(f"filed as spam at {remote.imap_host}: "
                              + _show(verdict(msg, sender.split("@")[1])))
        raise CheckFailed(f"not in {remote.address}'s INBOX after {remote.wait_s} s")
    seconds = time.monotonic() - t0
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    domain = sender.split("@")[1]
    v = verdict(msg, domain)
    require(all(r == "pass" for r in v.values()), f"at {remote.imap_host}: {_show(v)}")
    tls = tls_hop(msg, params.hostname)
    require(tls is not None, f"no Received header there for the hop from {params.hostname}")
    require(tls, f"the hop from {params.hostname} to {remote.imap_host} was not over TLS")
    return f"{sender} -> {remote.address}: {_show(v)} (d={domain}); over {tls}; {seconds:.1f} s"


def _show(v: dict[str, str]) -> str:
    return ", ".join(f"{k}={r}" for k, r in v.items())
