# managed by mailops: edits here are overwritten; change templates/ or parameters/
# Runs before every user's own script: rspamd's add_header action marks
# `X-Spam: Yes`; such a message goes to Junk, whatever the user's rules say.
require ["fileinto", "mailbox"];
if header :is "X-Spam" "Yes" {
  fileinto :create "Junk";
  stop;
}
