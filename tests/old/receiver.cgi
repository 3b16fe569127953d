#!/usr/bin/python3 -S
"""FiboSMS push receiver as a CGI script, for shared hosting (cPanel and the like).

The first line is the Python that runs it: write the full path of yours if it is elsewhere
(`python3 -c 'import sys; print(sys.executable)'` tells), keeping the -S. -S starts Python
without site-packages, which nothing here needs, and spares every push the time of loading
them; take it out only if a hook of yours imports a package installed there.

Upload this file and the .htaccess beside it to a folder of its own under public_html, e.g.
public_html/fibosms/; the page's URL is then https://example.com/fibosms/receiver.cgi/SECRET.
The file must be mode 755 and have Unix (LF) line endings, or the server answers 500.

receiver.py and storage.py (and forward.py, to forward) go OUTSIDE public_html (CODE_DIR),
and so does the database (DB): nothing there can be downloaded.

The settings are written here, not in SetEnv or the environment: most shared hosts run CGI
under suEXEC, which hands the script a fixed list of variables and drops all others.
"""
import os
import sys

# CHANGE: the folder you uploaded receiver.py and storage.py to, outside public_html.
CODE_DIR = os.path.expanduser('~/fibosms')
# CHANGE: the database file, outside public_html; its folder is created, mode 700.
DB = os.path.expanduser('~/fibosms-data/messages.sqlite3')
# CHANGE: a long random secret: the last part of the URL you register.
TOKEN = 'change-me-to-a-long-random-secret'
# Optional: only these addresses may call, comma-separated (FiboSMS's, if they give you them).
ALLOW = None
# Optional: POST each message to your application, signed (README, "Forward to your
# application"), e.g. 'https://example.com/app/consumer.php'; upload forward.py too.
FORWARD_URL = None
# And its signing secret, 'whsec_...' (README gives the command that makes one).
FORWARD_SECRET = None

sys.path.insert(0, CODE_DIR)
import receiver  # noqa: E402  (found through CODE_DIR)

receiver.serve_cgi(receiver.make_app(db=DB, token=TOKEN, allow=ALLOW, forward_url=FORWARD_URL,
                                     forward_secret=FORWARD_SECRET))
