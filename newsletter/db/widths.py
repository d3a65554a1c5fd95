"""The width of every text column, named once: the models' String(N) and every cut that fits a
value to its column spell them from here. (A migration keeps the number it was written with.)"""

from __future__ import annotations

EMAIL = 320  # an address: 64 for the local part, the @, 255 for the domain
NAME = 200  # a subscriber's name; a story's source, author and section
OPERATOR_NAME = 100
STATE = 16  # a state or kind (an enum's value), a subscriber's source, a DSN status code
SIGNED_BY = 8  # what named the subscriber of a bounce: verp, link or ""
SENDER_ID = 36  # a UUID
HOST = 255
HASH = 255  # an operator's password hash
DIGEST = 64  # a sha256 in hex
PLACEHOLDER_KEY = 64
IP = 64
STORY_IDENTITY = 512  # a story's guid or link
FEED_URL = 1000
BOUNCE_SOURCE = 500  # where a bounce mail was: a maildir key, an IMAP uid

# TEXT columns hold any length; words from elsewhere (a server, a stranger's mail) are cut to these
REPLY = 1000  # a delivery's last reply
NOTE = 2000  # a bounce mail's note, a scheduled run's outcome
DETAIL = 500  # a bounce event's detail
