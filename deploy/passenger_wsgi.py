"""FiboSMS push receiver for Phusion Passenger: cPanel's "Setup Python App", or Apache with
mod_passenger (deploy/apache-passenger.conf).

Passenger loads passenger_wsgi.py from the application root and serves its `application`.
Put this file in the application root (e.g. ~/fibosms, outside public_html) together with
receiver.py and the other .py files.

The settings are in the settings file, ~/fibosms-data/settings.env of the user the app runs
as (deploy/settings.env shows it; FIBOSMS_CONFIG names another). Environment variables set on
the application's page in cPanel, or with SetEnv in Apache, are read too where the file does
not set them.

After changing a .py file, press "Restart" (or: touch tmp/restart.txt in the application
root). A change to the settings file counts from the next push.

The owner's inbox (inbox.py) is the application's URL followed by /inbox (e.g.
https://example.com/fibosms/inbox): it serves nothing until its password is set
(python3 ~/fibosms/storage.py inbox-password). Every other path is the receiver's.
"""
import os
import sys

# Passenger runs this file with the application root as the working directory but does not
# put it on sys.path in every version.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import receiver  # noqa: E402


def application(environ, start_response):
    """The receiver, or at /inbox the owner's inbox (loaded only for it)."""
    if environ.get('PATH_INFO', '').rstrip('/') == '/inbox':
        import inbox
        return inbox.application(environ, start_response)
    return receiver.application(environ, start_response)
