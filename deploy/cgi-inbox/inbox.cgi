#!/usr/bin/python3 -S
"""The owner's inbox (inbox.py) as a CGI script, for shared hosting: the stored messages and
the receiver's health in a browser, behind a password of its own.

Upload this file and the .htaccess beside it to a folder of their own under public_html, e.g.
public_html/fibosms-inbox/ (not the receiver's folder): the page is then
https://example.com/fibosms-inbox/inbox.cgi. Mode 755, Unix (LF) line endings. It serves
nothing until its password is set: python3 ~/fibosms/storage.py inbox-password (cPanel's
Terminal), which writes it, hashed, into ~/fibosms-data/settings.env.

CODE_DIR and CONFIG as in the receiver's receiver.cgi. This file holds no secret.
"""
import os
import sys
from wsgiref.handlers import CGIHandler

# CHANGE: the folder you uploaded receiver.py and the other .py files to, outside public_html.
CODE_DIR = os.path.expanduser('~/fibosms')
# The settings file, if not ~/fibosms-data/settings.env (its folder then holds the data).
CONFIG = None

sys.path.insert(0, CODE_DIR)
import inbox  # noqa: E402  (found through CODE_DIR)

CGIHandler().run(inbox.make_inbox(config=CONFIG))
