#!/usr/bin/python3 -S
"""FiboSMS push receiver as a CGI script, for shared hosting (cPanel and the like).

The first line is the Python that runs it: write the full path of yours if it is elsewhere
(`python3 -c 'import sys; print(sys.executable)'` tells), keeping the -S. -S starts Python
without site-packages, which nothing here needs, and spares every push the time of loading
them; take it out only if a hook of yours imports a package installed there.

Upload this file and the .htaccess beside it to a folder of its own under public_html, e.g.
public_html/fibosms/; the page's URL is then https://example.com/fibosms/receiver.cgi/SECRET.
The file must be mode 755 and have Unix (LF) line endings, or the server answers 500.

The receiver's .py files go OUTSIDE public_html (CODE_DIR). So do the settings, the secret
among them: ~/fibosms-data/settings.env (deploy/settings.env shows it), beside the database
and the receiver's log. This file holds no secret.
"""
import os
import sys

# CHANGE: the folder you uploaded receiver.py and the other .py files to, outside public_html.
CODE_DIR = os.path.expanduser('~/fibosms')
# The settings file, if not ~/fibosms-data/settings.env (its folder then holds the data).
CONFIG = None

sys.path.insert(0, CODE_DIR)
import receiver  # noqa: E402  (found through CODE_DIR)

receiver.serve_cgi(receiver.make_app(config=CONFIG))
