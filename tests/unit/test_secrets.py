"""Secrets never show: not in repr, diffs, plans or results."""
import os

import pytest

from support.fakehost import FakeHost
from mailops.core.plan import apply, plan
from mailops.core.resources import File
from mailops.core.secrets import Secret, SecretError, mask, resolve

VALUE = "s3cr3t-P@ss"


def test_secret_repr_and_str_hide_the_value():
    s = Secret(VALUE)
    assert VALUE not in repr(s) and VALUE not in str(s) and VALUE not in f"{s}"
    assert VALUE not in repr({"x": s}) and s.reveal() == VALUE


def test_secret_file_content_is_masked_everywhere():
    fake = FakeHost()
    f = File("/etc/secret.conf", f"password = {VALUE}\n", mode="0600", secret=True)
    p = plan(fake, [f])
    [c] = p.changes
    for text in (c.diff, repr(c), str(p), p._repr_html_(), repr(p), repr(f)):
        assert VALUE not in text
    assert "not shown" in c.diff
    result = apply(fake, p)
    assert VALUE not in str(result) + result._repr_html_() + repr(result)
    fake.files["/etc/secret.conf"].content = b"password = old-secret\n"
    [c] = plan(fake, [f]).changes
    assert "old-secret" not in c.diff and VALUE not in c.diff


def test_resolve_file_key_env(tmp_path, monkeypatch):
    f = tmp_path / "secrets.yaml"
    f.write_text(f"controller: {VALUE}\n")
    f.chmod(0o600)
    assert resolve("file:secrets.yaml#controller", tmp_path).reveal() == VALUE
    monkeypatch.setenv("MAILOPS_TEST_SECRET", VALUE)
    assert resolve("env:MAILOPS_TEST_SECRET", tmp_path).reveal() == VALUE
    with pytest.raises(SecretError, match="key 'other' not found"):
        resolve("file:secrets.yaml#other", tmp_path)
    with pytest.raises(SecretError, match="not set"):
        resolve("env:MAILOPS_NOT_SET_ANYWHERE", tmp_path)


def test_world_readable_secret_file_is_refused(tmp_path):
    f = tmp_path / "s"
    f.write_text(VALUE)
    os.chmod(f, 0o644)
    with pytest.raises(SecretError, match="readable by others") as exc:
        resolve("file:s", tmp_path)
    assert VALUE not in str(exc.value)


def test_mask():
    assert mask(f"a {VALUE} b {VALUE}", [Secret(VALUE)]) == "a *** b ***"


def test_files_holding_secrets_default_to_0600():
    from mailops.core.resources.files import File, SecretFile
    assert File("/etc/x.key", b"k", secret=True).mode == "0600"
    assert SecretFile("/etc/x.pass", secret_ref="env:X").mode == "0600"
    assert File("/etc/x.conf", b"c").mode == "0644"
    assert File("/etc/x.key", b"k", mode="0640", secret=True).mode == "0640"   # explicit wins
