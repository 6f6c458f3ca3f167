"""Config checks of the services several steps reload (run before any reload)."""
from __future__ import annotations

# `postfix check` tells why it failed only on a terminal (else to a log that may
# not have it): give it one, and pass its words on
POSTFIX_CHECK = ("sh", "-c", 'out=$(script -qec "postfix check" /dev/null 2>&1) && exit 0\n'
                 'printf "%s\\n" "$out" >&2; exit 1', "postfix_check")


# dovecot 2.4's `doveconf -n` accepts 2.3-style settings it then misreads: also
# refuse the 2.3 variables and plugin syntax it would take literally
CHECK_24 = r"""doveconf -n >/dev/null || exit 1
if grep -nE '%[dnuLl]|\$mail_plugins|= *<' /etc/dovecot/dovecot.conf | grep -v ':log_timestamp' >&2; then
  echo "dovecot.conf: 2.3 syntax in a 2.4 configuration (lines above)" >&2; exit 1
fi
"""


def dovecot_check(series: str) -> tuple[str, ...]:
    return ("doveconf", "-n") if series == "2.3" else ("sh", "-c", CHECK_24, "doveconf_check")
