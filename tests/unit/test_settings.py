"""`mailops user settings ADDRESS`: what to type into a client, from the parameters and the
users database, only the ports the server offers; a clear error for anything else."""
from __future__ import annotations

import pytest

from mailops.manage.accounts import ManageError, State
from mailops.manage.settings import client_settings
from test_steps_fake import params  # noqa: F401  (fixture)

STATE = State(domains={"example.com": True},
              mailboxes={"jane@example.com": {"active": True, "quota_bytes": 0, "created": ""},
                         "gone@example.com": {"active": False, "quota_bytes": 0, "created": ""}},
              aliases={"info@example.com": frozenset({"jane@example.com"})}, catchall={})


def test_a_mailbox_gets_imaps_both_submission_ports_and_managesieve(params):  # noqa: F811
    s = client_settings(params, STATE, "jane@example.com")
    assert [(r["port"], r["security"]) for r in s.rows()] == [
        (993, "SSL/TLS"), (465, "SSL/TLS"), (587, "STARTTLS"), (4190, "STARTTLS")]
    assert {r["host"] for r in s.rows()} == {params.hostname}
    assert {r["username"] for r in s.rows()} == {"jane@example.com"}
    text = str(s)
    assert "user name jane@example.com" in text and "port 465" in text
    assert "pw-" not in text                                  # never a password


def test_only_the_ports_the_firewall_opens_are_named(params):  # noqa: F811
    p = params.model_copy(update={"firewall": params.firewall.model_copy(
        update={"open_tcp": [25, 587, 993]})})
    assert [r["port"] for r in client_settings(p, STATE, "jane@example.com").rows()] == [993, 587]
    closed = params.model_copy(update={"firewall": params.firewall.model_copy(
        update={"open_tcp": [25, 465]})})
    with pytest.raises(ManageError, match="needs 993"):
        client_settings(closed, STATE, "jane@example.com")


@pytest.mark.parametrize("address, words", [
    ("gone@example.com", "is disabled"),
    ("info@example.com", "is an alias \\(of jane@example.com\\)"),
    ("nobody@example.com", "no mailbox nobody@example.com"),
    ("not an address", "address"), ("Jane@Example.com", "lower case")])
def test_anything_but_an_enabled_mailbox_is_refused_saying_why(params, address, words):  # noqa: F811
    with pytest.raises(ManageError, match=words):
        client_settings(params, STATE, address)


def test_settings_from_the_users_database_on_the_server(params):  # noqa: F811
    """The state the CLI reads (the helper's real SQL on the fake host): a mailbox of the
    parameters gets settings, and once disabled it gets a refusal."""
    from mailops.manage import users
    from mailops.provision.session import Session
    from support.fakehost import FakeHost
    from test_steps_fake import converge
    fake = FakeHost()
    s = converge(params, fake)
    address = params.mail.mailboxes[0].address
    assert client_settings(params, users.state(s), address).rows()[0]["username"] == address
    users.apply(s, users.plan_disable(Session(params, host=fake), address))
    with pytest.raises(ManageError, match="is disabled"):
        client_settings(params, users.state(s), address)
