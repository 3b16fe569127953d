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
"""
import os
import sys

# Passenger runs this file with the application root as the working directory but does not
# put it on sys.path in every version.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from receiver import application  # noqa: E402,F401  (Passenger looks for this name)
