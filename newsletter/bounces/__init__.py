"""Bounces and complaints: reading the mailbox (mailbox), understanding each mail (classify), the
policy of what it does to a subscriber (policy), recording it (repository), and the command that
runs them in turn (processing)."""
