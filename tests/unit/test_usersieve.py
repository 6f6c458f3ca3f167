"""Users' sieve: the rule builder writes sieve that parses, bad rules and bad
vacations are refused naming the field before anything is read, the vacation
lists every alias that reaches the user, and a put over another script's
content is refused with its diff."""
import datetime as dt

import pytest
from sievelib.parser import Parser

from mailops.manage import accounts as manage, usersieve
from support.fakehost import FakeHost
from mailops.manage.accounts import ManageError, State
from mailops.provision.session import Session
from mailops.manage.usersieve import Rule

from test_steps_fake import params  # noqa: F401  (fixture)


def parses(text: str) -> bool:
    return Parser().parse(text)


def test_builder_writes_readable_sieve_that_parses():
    text = usersieve.build([Rule("subject", 'say "hi" \\ now', "fileinto", "Work/Ünïcode"),
                            Rule("from", "boss@example.org", "flag", "\\Flagged", stop=False),
                            Rule("List-Id", "news", "discard"),
                            Rule("to", "old@example.org", "redirect", "new@example.org")])
    assert parses(text), text
    assert 'require ["fileinto", "imap4flags", "mailbox"];' in text
    assert 'fileinto :create "Work/Ünïcode";' in text
    assert 'header :contains "subject" "say \\"hi\\" \\\\ now"' in text
    assert 'address :contains "from" "boss@example.org"' in text


@pytest.mark.parametrize("rule,field", [
    (Rule("sub ject", "x", "discard"), "rules[0].field"),
    (Rule("subject", "x\ny", "discard"), "rules[0].value"),
    (Rule("subject", "x", "fileinto", 'a"b'), "rules[0].argument"),
    (Rule("subject", "x", "fileinto", ""), "rules[0].argument"),
    (Rule("subject", "x", "redirect", "not an address"), "rules[0].argument"),
    (Rule("subject", "x", "flag", "\\Fl agged"), "rules[0].argument"),
    (Rule("subject", "x", "execute"), "rules[0].action"),
    (Rule("subject", "x", "discard", match="regex"), "rules[0].match"),
])
def test_bad_rules_are_refused(rule, field):
    with pytest.raises(ManageError) as exc:
        usersieve.build([rule])
    assert exc.value.field == field


def test_invalid_scripts_are_refused_locally():
    for text, words in (("", "empty"), ('fileinto "x";', "not loaded"),
                        ("if true { keep; ", "not valid sieve")):
        with pytest.raises(ManageError, match=words):
            usersieve.check_script(text)


def test_vacation_lists_every_alias_that_reaches_the_user():
    st = State({"a.test": True}, {"u@a.test": {"active": True, "quota_bytes": 0, "created": None}},
               {"x@a.test": frozenset({"u@a.test"}), "y@a.test": frozenset({"x@a.test"}),
                "z@a.test": frozenset({"other@a.test"})}, {"a.test": "u@a.test"})
    assert usersieve.aliases_of(st, "u@a.test") == ["x@a.test", "y@a.test", "@a.test"]
    text = usersieve.vacation_script(dt.date(2026, 12, 20), dt.date(2027, 1, 3), 'Away "now"',
                                     "Back in January.\nRegards", 7, ["x@a.test", "@a.test"])
    assert parses(text), text
    assert ':addresses ["x@a.test"]\n' in text          # a catch-all is no address to list
    assert 'currentdate :value "le" "date" "2027-01-03"' in text


@pytest.mark.parametrize("kwargs,field", [
    (dict(start="2026-12-10", end="2026-12-01"), "end"),
    (dict(start="10/12/2026", end="2026-12-01"), "start"),
    (dict(days=0), "days"),
    (dict(days=61), "days"),
    (dict(subject="two\nlines"), "subject"),
    (dict(body="  "), "body"),
    (dict(address="not-an-address"), "address"),
])
def test_bad_vacations_are_refused_before_reading_the_server(params, kwargs, field):  # noqa: F811
    fake = FakeHost()
    s = Session(params, host=fake)
    args = dict(address="u@example.com", start="2026-12-01", end="2026-12-05", subject="Away",
                body="Back soon.", days=7) | kwargs
    with pytest.raises(ManageError) as exc:
        usersieve.plan_vacation(s, **args)
    assert exc.value.field == field
    assert not fake.commands


def test_plan_for_refuses_unknown_actions_and_rule_fields(params):  # noqa: F811
    s = Session(params, host=FakeHost())
    with pytest.raises(ManageError, match="one of list, put"):
        usersieve.plan_for(s, "explode", "u@example.com")
    with pytest.raises(ManageError) as exc:
        usersieve.script_from("", [{"field": "subject", "value": "x", "action": "discard",
                                    "colour": "red"}])
    assert exc.value.field == "rules[0]"
    assert manage.check_address("address", "u@example.com")
