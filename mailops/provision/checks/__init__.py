"""Checks: each returns ok or failed with its evidence, never an ``assert``
(``python -O`` drops those, and a failed check would then report ok).

One module per family: :mod:`.result` (the Check and its report), :mod:`.clients`
(how a client reaches the server: SMTP, IMAPS, certificates checked against the
host name), :mod:`.tls`, :mod:`.smtp`, :mod:`.dkim` and :mod:`.server` (what only
the server itself can tell: fail2ban, learning, backups, updates, sshd).
``mailops.provision.verify`` composes them into the 90-verify step.
"""
