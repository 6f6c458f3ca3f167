"""What to type into a mail client that configures nothing by itself: the server's name,
ports, TLS and the user name (``mailops user settings ADDRESS``, the users notebook).

Only what the server really offers is named: the ports come from the firewall's open
list (IMAPS 993; submission with implicit TLS on 465, RFC 8314's preference, and with
STARTTLS on 587; ManageSieve on 4190), the host name is the one the certificates carry.
Pure: the users database's state is read by the caller."""
from __future__ import annotations

import dataclasses

from .accounts import ManageError, State, check_address

# port -> (what, protocol, security), in the order a client should try them
OFFERS = {993: ("incoming mail", "IMAP", "SSL/TLS"),
          465: ("outgoing mail", "SMTP", "SSL/TLS"),
          587: ("outgoing mail", "SMTP", "STARTTLS"),
          4190: ("sieve filters", "ManageSieve", "STARTTLS")}


@dataclasses.dataclass(frozen=True)
class Settings:
    address: str
    host: str
    servers: tuple[dict, ...]     # {what, protocol, host, port, security, username, auth}

    def rows(self) -> list[dict]:
        return [dict(s) for s in self.servers]

    def __str__(self) -> str:
        lines = [f"mail settings for {self.address}: user name {self.address}, your password"]
        for s in self.servers:
            lines.append(f"  {s['what']:14} {s['protocol']:11} {s['host']}  port {s['port']:<5}"
                         f" {s['security']:8} normal password")
        return "\n".join(lines)


def client_settings(p, state: State, address: str) -> Settings:
    """The settings of mailbox ``address``; a clear error for an address that is no
    mailbox here (an alias, an unknown one) or a disabled mailbox."""
    address = check_address("address", address)
    if address not in state.mailboxes:
        if address in state.aliases:
            raise ManageError("address", f"{address} is an alias (of "
                              f"{', '.join(sorted(state.aliases[address]))}): settings are "
                              "for mailboxes")
        raise ManageError("address", f"no mailbox {address} on this server")
    if not state.mailboxes[address]["active"]:
        raise ManageError("address", f"{address} is disabled: it cannot log in "
                          f"(`mailops user enable {address}` first)")
    offered = [port for port in OFFERS if port in p.firewall.open_tcp]
    if 993 not in offered or not {465, 587} & set(offered):
        raise ManageError("firewall.open_tcp", "a mail client needs 993 and 465 or 587 open")
    servers = tuple({"what": OFFERS[port][0], "protocol": OFFERS[port][1], "host": p.hostname,
                     "port": port, "security": OFFERS[port][2], "username": address,
                     "auth": "normal password"} for port in offered)
    return Settings(address, p.hostname, servers)
