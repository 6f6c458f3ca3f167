"""Provisioning: the steps that turn a fresh host into a mail server, the runner that
takes them in order, the session they share, and verify's checks of the result."""
