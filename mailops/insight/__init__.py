"""Insight: what the server did and whether it is well now; collect into the local
store, pflogsumm's figures (three engines), tables, charts, HTML reports, the schedule."""
