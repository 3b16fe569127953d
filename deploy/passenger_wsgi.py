"""FiboSMS push receiver for Phusion Passenger: cPanel's "Setup Python App", or Apache with
mod_passenger (deploy/apache-passenger.conf).

Passenger loads passenger_wsgi.py from the application root and serves its `application`.
Put this file in the application root (e.g. ~/fibosms, outside public_html) together with
receiver.py and storage.py.

Settings are environment variables, set on the application's page in cPanel ("Add Variable",
then "Save" and "Restart"), or with SetEnv in Apache:

    FIBOSMS_TOKEN   a long random secret: the last part of the URL you register
    FIBOSMS_DB      the database file (default: ~/.fibosms/messages.sqlite3, in your home
                    and outside public_html)
    FIBOSMS_ALLOW   optional: only these addresses may call, comma-separated

After changing receiver.py or storage.py, press "Restart" (or: touch tmp/restart.txt in the
application root).
"""
import os
import sys

# Passenger runs this file with the application root as the working directory but does not
# put it on sys.path in every version.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from receiver import application  # noqa: E402,F401  (Passenger looks for this name)
