"""`mailops logs summary` on the postfix log the lab really wrote (everything the
other lab tests sent: deliveries, rejects, milter rejects, greylisting, SASL
failures, bounces), figure for figure against Debian's pflogsumm on the same file."""
import sys
from pathlib import Path

import pytest

from mailops.insight import pflog, pflogc
from mailops.provision.session import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_pflog import assert_same, needs_pflogsumm, ours, pflogsumm  # noqa: E402


@needs_pflogsumm
def test_lab_postfix_log_equals_pflogsumm(lab_up, lab_params, tmp_path):
    with Session(lab_params) as s:
        # the newest 300,000 lines (the whole file after a load benchmark is 100+ MB)
        text = s.host.run(["tail", "-n", "300000", "/var/log/postfix.log"], timeout=300).out
    log = tmp_path / "postfix.log"
    log.write_text(text)
    if "status=sent" not in text:
        pytest.fail("the lab's postfix log holds no delivery: nothing to compare")
    ref = pflog.summarize([log])
    assert_same(ours(ref), pflogsumm(log), traffic=False)
    # the compiled engine (the CLI's default) on real postfix lines: the reference's output
    assert pflogc.summarize([log]).to_dict() == ref.to_dict()
