"""Sieve filing and learning on the lab host: add-header mail lands in Junk with
X-Spam: Yes; moving it out of Junk learns ham, moving one in learns spam, Junk to
Trash learns nothing -- each read on rspamd's learned counters; a learn that
fails (controller down) is logged and does not fail the move."""
import random
import time
import uuid

import pytest

from mailops.provision import learning, verify
from mailops.provision.checks import server
from mailops.provision.session import Session

USER = "bob@example.test"
WORDS = ("the garden committee will meet on Thursday evening to plan the spring market, "
         "and every neighbour who grows vegetables or flowers is welcome to bring a table, "
         "share seeds, and talk about the new water tank near the old library").split()


@pytest.fixture
def host(params):
    with Session(params) as s:
        yield s.host


def letter(seed: int) -> str:
    """Natural sentences, different for each message (the learn cache keys on content)."""
    rnd = random.Random(seed)
    lines = []
    for _ in range(6):
        words = WORDS[:]
        rnd.shuffle(words)
        lines.append(" ".join(words[:18]).capitalize() + f", item {rnd.randint(1000, 99999)}.")
    return "\n".join(lines) + "\n"


def deliver(t, subject: str) -> str:
    token = uuid.uuid4().hex
    msg = verify.message("alice@lab.test", USER, token)
    msg.replace_header("Subject", subject)
    msg.set_content(letter(int(token[:8], 16)))
    with t.smtp(587) as s:
        s.login("alice@lab.test", t.passwords["alice@lab.test"].reveal())
        assert not s.send_message(msg, "alice@lab.test", [USER])
    return token


def locate(m, token: str, wait: float = 15) -> tuple[str, bytes]:
    """(mailbox, uid) of the message carrying ``token``."""
    deadline = time.monotonic() + wait
    while True:
        for box in ("INBOX", "Junk", "Trash"):
            m.select(box)
            _, data = m.uid("SEARCH", None, "HEADER", "X-Mailops-Verify", token)
            if data[0]:
                return box, data[0].split()[-1]
        assert time.monotonic() < deadline, f"message {token} did not arrive"
        time.sleep(0.3)


def move(m, token: str, to: str) -> None:
    box, uid = locate(m, token)
    m.select(box)
    typ, data = m.uid("MOVE", uid, to)
    assert typ == "OK", data


def settle(host, before, wait=10):
    """The counters once they stop changing (learning is synchronous, but be fair)."""
    deadline = time.monotonic() + wait
    now = learning.counters(host)
    while now == before and time.monotonic() < deadline:
        time.sleep(0.3)
        now = learning.counters(host)
    return now


def test_add_header_mail_is_filed_into_junk_with_x_spam(params):
    t = verify.target_from(params)
    token = deliver(t, "mailops-lab-add-header offer")
    plain = deliver(t, "an ordinary subject")
    with t.imap(USER) as m:
        box, uid = locate(m, token)
        _, got = m.uid("FETCH", uid, "(BODY.PEEK[HEADER])")
        assert box == "Junk" and b"X-Spam: Yes" in got[0][1], (box, got[0][1][:400])
        assert locate(m, plain)[0] == "INBOX"


def test_moves_learn_ham_spam_and_trash_nothing(params, host):
    t = verify.target_from(params)
    junk = deliver(t, "mailops-lab-add-header first")
    ok = deliver(t, "minutes of the garden meeting")
    other = deliver(t, "mailops-lab-add-header second")
    with t.imap(USER) as m:
        assert locate(m, junk)[0] == "Junk" and locate(m, ok)[0] == "INBOX"
        assert locate(m, other)[0] == "Junk"

        c0 = learning.counters(host)
        move(m, junk, "INBOX")                          # out of Junk: ham
        c1 = settle(host, c0)
        assert (c1["ham"], c1["spam"]) == (c0["ham"] + 1, c0["spam"]), (c0, c1)

        move(m, ok, "Junk")                             # into Junk: spam
        c2 = settle(host, c1)
        assert (c2["spam"], c2["ham"]) == (c1["spam"] + 1, c1["ham"]), (c1, c2)

        n_events = len(learning.events(host, 10_000))
        move(m, other, "Trash")                         # Junk -> Trash: nothing
        time.sleep(2)
        assert learning.counters(host) == c2
        assert len(learning.events(host, 10_000)) == n_events
        assert locate(m, other)[0] == "Trash"
    events = learning.events(host)[-2:]
    assert [(e.kind, e.user, e.outcome) for e in events] == [
        ("ham", USER, "learned"), ("spam", USER, "learned")], events


def test_a_failed_learn_is_logged_and_the_move_still_succeeds(params, host):
    t = verify.target_from(params)
    token = deliver(t, "a note while the filter is away")
    with t.imap(USER) as m:
        assert locate(m, token)[0] == "INBOX"
        host.run(["sh", "-c", "service rspamd stop </dev/null >/dev/null 2>&1"])
        try:
            move(m, token, "Junk")
            assert locate(m, token)[0] == "Junk"
        finally:
            host.run(["sh", "-c", "service rspamd start </dev/null >/dev/null 2>&1"])
            host.run(["sh", "-c", "for i in $(seq 1 120); do [ -n \"$(ss -ltnH 'sport = :11334')\" ] "
                                  "&& exit 0; sleep 0.5; done; exit 1"], timeout=90)
    last = learning.events(host)[-1]
    assert (last.kind, last.outcome) == ("spam", "failed") and "unreachable" in last.detail, last
    # verify reports it until a learn succeeds again
    check = verify.check("learning", lambda: server.learning(host))
    assert not check.ok and "the last learn failed" in check.evidence


def test_learning_check_passes_again_after_a_good_learn(params, host):
    t = verify.target_from(params)
    token = deliver(t, "mailops-lab-add-header third")
    with t.imap(USER) as m:
        move(m, token, "INBOX")
    check = verify.check("learning", lambda: server.learning(host))
    assert check.ok, check.evidence
