"""deploy/apache-passenger.conf and deploy/passenger_wsgi.py on a private Apache 2.4 with
Debian's Phusion Passenger, over TLS: the same application setup cPanel's "Setup Python App"
makes.

The shipped files are used as they are, changed only on the lines marked CHANGE (port,
certificate, secret), in their paths (/srv/fibosms, /var/www/html) and the app's user.
"""
import os

import pytest

import servers
from servers import TOKEN

HOST_CONFIG = """\
# What Debian's mods-available/passenger.conf supplies, with Passenger's files in our folder.
PassengerRoot {passenger_root}
PassengerDefaultRuby /usr/bin/ruby
PassengerInstanceRegistryDir {run}
<Directory {www}>
    Require all granted
</Directory>
"""


@pytest.fixture(scope='module')
def site():
    """One Apache with the shipped Passenger site, shared by this module's tests."""
    ws = servers.Workspace('passenger')
    apache = None
    try:
        servers.place_decoys(ws.www, ws)
        public = ws.folder('app', 'public')
        servers.place_decoys(public, ws)
        ws.copy(os.path.join(servers.DEPLOY, 'passenger_wsgi.py'),
                os.path.join(ws.app, 'passenger_wsgi.py'), 0o644)
        host = HOST_CONFIG.format(passenger_root=servers.PASSENGER_ROOT, run=ws.run,
                                  www=ws.www)
        config = servers.snippet('apache-passenger.conf', servers.tls_replacements(ws) + [
            ('<VirtualHost *:443>', '<VirtualHost *:{port}>'),
            ('DocumentRoot /var/www/html', 'DocumentRoot %s' % ws.www),
            ('PassengerUser fibosms', 'PassengerUser %s' % ws.user),
            ('PassengerGroup fibosms', 'PassengerGroup %s' % ws.group),
            ('/srv/fibosms/app', ws.app),
            ('/srv/fibosms/data', ws.data),
            ('change-me-to-a-long-random-secret', TOKEN),
        ])
        modules = ['passenger', 'headers', 'reqtimeout', 'rewrite']
        apache = servers.Apache(ws, modules, host + config).start()
        root = 'https://127.0.0.1:%d/' % apache.port
        yield servers.Site(
            base=root + 'fibosms/', db=ws.db, cafile=ws.cert, folder_url=root + 'fibosms/',
            access_log=lambda: ''.join(ws.log(name) for name in (
                'fibosms_access.log', 'access.log', 'host_access.log')),
            forbidden=[root + name for name in DECOYS_AT_ROOT] + [
                root + 'receiver.py', root + 'fibosms/receiver.py',
                root + 'fibosms/passenger_wsgi.py'],
            default_db=os.path.join(os.path.expanduser('~' + ws.user),
                                    '.fibosms', 'messages.sqlite3'))
    finally:
        if apache is not None:
            apache.stop()
        ws.remove()


DECOYS_AT_ROOT = servers.DECOYS   # the same files under DocumentRoot


def test_apache_passenger_vietnamese_push_stored_exactly(site):
    """A Vietnamese push is answered <Status>2</Status> and stored character for character."""
    servers.check_vietnamese_push_stored(site)


def test_apache_passenger_duplicate_guid_stored_once(site):
    """The gateway's resend of a guid is answered 2 again and leaves one row."""
    servers.check_duplicate_guid_one_row(site)


def test_apache_passenger_token_in_path_accepted(site):
    """The secret as the URL's last path segment is accepted."""
    servers.check_token_in_path_works(site)


def test_apache_passenger_wrong_token_refused_403(site):
    """A wrong or missing secret gets 403 <Status>1</Status> and stores nothing."""
    servers.check_wrong_token_refused(site)


def test_apache_passenger_setenv_settings_reach_app(site):
    """SetEnv FIBOSMS_DB in the snippet names the file the push lands in."""
    servers.check_settings_reach_app(site)


def test_apache_passenger_database_files_not_downloadable(site):
    """Database files in the app's public/ folder or DocumentRoot get 403, the code 403/404."""
    servers.check_files_not_downloadable(site)


def test_apache_passenger_access_log_has_no_query_string(site):
    """The snippet's access logs hold neither query strings nor the secret."""
    servers.check_access_log_has_no_query(site)


def test_apache_passenger_push_py_reports_success(site):
    """deploy/push.py against the page exits 0 and the push is stored."""
    servers.check_push_py_succeeds(site)
