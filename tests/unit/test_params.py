"""Parameter errors name the field, the bad value and what is allowed."""
import pytest
import yaml

from mailops.core.params import ParamsError, load_params, parse_params


@pytest.fixture
def good(root):
    return yaml.safe_load((root / "parameters" / "example.yaml").read_text())


def errors(data) -> str:
    with pytest.raises(ParamsError) as exc:
        parse_params(data, "test.yaml")
    return str(exc.value)


def test_shipped_parameter_files_are_valid(root):
    for f in (root / "parameters").glob("*.yaml"):
        assert load_params(f).hostname


def test_missing_field(good):
    del good["hostname"]
    msg = errors(good)
    assert "invalid parameters in test.yaml" in msg and "hostname: required but missing" in msg


@pytest.mark.parametrize("bad", ["mx1", "MX1.Example.com", "mx_1.example.com", "-mx.example.com",
                                 "mx1.example.com.", "a" * 64 + ".example.com", "mx1..example.com",
                                 "mx1.example.com\n"])
def test_bad_hostname(good, bad):
    good["hostname"] = bad
    msg = errors(good)
    assert "hostname: must be a fully qualified domain name" in msg and repr(bad) in msg


def test_bad_mail_domain_names_the_index(good):
    good["mail_domains"] = ["example.com", "ex'ample.org"]
    assert "mail_domains.1: must be a fully qualified" in errors(good)


@pytest.mark.parametrize("bad", ["203.0.113.256", "mx1.example.com", "1.2.3", ""])
def test_bad_address(good, bad):
    good["addresses"] = [bad]
    msg = errors(good)
    assert "addresses.0" in msg and repr(bad) in msg


def test_unknown_keys_top_level_and_nested(good):
    good["hostnme"] = "typo.example.com"
    good["firewall"]["open_ports"] = [25]
    msg = errors(good)
    assert "hostnme: unknown key" in msg and "firewall.open_ports: unknown key" in msg


def test_all_problems_reported_at_once(good):
    good["hostname"] = "bad"
    good["timezone"] = "Mars/Olympus Mons"
    good["firewall"]["open_tcp"] = [25, 70000]
    msg = errors(good)
    assert "hostname" in msg and "timezone" in msg and "firewall.open_tcp.1: must be a TCP port" in msg


def test_target_url(good):
    good["target"] = "ftp://mx1"
    assert "target: must be ssh://user@host[:port] or local://" in errors(good)
    good["target"] = "ssh://root@mx1.example.com;rm -rf /"
    assert "target" in errors(good)


def test_ssh_target_needs_keys(good):
    del good["ssh"]
    assert "no `ssh:` section" in errors(good)


def test_secret_must_be_a_reference(good):
    good["secrets"]["rspamd_controller"] = "hunter2"
    msg = errors(good)
    assert "secrets.rspamd_controller" in msg and "file:PATH" in msg


def test_lab_address_must_be_documentation_range(good):
    good["lab"] = {"address": "10.0.0.5"}
    assert "198.51.100.0/24 or 203.0.113.0/24" in errors(good)
    good["lab"] = {"address": "198.51.100.1"}
    assert "other than .0, .1 and .255" in errors(good)


def test_unreadable_and_non_mapping_files(tmp_path):
    with pytest.raises(ParamsError, match="cannot read"):
        load_params(tmp_path / "nope.yaml")
    f = tmp_path / "list.yaml"
    f.write_text("- a\n- b\n")
    with pytest.raises(ParamsError, match="must be a YAML mapping"):
        load_params(f)
    f.write_text("target: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(f)


def test_relative_paths_resolve_against_the_file(root):
    p = load_params(root / "parameters" / "lab.yaml")
    assert p.path(p.ssh.key_file) == root / ".lab" / "lab1" / "id_ed25519"


SECRET = "hunter2-Very-Secret"


@pytest.mark.parametrize("where", ["mailbox", "controller", "secrets", "backup"])
def test_a_literal_secret_is_never_echoed(good, where):
    """A password pasted into the parameters as a literal is refused without
    showing it (the error reaches terminals and executed notebooks)."""
    if where == "mailbox":
        good["mail"]["mailboxes"][0]["password"] = SECRET
    elif where == "controller":
        good["rspamd"]["controller_password"] = SECRET
        good["rspamd"]["reject"] = 1.0        # a model-level error too: its input holds the secret
    elif where == "secrets":
        good["secrets"] = {"extra": SECRET}
    else:
        good["backup"]["passphrase"] = SECRET
        good["backup"]["enabled"] = "maybe"
    msg = errors(good)
    assert SECRET not in msg and "never the secret itself" in msg


def test_yaml_error_does_not_quote_the_line(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(f"hostname: mx1.example.com\nsecrets:\n  x: '{SECRET}\n")
    with pytest.raises(ParamsError) as exc:
        load_params(f)
    assert SECRET not in str(exc.value) and "not valid YAML at line" in str(exc.value)


def test_remote_mailbox_for_verify(good):
    from mailops.core.params import parse_params
    good["verify"] = {"remote_mailboxes": [{"address": "carol@peer.example",
                                            "imap": "imaps://imap.peer.example:9993",
                                            "password": "env:PEER_PW"}]}
    (r,) = parse_params(good, "test.yaml").verify.remote_mailboxes
    assert (r.imap_host, r.imap_port, r.dial, r.wait_s) == ("imap.peer.example", 9993, None, 60)
    for field, value, why in (("imap", "imap://imap.peer.example", "imaps://"),
                              ("password", "hunter2-literal", "file:"),
                              ("dial", "not-an-address", "dial")):
        bad = {**good["verify"]["remote_mailboxes"][0], field: value}
        msg = errors({**good, "verify": {"remote_mailboxes": [bad]}})
        assert "verify.remote_mailboxes.0." + field in msg and why in msg, msg
        assert "hunter2-literal" not in msg
